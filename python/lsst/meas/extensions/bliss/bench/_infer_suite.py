"""``bliss-bench infer``: full-frame inference speed and memory against SEP on one simulated detector.

A 4096 x 4096 single-visit scene is simulated at the model's default
conditions with LSST-like defects: bad columns, saturated cores, cosmic rays,
a NO_DATA corner and EDGE pixels at the border.  `infer_frame` (catalog plus
``n_samples`` posterior samples, PSF from a callable) runs in a fresh
process per image size, so that its peak resident memory is its own, and SEP
(the science suite's settings) on the same image in another fresh process,
so that both are timed alike.  Times at a quarter, half and the whole side
(1k, 2k and 4k) give the scaling exponent of time with pixels. The sizes are
timed in ``--repeats`` interleaved passes and each figure is the median over
the passes, since the speed of a shared machine drifts by tens of percent
within minutes.

The headline times are each process's first call, which also pays the
process's one-time costs (memory touched for the first time, oneDNN generating
its convolution kernels); at 1k they pull ``scaling_exponent`` below the
per-pixel scaling.  Each child then times a second call on the same image, the
cost of every further image in a long-running process (a ``pipetask`` worker
runs many quanta); those figures are reported beside the first-call ones as
``bliss_warm_s_*``, ``sep_warm_s_*``, ``ratio_vs_sep_warm`` and
``scaling_exponent_warm``.  (SEP runs in a fresh process too: in the parent,
whose heap the 4k simulation has already touched, its first call would be
nearly a second call, about twice as fast as a first call in a fresh process,
and the comparison with BLISS's first call would be unfair.)
"""

from __future__ import annotations

__all__ = ["DESCRIPTION", "add_arguments", "run"]

import argparse
import multiprocessing
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..baselines import run_sep
from ..inference import FrameConfig, infer_frame
from ..io import BlissModel, load_default_model
from ..runtime import BACKBONE_PRECISIONS
from ..simulation import ImageSimulator, SimulatorConfig, add_detector_defects
from ..survey import DEFAULT_INVALID_MASK_PLANES, invalid_mask_bits

