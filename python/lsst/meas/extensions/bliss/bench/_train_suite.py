"""``bliss-bench train``: images per second of the encoder's training loop, and where the time goes.

The run is the packaged model's training recipe (its conditions, prior, simulator, encoder and
optimizer settings) on the chosen device.  After a few warm-up steps the suite times, in one
process and on the same trainer:

* the loop itself: `EncoderTrainer.train_step`, what ``bliss-train`` repeats (simulation and
  optimizer step, sequenced, or overlapped when the recipe sets ``overlap_simulation``);
* the simulation alone: `EncoderTrainer.simulate_batch` (prior, rendering, noise), with the
  renderer's own time measured inside it;
* the network alone: `EncoderTrainer.network_step` on batches simulated beforehand (inputs,
  forward and backward passes, optimizer update).

The three are interleaved over the passes (``--repeats``), and the medians are reported, so
that a noisy minute on a shared machine moves all of them alike.
"""

from __future__ import annotations

__all__ = ["DESCRIPTION", "add_arguments", "run"]

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import default_training_recipe_path
from ..runtime import resolve_device
from ..training import EncoderTrainer, load_run_config

DESCRIPTION = "training images per second (packaged recipe), split into simulation and network"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the train suite."""
    parser.add_argument("--device", default="cpu", help="torch device of the run ('cpu', 'cuda', 'auto')")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per pass (default 12, quick 4)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved passes (default 3, quick 2)")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="a bliss-train config file to time instead of the packaged recipe",
    )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, function: Callable[[], Any]) -> tuple[float, Any]:
    _synchronize(device)
    start = time.perf_counter()
    result = function()
    _synchronize(device)
    return time.perf_counter() - start, result


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the suite; returns the JSON results plus a one-line ``summary``."""
    steps = args.steps if args.steps is not None else (4 if args.quick else 12)
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 3)
    if steps < 1 or repeats < 1:
        raise ValueError(f"--steps {steps} and --repeats {repeats} must be at least 1.")
    recipe = args.config if args.config is not None else default_training_recipe_path()
    packaged = load_run_config(recipe)
    device = resolve_device(args.device)
    # The recipe's optimization, on this device, without its time limit or the autoencoder.
    training = dataclasses.replace(
        packaged.training,
        seed=args.seed,
        validation_seed=args.seed + 1,
        device=str(device),
        max_minutes=None,
        validation_images=1,
    )
    run_config = dataclasses.replace(packaged, training=training, autoencoder_training=None)
    batch_size = training.batch_size
    with tempfile.TemporaryDirectory(prefix="bliss-bench-train-") as workdir:
        trainer = EncoderTrainer(run_config, Path(workdir), log=lambda line: None)
        trainer.encoder.train()
        for _ in range(2):  # warm-up: first-call allocations, oneDNN kernel selection
            trainer.train_step()

        render_seconds = [0.0]
        render = trainer.simulator.render

        def timed_render(*render_args: Any, **render_kwargs: Any) -> torch.Tensor:
            seconds, images = _timed(device, lambda: render(*render_args, **render_kwargs))
            render_seconds[0] += seconds
            return images

        trainer.simulator.render = timed_render  # type: ignore[method-assign]
        loop_s, simulation_s, render_s, network_s = [], [], [], []
        for _ in range(repeats):
            seconds, _ = _timed(device, lambda: [trainer.train_step() for _ in range(steps)])
            loop_s.append(seconds / (steps * batch_size))
            # The parts alone, each with all the threads (a recipe that overlaps them splits the threads).
            trainer.stop_overlap()
            render_seconds[0] = 0.0
            seconds, batches = _timed(device, lambda: [trainer.simulate_batch() for _ in range(steps)])
            simulation_s.append(seconds / (steps * batch_size))
            render_s.append(render_seconds[0] / (steps * batch_size))
            seconds, _ = _timed(device, lambda done=batches: [trainer.network_step(batch) for batch in done])
            network_s.append(seconds / (steps * batch_size))
    per_image = {
        name: float(np.median(values))
        for name, values in (
            ("loop", loop_s),
            ("simulation", simulation_s),
            ("render", render_s),
            ("network", network_s),
        )
    }
    images_per_s = 1.0 / per_image["loop"]
    results: dict[str, Any] = {
        "recipe": str(args.config) if args.config is not None else "packaged",
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "backbone_precision": training.backbone_precision,
        "overlap_simulation": training.overlap_simulation,
        "image_shape": [run_config.simulator.image_height, run_config.simulator.image_width],
        "steps_per_pass": steps,
        "passes": repeats,
        "images_per_s": images_per_s,
        "simulation_images_per_s": 1.0 / per_image["simulation"],
        "network_images_per_s": 1.0 / per_image["network"],
        # Shares of a sequential step (simulation then network), whatever the loop overlaps.
        "simulation_share": per_image["simulation"] / (per_image["simulation"] + per_image["network"]),
        "render_share": per_image["render"] / (per_image["simulation"] + per_image["network"]),
        "render_share_of_simulation": per_image["render"] / per_image["simulation"],
        "loop_s_per_image_runs": loop_s,
        "simulation_s_per_image_runs": simulation_s,
        "network_s_per_image_runs": network_s,
    }
    results["summary"] = (
        f"train ({device}, batch {batch_size}): images_per_s = {images_per_s:.1f}, simulation "
        f"{results['simulation_images_per_s']:.1f}/s, network {results['network_images_per_s']:.1f}/s, "
        f"simulation_share = {results['simulation_share']:.2f}, render_share = {results['render_share']:.2f}"
    )
    return results
