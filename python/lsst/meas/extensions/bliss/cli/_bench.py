"""Command-line entry point of ``bliss-bench``."""

from __future__ import annotations

__all__ = ["bench_main"]

import argparse
import json
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..bench import SUITES
from ..io import atomic_write_path


def _environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "machine": platform.machine(),
    }


def bench_main(argv: Sequence[str] | None = None) -> int:
    """Run one benchmark suite; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="bliss-bench",
        description="Run one of the project's benchmark suites; --json writes its figures to a file and "
        "the last printed line states the headline result.",
    )
    subparsers = parser.add_subparsers(dest="suite", required=True, metavar="SUITE")
    for name, (description, add_arguments, _) in SUITES.items():
        sub = subparsers.add_parser(name, help=description, description=description)
        sub.add_argument("--quick", action="store_true", help="smaller run for a fast check")
        sub.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the results here")
        sub.add_argument("--seed", type=int, default=12345, help="random seed of the benchmark's inputs")
        add_arguments(sub)
    args = parser.parse_args(argv)
    run = SUITES[args.suite].run
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
