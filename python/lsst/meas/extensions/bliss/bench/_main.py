"""Command-line entry point of ``bliss-bench``."""

from __future__ import annotations

__all__ = ["main"]

import argparse
import json
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .._atomic import atomic_write_path
from . import (
    _deblend_suite,
    _infer_suite,
    _pipetask_options,
    _render_suite,
    _saturation_suite,
    _science_suite,
)

# Suite name -> (description, add-options, run).
_SUITES: dict[
    str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], dict]]
] = {
    "render": (_render_suite.DESCRIPTION, _render_suite.add_arguments, _render_suite.run),
    "science": (_science_suite.DESCRIPTION, _science_suite.add_arguments, _science_suite.run),
    "infer": (_infer_suite.DESCRIPTION, _infer_suite.add_arguments, _infer_suite.run),
    "deblend": (_deblend_suite.DESCRIPTION, _deblend_suite.add_arguments, _deblend_suite.run),
    "saturation": (_saturation_suite.DESCRIPTION, _saturation_suite.add_arguments, _saturation_suite.run),
    # The pipeline layer's suite (Butler and pipetask); the Rubin middleware is imported only for it.
    "pipetask": (
        _pipetask_options.DESCRIPTION,
        _pipetask_options.add_arguments,
        lambda args: _pipetask_run(args),
    ),
}


def _pipetask_run(args: argparse.Namespace) -> dict[str, Any]:
    from ..pipeline._pipetask_bench import run

    return run(args)


def _environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "machine": platform.machine(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run one benchmark suite; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="bliss-bench",
        description="Run one of the project's benchmark suites; --json writes its figures to a file and "
        "the last printed line states the headline result.",
    )
    subparsers = parser.add_subparsers(dest="suite", required=True, metavar="SUITE")
    for name, (description, add_arguments, _) in _SUITES.items():
        sub = subparsers.add_parser(name, help=description, description=description)
        sub.add_argument("--quick", action="store_true", help="smaller run for a fast check")
        sub.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the results here")
        sub.add_argument("--seed", type=int, default=12345, help="random seed of the benchmark's inputs")
        add_arguments(sub)
    args = parser.parse_args(argv)
    _, _, run = _SUITES[args.suite]
    results = {"suite": args.suite, "quick": args.quick, "environment": _environment()}
    results.update(run(args))
    summary = results.pop("summary")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write_path(args.json) as temporary:
            temporary.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        print(f"wrote {args.json}")
    print(summary)
    sys.stdout.flush()
    return 0