DESCRIPTION = "full-frame BLISS inference vs SEP on a simulated 4k x 4k detector: time, memory, scaling"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the inference suite."""
    parser.add_argument("--model", type=Path, default=None, help="model file (default: the packaged model)")
    parser.add_argument(
        "--size", type=int, default=None, help="largest image side, pixels (default 4096; quick 2048)"
    )
    parser.add_argument("--n-samples", type=int, default=16, help="posterior catalog samples (default 16)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="interleaved passes over the three sizes; figures are medians over them (default 5; quick 3)",
    )
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU timing even if CUDA is available")
    parser.add_argument(
        "--precision",
        choices=BACKBONE_PRECISIONS,
        default="float32",
        help="arithmetic of the encoder's backbone, FrameConfig.precision (default float32)",
    )


def _simulate_scene(model: BlissModel, size: int, seed: int) -> dict[str, np.ndarray]:
    simulator = ImageSimulator(
        model.conditions,
        model.prior.without_bright_stars(),
        SimulatorConfig(image_height=size, image_width=size, tile_size=model.encoder.config.tile_size),
        device="cpu",
    )
    batch = simulator.sample(1, seed=seed)
    image = batch.image[0].numpy().copy()
    mask = batch.mask[0].numpy().astype(np.int32)
    add_detector_defects(mask, image, np.random.default_rng(seed))
    return {
        "image": image,
        "variance": batch.variance[0].numpy(),
        "mask": mask,
        "psf_fwhm_pix": np.float64(float(batch.psf_fwhm_arcsec[0]) / model.conditions.pixel_scale_arcsec),
        "n_true_sources": np.int64(int(batch.truth.n_sources[0])),
    }


def _infer_in_child(
    scene_path: str, model_path: str | None, size: int, n_samples: int, device: str, precision: str
) -> dict:
    """Run `infer_frame` on the top-left ``size x size`` crop; executed in a fresh process."""
    model = BlissModel.load(Path(model_path)) if model_path else load_default_model()
    window = (slice(0, size), slice(0, size))
    # Read (and decompress) the arrays before the clock starts: that is the benchmark's I/O, not BLISS's.
    with np.load(scene_path) as scene:
        image, variance, mask = (scene[name][window].copy() for name in ("image", "variance", "mask"))
        fwhm = float(scene["psf_fwhm_pix"])
    config = FrameConfig(n_samples=n_samples, device=device, precision=precision)
    start = time.perf_counter()
    result = infer_frame(
        model,
        image,
        variance,
        mask,
        lambda x, y: fwhm,  # a PSF model evaluated over the frame, as for a real detector
        config,
    )
    if device != "cpu":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    infer_frame(model, image, variance, mask, lambda x, y: fwhm, config)
    if device != "cpu":
        torch.cuda.synchronize()
    warm_seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "warm_seconds": warm_seconds,
        "timings": result.timings,
        "n_detected": int(result.catalog.n_sources[0]),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
    }


def _sep_in_child(scene_path: str, size: int, invalid_bits: int) -> dict:
    """Run SEP twice on the top-left ``size x size`` crop; executed in a fresh process."""
    window = (slice(0, size), slice(0, size))
    with np.load(scene_path) as scene:
        image, variance, mask = (scene[name][window].copy() for name in ("image", "variance", "mask"))
    times = []
    for _ in range(2):
        start = time.perf_counter()
        catalog = run_sep(image, variance, (mask & invalid_bits) != 0)
        times.append(time.perf_counter() - start)
    return {"seconds": times[0], "warm_seconds": times[1], "n_detected": len(catalog)}


def _run_child(function: Callable[..., dict], *args: Any) -> dict:
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(function, args)


def _median_run(runs: list[tuple[dict, dict]]) -> dict[str, Any]:
    """One size's figures from its passes ``(SEP child result, BLISS child result)``: median times, the
    BLISS stages and counts of its median pass (the lower middle one for an even count), every pass's
    times, and the largest peak memory."""
    times = {
        f"{method}_{call}": [result[call] for result in results]
        for method, results in (("sep", [sep for sep, _ in runs]), ("bliss", [bliss for _, bliss in runs]))
        for call in ("seconds", "warm_seconds")
    }
    median_pass = runs[int(np.argsort(times["bliss_seconds"])[(len(runs) - 1) // 2])]
    return {
        "bliss_s": float(np.median(times["bliss_seconds"])),
        "sep_s": float(np.median(times["sep_seconds"])),
        "bliss_warm_s": float(np.median(times["bliss_warm_seconds"])),
        "sep_warm_s": float(np.median(times["sep_warm_seconds"])),
        "bliss_s_runs": times["bliss_seconds"],
        "bliss_warm_s_runs": times["bliss_warm_seconds"],
        "sep_s_runs": times["sep_seconds"],
        "sep_warm_s_runs": times["sep_warm_seconds"],
        "bliss_stage_s": median_pass[1]["timings"],
        "bliss_n_detected": median_pass[1]["n_detected"],
        "sep_n_detected": median_pass[0]["n_detected"],
        "bliss_peak_rss_gb": max(bliss["peak_rss_gb"] for _, bliss in runs),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the suite; returns the JSON results plus a one-line ``summary``."""
    model = BlissModel.load(args.model) if args.model is not None else load_default_model()
    largest = args.size or (2048 if args.quick else 4096)
    if largest < 64 or largest % 4:
        raise ValueError(f"--size {largest} must be a multiple of 4 and at least 64.")
    # Five passes, because a first call's page faults cost up to three times as much in some minutes
    # as in others on a shared virtual machine; --quick keeps three to stay within two minutes.
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 5)
    if repeats < 1:
        raise ValueError(f"--repeats {repeats} must be at least 1.")
    sizes = [largest // 4, largest // 2, largest]
    invalid_bits = invalid_mask_bits(DEFAULT_INVALID_MASK_PLANES)
    results: dict[str, Any] = {"model": str(args.model) if args.model else "packaged default"}
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        scene = _simulate_scene(model, largest, args.seed)
        results["simulation_s"] = time.perf_counter() - start
        results["n_true_sources"] = int(scene["n_true_sources"])
        scene_path = str(Path(workdir) / "scene.npz")
        np.savez(scene_path, **scene)
        model_path = str(args.model) if args.model else None
        runs: dict[int, list[tuple[dict, dict]]] = {size: [] for size in sizes}
        for _ in range(repeats):
            for size in sizes:
                sep = _run_child(_sep_in_child, scene_path, size, invalid_bits)
                bliss = _run_child(
                    _infer_in_child, scene_path, model_path, size, args.n_samples, "cpu", args.precision
                )
                runs[size].append((sep, bliss))
        per_size = {str(size): _median_run(runs[size]) for size in sizes}
        if torch.cuda.is_available() and not args.no_gpu:
            gpu = _run_child(
                _infer_in_child, scene_path, model_path, largest, args.n_samples, "cuda", args.precision
            )
            results[f"gpu_s_{largest // 1024}k"] = gpu["seconds"]
            results[f"gpu_warm_s_{largest // 1024}k"] = gpu["warm_seconds"]
            results["gpu_stage_s"] = gpu["timings"]
    label = f"{largest // 1024}k" if largest % 1024 == 0 else f"{largest}px"
    top = per_size[str(largest)]
    pixels = np.array([float(size) ** 2 for size in sizes])

    def exponent_of(key: str) -> float:
        seconds = np.array([per_size[str(size)][key] for size in sizes])
        return float(np.polyfit(np.log(pixels), np.log(seconds), 1)[0])

    exponent, warm_exponent = exponent_of("bliss_s"), exponent_of("bliss_warm_s")
    results.update(
        {
            "sizes": sizes,
            "n_samples": args.n_samples,
            "precision": args.precision,
            "repeats": repeats,
            "per_size": per_size,
            f"bliss_s_{label}": top["bliss_s"],
            f"sep_s_{label}": top["sep_s"],
            "ratio_vs_sep": top["bliss_s"] / top["sep_s"],
            f"sep_warm_s_{label}": top["sep_warm_s"],
            "ratio_vs_sep_warm": top["bliss_warm_s"] / top["sep_warm_s"],
            "mpix_per_s": largest**2 / 1e6 / top["bliss_s"],
            "peak_rss_gb": max(entry["bliss_peak_rss_gb"] for entry in per_size.values()),
            "scaling_exponent": exponent,
            f"bliss_warm_s_{label}": top["bliss_warm_s"],
            "scaling_exponent_warm": warm_exponent,
        }
    )
    stages = ", ".join(f"{name} {value:.1f}s" for name, value in top["bliss_stage_s"].items())
    results["summary"] = "\n".join(
        [
            f"infer: {label} ({largest}x{largest}, {results['n_true_sources']} true sources), "
            f"{args.n_samples} samples, {args.precision} backbone, medians of {repeats} passes; "
            f"BLISS stages: {stages}",
            f"bliss_s_{label} = {top['bliss_s']:.1f}, sep_s_{label} = {top['sep_s']:.1f}, "
            f"ratio_vs_sep = {results['ratio_vs_sep']:.2f}, mpix_per_s = {results['mpix_per_s']:.3f}, "
            f"peak_rss_gb = {results['peak_rss_gb']:.2f}, scaling_exponent = {exponent:.3f}",
            f"second calls: bliss_warm_s_{label} = {top['bliss_warm_s']:.1f}, "
            f"sep_warm_s_{label} = {top['sep_warm_s']:.1f}, "
            f"ratio_vs_sep_warm = {results['ratio_vs_sep_warm']:.2f}, "
            f"scaling_exponent_warm = {warm_exponent:.3f}",
        ]
    )
    return results
