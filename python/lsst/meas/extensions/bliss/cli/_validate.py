"""Command-line entry point of ``bliss-validate``."""

from __future__ import annotations

__all__ = ["validate_main"]

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from ..io import BlissModel, load_default_model
from ..validate import ValidationPlan, run_validation, write_report


def _log(message: str) -> None:
    print(message, flush=True)


def validate_main(argv: Sequence[str] | None = None) -> int:
    """Validate a model and write the report directory; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="bliss-validate",
        description="Simulate held-out scenes, run BLISS, SEP and photutils on them, and write "
        "metrics.json and index.html with PNG figures into OUTPUT.",
    )
    parser.add_argument("output", type=Path, metavar="OUTPUT", help="report directory (created)")
    parser.add_argument("--model", type=Path, default=None, help="model file (default: the packaged model)")
    parser.add_argument(
        "--quick", action="store_true", help="fewer scenes and trials (under a minute on 2 cores)"
    )
    parser.add_argument("--seed", type=int, default=ValidationPlan.seed, help="seed of the held-out scenes")
    parser.add_argument("--scenes", type=int, default=None, help="scenes of the default variation")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--sweep-autoencoder",
        action="store_true",
        help="deblend the separation sweep with the model's galaxy autoencoder (default: parametric)",
    )
    args = parser.parse_args(argv)
    if args.output.exists() and not args.output.is_dir():
        parser.error(f"OUTPUT {args.output} exists and is not a directory; pick a directory path.")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model = BlissModel.load(args.model) if args.model is not None else load_default_model()
    plan = ValidationPlan.quick(args.seed) if args.quick else ValidationPlan(seed=args.seed)
    if args.scenes is not None:
        if args.scenes < 1:
            parser.error(f"--scenes {args.scenes} must be >= 1.")
        plan = dataclasses.replace(plan, default_scenes=args.scenes)
    plan = dataclasses.replace(plan, sweep_with_autoencoder=args.sweep_autoencoder)
    try:
        metrics, extras = run_validation(model, plan, _log)
    except ValueError as error:
        parser.exit(2, f"bliss-validate: error: {error}\n")
    write_report(args.output, metrics, extras, model)
    print(f"wrote {args.output / 'index.html'} and {args.output / 'metrics.json'}")
    for name, value in metrics["headline"].items():
        print(f"{name} = {value:.4f}")
    sys.stdout.flush()
    return 0
