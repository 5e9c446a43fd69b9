"""The registry of benchmark suites that ``bliss-bench`` runs."""

from __future__ import annotations

__all__ = ["SUITES", "BenchSuite"]

import argparse
from collections.abc import Callable
from typing import Any, NamedTuple

from . import (
    _deblend_suite,
    _infer_suite,
    _pipetask_options,
    _realism_suite,
    _render_suite,
    _robustness_suite,
    _saturation_suite,
    _scaleout_suite,
    _science_suite,
    _tables_suite,
    _train_suite,
)


class BenchSuite(NamedTuple):
    """One suite: what it measures, its command-line options, and the function that runs it."""

    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict[str, Any]]


def _run_pipetask_suite(args: argparse.Namespace) -> dict[str, Any]:
    # The pipeline layer's suite (Butler and pipetask): the Rubin middleware is imported only for it.
    from ..pipeline.demo import run_pipetask_suite

    return run_pipetask_suite(args)


SUITES: dict[str, BenchSuite] = {
    "render": BenchSuite(_render_suite.DESCRIPTION, _render_suite.add_arguments, _render_suite.run),
    "science": BenchSuite(_science_suite.DESCRIPTION, _science_suite.add_arguments, _science_suite.run),
    "realism": BenchSuite(_realism_suite.DESCRIPTION, _realism_suite.add_arguments, _realism_suite.run),
    "infer": BenchSuite(_infer_suite.DESCRIPTION, _infer_suite.add_arguments, _infer_suite.run),
    "deblend": BenchSuite(_deblend_suite.DESCRIPTION, _deblend_suite.add_arguments, _deblend_suite.run),
    "saturation": BenchSuite(
        _saturation_suite.DESCRIPTION, _saturation_suite.add_arguments, _saturation_suite.run
    ),
    "tables": BenchSuite(_tables_suite.DESCRIPTION, _tables_suite.add_arguments, _tables_suite.run),
    "train": BenchSuite(_train_suite.DESCRIPTION, _train_suite.add_arguments, _train_suite.run),
    "pipetask": BenchSuite(
        _pipetask_options.DESCRIPTION, _pipetask_options.add_arguments, _run_pipetask_suite
    ),
    # Imports the pipeline layer (for counts against nJy) inside its run only.
    "robustness": BenchSuite(
        _robustness_suite.DESCRIPTION, _robustness_suite.add_arguments, _robustness_suite.run
    ),
    # Imports the middleware (Butler, pipetask, bps) inside its run only.
    "scaleout": BenchSuite(_scaleout_suite.DESCRIPTION, _scaleout_suite.add_arguments, _scaleout_suite.run),
}
