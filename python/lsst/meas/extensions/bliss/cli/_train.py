"""``bliss-train``: train the encoder on simulations from a config file."""

from __future__ import annotations

__all__ = ["train_main"]

import argparse
import dataclasses
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from ..io import BlissModel, ModelFormatError
from ..training import (
    TrainingRun,
    add_autoencoder,
    check_initial_model,
    copy_autoencoder,
    load_run_config,
    train,
)


def _log(line: str) -> None:
    # Progress must show up in redirected logs while training runs, not when it ends.
    print(line, flush=True)


def train_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bliss-train``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="bliss-train",
        description="Train the BLISS encoder on simulated images and write a model package "
        "(OUTPUT/model.safetensors with its JSON description); with an autoencoder_training section the "
        "galaxy autoencoder is trained after the encoder and stored in the same package.",
    )
    parser.add_argument(
        "config",
        type=Path,
        help="YAML or JSON file with sections conditions, prior, simulator, encoder, training (all optional)",
    )
    parser.add_argument("--output", type=Path, required=True, help="directory for checkpoints and the model")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in OUTPUT")
    parser.add_argument(
        "--device", default=None, help="override the training devices ('auto', 'cpu', 'cuda')"
    )
    parser.add_argument(
        "--autoencoder-only",
        metavar="MODEL",
        type=Path,
        default=None,
        help="train only the galaxy autoencoder (section autoencoder_training) for the existing model "
        "package MODEL, trained with the same config, and write the package with it to OUTPUT",
    )
    parser.add_argument(
        "--autoencoder-from",
        metavar="SOURCE",
        type=Path,
        default=None,
        help="with --autoencoder-only: copy the trained autoencoder of package SOURCE (same conditions, "
        "prior and simulator) instead of training one; CONFIG is not read",
    )
    parser.add_argument(
        "--init-from",
        metavar="MODEL",
        type=Path,
        default=None,
        help="start from the encoder weights of package MODEL (same encoder section and conditions) to "
        "fine-tune it, e.g. on a changed prior; its training summary is kept in the new package",
    )
    args = parser.parse_args(argv)
    if args.autoencoder_from is not None:
        if args.autoencoder_only is None:
            parser.error("--autoencoder-from needs --autoencoder-only MODEL (the package that receives it)")
        # Nothing is trained; the packages themselves say which survey each was trained for.
        return _copy_autoencoder(args.autoencoder_only, args.autoencoder_from, args.output)
    try:
        run = load_run_config(args.config)
    except ValueError as err:
        print(f"bliss-train: error: {err}", file=sys.stderr)
        return 2
    if args.device is not None:
        run = dataclasses.replace(run, training=dataclasses.replace(run.training, device=args.device))
        if run.autoencoder_training is not None:
            run = dataclasses.replace(
                run, autoencoder_training=dataclasses.replace(run.autoencoder_training, device=args.device)
            )
    command = "bliss-train " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    if args.autoencoder_only is not None:
        return _train_autoencoder_only(run, args.autoencoder_only, args.output, command)
    initial_model = None
    if args.init_from is not None:
        try:
            initial_model = BlissModel.load(args.init_from)
            check_initial_model(run, initial_model)
        except (OSError, ValueError) as err:
            print(f"bliss-train: error: --init-from {args.init_from}: {err}", file=sys.stderr)
            return 2
    model = train(
        run, args.output, resume=args.resume, log=_log, command=command, initial_model=initial_model
    )
    summary = model.training
    print(
        f"wrote {args.output / 'model.safetensors'}: {summary['steps']} steps, "
        f"{summary['wall_time_s'] / 60:.1f} min, validation loss {summary['final_validation_loss']:.3f}"
    )
    return 0


def _train_autoencoder_only(run: TrainingRun, model_path: Path, output: Path, command: str) -> int:
    try:
        model = BlissModel.load(model_path)
        model = add_autoencoder(model, run, log=_log, command=command)
    except (FileNotFoundError, ModelFormatError, ValueError) as err:
        print(f"bliss-train: error: {err}", file=sys.stderr)
        return 2
    path = model.save(output / "model.safetensors")
    summary = model.training["autoencoder"]
    print(
        f"wrote {path}: autoencoder {summary['steps']} steps, {summary['wall_time_s'] / 60:.1f} min, "
        f"validation median reduced chi2 (SNR >= 10) {summary['final_chi2_median_snr10']:.3f}"
    )
    return 0


def _copy_autoencoder(model_path: Path, source_path: Path, output: Path) -> int:
    try:
        model = copy_autoencoder(BlissModel.load(model_path), BlissModel.load(source_path), str(source_path))
    except (FileNotFoundError, ModelFormatError, ValueError) as err:
        print(f"bliss-train: error: {err}", file=sys.stderr)
        return 2
    path = model.save(output / "model.safetensors")
    print(f"wrote {path}: the encoder of {model_path} with the autoencoder of {source_path}")
    return 0
