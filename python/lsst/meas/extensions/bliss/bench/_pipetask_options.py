"""Options of ``bliss-bench pipetask``, kept apart from the suite (which needs the Rubin middleware)
so that the other suites start without importing it."""

from __future__ import annotations

__all__ = ["DESCRIPTION", "add_arguments"]

import argparse
from pathlib import Path

DESCRIPTION = "pipetask run of BlissDRP.yaml on one 2048x2048 calexp vs infer_frame on the same pixels"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the pipetask suite."""
    parser.add_argument(
        "--size", type=int, default=None, help="calexp side, pixels (default 2048; quick 512)"
    )
    parser.add_argument(
        "--pipeline",
        type=Path,
        default=None,
        help="pipeline YAML (default the package's pipelines/BlissDRP.yaml, wherever it is installed)",
    )
