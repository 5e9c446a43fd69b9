"""``bliss-bench science``: the shipped model against SEP on held-out simulated scenes.

Scenes are drawn from the model's own prior and conditions with a seed that
differs from its training and validation seeds; BLISS (point estimates, detection
probability > 0.5) and SEP (thresh 1.5, minarea 5, 32 deblend levels, contrast
0.005) run on the same background-subtracted images, and every figure comes
from the `metrics` sub-package (see ``doc/lsst.meas.extensions.bliss/metrics.rst``).  A second
experiment places isolated stars at tile centres, edges and corners to measure
the tile-boundary dip of the detection probability.
"""

from __future__ import annotations

__all__ = ["DESCRIPTION", "SCENE_SIZE", "add_arguments", "held_out_scene_figures", "run"]

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..baselines import run_sep_batch
from ..inference import estimate_catalog
from ..io import BlissModel, load_default_model
from ..metrics import (
    classification_accuracy,
    detection_metrics,
    matched_attributes,
    robust_scatter,
    robust_scatter_stderr,
    source_snr_and_blendedness,
)
from ..runtime import BACKBONE_PRECISIONS, resolve_backbone_dtype
from ..simulation import ImageSimulator, PriorConfig, SimulatorConfig
from ..survey import SurveyConditions, flux_njy_to_mag
from ..validate import (
    catalog_rows,
    tile_position_sweep,
)

DESCRIPTION = "BLISS model vs SEP on held-out scenes: F1, recall/precision, classification, flux, calibration"
SCENE_SIZE = 128


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the science suite."""
    parser.add_argument("--model", type=Path, default=None, help="model file (default: the packaged model)")
    parser.add_argument("--n-scenes", type=int, default=None, help="128x128 scenes (default 200, quick 40)")
    parser.add_argument("--batch-size", type=int, default=8, help="scenes per inference batch")
    parser.add_argument(
        "--sweep-trials",
        type=int,
        default=None,
        help="stars per tile placement in the tile-boundary sweep (default 200, quick 50)",
    )
    parser.add_argument(
        "--scene-prior",
        default="model",
        metavar="{model,default,MODEL_PATH}",
        help="prior of the held-out scenes: the model's own without its added bright stars (default), "
        "PriorConfig() defaults, or the prior of another model file (without its bright stars), to "
        "compare models trained on different priors on the same scenes",
    )
    parser.add_argument(
        "--precision",
        choices=BACKBONE_PRECISIONS,
        default="float32",
        help="arithmetic of the encoder's backbone, as FrameConfig.precision (default float32)",
    )


def _mag(flux_njy: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux_njy > 0, flux_njy_to_mag(np.clip(flux_njy, 1e-30, None)), np.nan)


def _scene_prior(choice: str, model: BlissModel, seed: int) -> PriorConfig:
    """The held-out scenes' prior for ``--scene-prior``; the scenes of another model's prior must be
    held out from its training too."""
    if choice == "model":
        return model.prior.without_bright_stars()
    if choice == "default":
        return PriorConfig()
    path = Path(choice)
    if not path.is_file():
        raise ValueError(
            f"--scene-prior {choice!r} is neither 'model', 'default' nor a model file; give one of those."
        )
    other = BlissModel.load(path)
    other.require_held_out_seed(seed, "--seed")
    return other.prior.without_bright_stars()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the suite; returns the JSON results plus a one-line ``summary``."""
    model = BlissModel.load(args.model) if args.model is not None else load_default_model()
    n_scenes = args.n_scenes or (40 if args.quick else 200)
    sweep_trials = args.sweep_trials or (50 if args.quick else 200)
    model.require_held_out_seed(args.seed, "--seed")
    backbone_dtype = resolve_backbone_dtype(args.precision, torch.device("cpu"))
    scene_prior = _scene_prior(args.scene_prior, model, args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    results: dict[str, Any] = {
        "model": str(args.model) if args.model is not None else "packaged default",
        **held_out_scene_figures(
            model, model.conditions, scene_prior, n_scenes, args.batch_size, generator, backbone_dtype
        ),
    }
    sweep = tile_position_sweep(model, sweep_trials, args.seed + 1, backbone_dtype=backbone_dtype)
    results["bliss_edge_dip"] = sweep.pop("edge_dip")
    results["bliss_edge_dip_stderr"] = sweep.pop("edge_dip_stderr")
    results["bliss_tile_position_detection_prob"] = sweep
    r = results
    results["summary"] = "\n".join(
        [
            f"science: {n_scenes} scenes {SCENE_SIZE}x{SCENE_SIZE}, {r['n_true_sources']} true sources",
            f"science: recall(SNR>=10) {r['bliss_recall_snr10']:.3f}, precision(SNR>=10) "
            f"{r['bliss_precision_snr10']:.3f}, class acc(SNR>=10) {r['bliss_class_acc_snr10']:.3f}",
            f"science: isolated-star flux bias {r['bliss_flux_bias']:+.3f}, scatter/CRB "
            f"{r['bliss_flux_scatter_over_crb']:.2f} +- {r['bliss_flux_scatter_over_crb_stderr']:.2f}, "
            f"cov68 {r['bliss_flux_cov68']:.3f}, "
            f"edge dip {r['bliss_edge_dip']:.3f} +- {r['bliss_edge_dip_stderr']:.3f}",
            f"bliss_f1 = {r['bliss_f1']:.3f}, sep_f1 = {r['sep_f1']:.3f}",
        ]
    )
    return results


def held_out_scene_figures(
    model: BlissModel,
    conditions: SurveyConditions,
    scene_prior: PriorConfig,
    n_scenes: int,
    batch_size: int,
    generator: torch.Generator,
    backbone_dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """BLISS and SEP on held-out scenes of `SCENE_SIZE` pixels: detection, classification, flux
    figures and calibration.

    Parameters
    ----------
    model
        The model.
    conditions
        Conditions of the scenes (e.g. one of the model's trained bands).
    scene_prior
        Prior of the scenes.
    n_scenes, batch_size
        Scenes, and scenes per inference batch.
    generator
        Source of the scenes (CPU), seeded apart from the model's training seeds.
    backbone_dtype
        Arithmetic of the encoder's backbone.

    Returns
    -------
    figures
        ``bliss_f1``, ``sep_f1``, ``bliss_recall_snr10``, ``bliss_precision_snr10``,
        ``bliss_class_acc_snr10``, ``bliss_flux_cov68`` and the other figures of ``bliss-bench
        science`` (without the tile-position sweep).
    """
    simulator = ImageSimulator(
        conditions,
        scene_prior,
        SimulatorConfig(
            image_height=SCENE_SIZE, image_width=SCENE_SIZE, tile_size=model.encoder.config.tile_size
        ),
        device="cpu",
    )
    per_image: dict[str, list[np.ndarray]] = {}

    def keep(name: str, values: np.ndarray) -> None:
        per_image.setdefault(name, []).append(values)

    seconds = {"bliss": 0.0, "sep": 0.0}
    done = 0
    while done < n_scenes:
        size = min(batch_size, n_scenes - done)
        batch = simulator.sample(size, generator=generator)
        truth = batch.truth
        snr, blendedness = source_snr_and_blendedness(
            truth, conditions.psf(batch.psf_fwhm_arcsec.numpy()), conditions, batch.noiseless
        )
        start = time.perf_counter()
        estimate = estimate_catalog(
            model.encoder,
            batch.image,
            batch.variance,
            batch.mask,
            batch.psf_fwhm_arcsec / conditions.pixel_scale_arcsec,
            conditions.pixel_scale_arcsec,
            backbone_dtype=backbone_dtype,
        )
        seconds["bliss"] += time.perf_counter() - start
        start = time.perf_counter()
        sep_catalogs = run_sep_batch(batch.image, batch.variance, batch.mask)
        seconds["sep"] += time.perf_counter() - start
        for index in range(size):
            true_rows, est_rows, sep = (
                catalog_rows(truth, index),
                catalog_rows(estimate, index),
                sep_catalogs[index],
            )
            count = len(true_rows["x"])
            keep("true_x", true_rows["x"])
            keep("true_y", true_rows["y"])
            keep("true_flux", true_rows["flux_njy"])
            keep("true_is_galaxy", true_rows["is_galaxy"])
            keep("true_snr", snr[index, :count])
            keep("true_blendedness", blendedness[index, :count])
            for name in ("x", "y", "flux_njy", "flux_err_njy", "flux_q16_njy", "flux_q84_njy", "galaxy_prob"):
                keep(f"bliss_{name}", est_rows[name])
            keep("sep_x", sep.x)
            keep("sep_y", sep.y)
            keep("sep_flux_njy", sep.flux_njy)
            keep("sep_snr", sep.snr)
        done += size

    true_mag = [_mag(f) for f in per_image["true_flux"]]
    bliss_snr = [
        f / np.clip(e, 1e-30, None)
        for f, e in zip(per_image["bliss_flux_njy"], per_image["bliss_flux_err_njy"], strict=True)
    ]
    common = {
        "true_x": per_image["true_x"],
        "true_y": per_image["true_y"],
        "true_snr": per_image["true_snr"],
        "true_mag": true_mag,
        "true_blendedness": per_image["true_blendedness"],
    }
    bliss_detection = detection_metrics(
        est_x=per_image["bliss_x"],
        est_y=per_image["bliss_y"],
        est_snr=bliss_snr,
        est_mag=[_mag(f) for f in per_image["bliss_flux_njy"]],
        **common,
    )
    sep_detection = detection_metrics(
        est_x=per_image["sep_x"],
        est_y=per_image["sep_y"],
        est_snr=per_image["sep_snr"],
        est_mag=[_mag(f) for f in per_image["sep_flux_njy"]],
        **common,
    )
    with_snr = {**per_image, "bliss_snr": bliss_snr}
    true_names = ("flux", "is_galaxy", "snr", "blendedness")
    pairs = {method: matched_attributes(with_snr, method, true_names) for method in ("bliss", "sep")}
    n_true_snr10 = sum(int(np.sum(snr >= 10)) for snr in per_image["true_snr"])
    results: dict[str, Any] = {
        "n_scenes": n_scenes,
        "scene_size": SCENE_SIZE,
        "n_true_sources": int(sum(len(v) for v in per_image["true_x"])),
        "backbone_dtype": str(backbone_dtype).removeprefix("torch."),
        "scene_prior": scene_prior.to_dict(),
        "bliss_seconds": seconds["bliss"],
        "sep_seconds": seconds["sep"],
        "bliss_detection": bliss_detection.to_dict(),
        "sep_detection": sep_detection.to_dict(),
    }
    for method, detection in (("bliss", bliss_detection), ("sep", sep_detection)):
        results[f"{method}_f1"] = detection.f1
        results[f"{method}_precision"] = detection.precision
        results[f"{method}_recall"] = detection.recall
        n_est_snr10 = sum(int(np.sum(snr >= 10)) for snr in with_snr[f"{method}_snr"])
        results.update(_pair_figures(method, pairs[method], n_true_snr10, n_est_snr10))
    results.update({f"bliss_{k}": v for k, v in _calibration(pairs["bliss"]).items()})
    return results


def _pair_figures(
    method: str, pairs: dict[str, np.ndarray], n_true_snr10: int, n_est_snr10: int
) -> dict[str, float]:
    """Figures of one method's 1-pixel matches; ``n_*_snr10`` count all true and estimated sources."""
    snr = pairs["true_snr"]
    figures = {
        f"{method}_recall_snr10": float(np.sum(snr >= 10) / n_true_snr10) if n_true_snr10 else math.nan,
        f"{method}_precision_snr10": (
            float(np.sum(pairs["est_snr"] >= 10) / n_est_snr10) if n_est_snr10 else math.nan
        ),
    }
    if "est_galaxy_prob" in pairs:
        scores = classification_accuracy(pairs["true_is_galaxy"], pairs["est_galaxy_prob"], snr, min_snr=10)
        figures[f"{method}_class_acc_snr10"] = scores.accuracy
    # Isolated stars with SNR 10-50: relative flux bias and scatter in units of the Cramér-Rao
    # bound, which for a source of known profile is flux / SNR.
    stars = (
        (~pairs["true_is_galaxy"].astype(bool))
        & (snr >= 10)
        & (snr <= 50)
        & (pairs["true_blendedness"] < 0.01)
    )
    relative = (pairs["est_flux_njy"][stars] - pairs["true_flux"][stars]) / pairs["true_flux"][stars]
    figures[f"{method}_flux_n_isolated_stars"] = int(stars.sum())
    figures[f"{method}_flux_bias"] = float(np.median(relative)) if stars.any() else math.nan
    figures[f"{method}_flux_scatter_over_crb"] = (
        robust_scatter(relative * snr[stars]) if stars.any() else math.nan
    )
    figures[f"{method}_flux_scatter_over_crb_stderr"] = robust_scatter_stderr(relative * snr[stars])
    return figures


def _calibration(pairs: dict[str, np.ndarray]) -> dict[str, float]:
    true_flux = pairs["true_flux"]
    inside = (true_flux >= pairs["est_flux_q16_njy"]) & (true_flux <= pairs["est_flux_q84_njy"])
    return {"flux_cov68": float(inside.mean()) if inside.size else math.nan}
