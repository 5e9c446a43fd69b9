"""The validation report: scenes, scores, sweeps, figures, ``metrics.json`` and ``index.html``."""

from __future__ import annotations

__all__ = ["ValidationPlan", "headline", "run_validation", "write_report"]

import contextlib
import dataclasses
import html
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..inference import sample_catalogs
from ..io import BlissModel, atomic_write_path
from ..metrics import json_safe
from . import _plots
from ._scenes import METHODS, VARIATIONS, SceneResults, Variation, run_methods_on_scenes
from ._scores import score_scenes, targets_met
from ._sweeps import separation_sweep, tile_position_sweep


@dataclasses.dataclass(frozen=True)
class ValidationPlan:
    """How much to simulate.

    Attributes
    ----------
    seed
        Seed of every held-out scene (each variation and sweep offsets it).
    default_scenes
        128 x 128 scenes of the default variation.
    variation_scenes
        Scenes of each other variation.
    sweep_trials
        Noise realizations per separation of the two-galaxy sweep.
    tile_trials
        Stars per tile placement of the tile-boundary sweep.
    n_samples
        Posterior catalog samples drawn for the example scene.
    sweep_with_autoencoder
        Deblend the separation sweep with the model's galaxy autoencoder
        instead of the parametric galaxy models (the default of
        `BlissDeblendMeasureTask`).
    variations
        The variations; the first is the default.
    """

    seed: int = 20261201
    default_scenes: int = 1000
    variation_scenes: int = 300
    sweep_trials: int = 40
    tile_trials: int = 200
    n_samples: int = 16
    sweep_with_autoencoder: bool = False
    variations: tuple[Variation, ...] = VARIATIONS

    @classmethod
    def quick(cls, seed: int = 20261201) -> ValidationPlan:
        """The ``--quick`` plan: under a minute on 2 CPU cores (the full plan about 2.5 minutes)."""
        return cls(seed=seed, default_scenes=200, variation_scenes=60, sweep_trials=20, tile_trials=100)


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The figures quoted in closing notes: F1 per method, recall at SNR 5-10, coverage, ECE."""
    default = metrics["variations"][metrics["default_variation"]]
    calibration = default["calibration"]
    values: dict[str, Any] = {}
    for method in METHODS:
        values[f"{method}_f1"] = default[method]["f1"]
        values[f"{method}_recall_snr5_10"] = default[method]["recall_snr5_10"]
    for name in ("flux_coverage68", "flux_coverage95", "position_coverage68", "position_coverage95"):
        values[f"bliss_{name}"] = calibration[name]
    values["bliss_detection_ece"] = calibration["detection_ece"]
    values["bliss_detection_ece_prob_above_0.05"] = calibration["detection_ece_prob_above_0.05"]
    return values


def run_validation(
    model: BlissModel,
    plan: ValidationPlan,
    log: Callable[[str], None] = lambda message: None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Simulate, run the three methods and score everything.

    Returns
    -------
    metrics
        The content of ``metrics.json``.
    extras
        What only the figures need: the default variation's `SceneResults`
        and the example scene's posterior samples.
    """
    if not plan.variations:
        raise ValueError("The validation plan has no variations.")
    start = time.perf_counter()
    variations: dict[str, Any] = {}
    default_results: SceneResults | None = None
    for index, variation in enumerate(plan.variations):
        n_scenes = plan.default_scenes if index == 0 else plan.variation_scenes
        results = run_methods_on_scenes(model, variation, n_scenes, plan.seed + 1000 * index)
        variations[variation.name] = score_scenes(results)
        scores = variations[variation.name]
        log(
            f"validate: {variation.name}: {n_scenes} scenes, F1 "
            + ", ".join(f"{m} {scores[m]['f1']:.3f}" for m in METHODS)
            + f" ({time.perf_counter() - start:.0f} s)"
        )
        if index == 0:
            default_results = results
    assert default_results is not None
    autoencoder = (
        model.require_autoencoder("ValidationPlan.sweep_with_autoencoder")
        if plan.sweep_with_autoencoder
        else None
    )
    sweep = separation_sweep(model, plan.sweep_trials, plan.seed + 77, autoencoder)
    log(f"validate: separation sweep done ({time.perf_counter() - start:.0f} s)")
    tile_sweep = tile_position_sweep(model, plan.tile_trials, plan.seed + 78)
    log(f"validate: tile-position sweep done ({time.perf_counter() - start:.0f} s)")
    default_name = plan.variations[0].name
    metrics: dict[str, Any] = {
        "model": model.training.get("command", "?"),
        "model_version": model.package_version,
        "plan": {**dataclasses.asdict(plan), "variations": [dataclasses.asdict(v) for v in plan.variations]},
        "default_variation": default_name,
        "conditions": {
            "psf_fwhm_arcsec": model.conditions.psf_fwhm_arcsec,
            "pixel_scale_arcsec": model.conditions.pixel_scale_arcsec,
            "point_source_depth_mag": model.conditions.point_source_depth_mag(),
        },
        "variations": variations,
        "separation_sweep": sweep,
        "tile_position_detection_prob": {
            k: v for k, v in tile_sweep.items() if k not in ("edge_dip", "edge_dip_stderr")
        },
        "tile_edge_dip": tile_sweep["edge_dip"],
        "tile_edge_dip_stderr": tile_sweep["edge_dip_stderr"],
        "targets": targets_met(variations[default_name]["calibration"]),
    }
    metrics["headline"] = headline(metrics)
    metrics["wall_seconds"] = time.perf_counter() - start
    example = default_results.example
    samples = sample_catalogs(
        model.encoder,
        _tensor(example["image"]),
        _tensor(example["variance"]),
        _tensor(example["mask"]),
        float(example["psf_fwhm_pix"]),
        model.conditions.pixel_scale_arcsec,
        plan.n_samples,
        seed=plan.seed + 79,
    )
    sample_positions = [
        (s.x[0, : int(s.n_sources[0])].numpy(), s.y[0, : int(s.n_sources[0])].numpy()) for s in samples
    ]
    return metrics, {"default_results": default_results, "samples": sample_positions}


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A batch of one image."""
    return torch.from_numpy(np.ascontiguousarray(array))[None]


FIGURES: dict[str, str] = {
    "detection_vs_snr.png": "Recall against the true SNR (left) and precision against the estimated SNR "
    "(right), one-to-one 1-pixel matches, default variation.",
    "detection_vs_mag.png": "Recall and precision against r magnitude; the dotted line is the 5-sigma "
    "point-source depth.",
    "f1_vs_blendedness.png": "F1 in bins of blendedness (0: isolated; towards 1: buried in a brighter "
    "neighbour). An unmatched detection falls in the bin of its nearest true source.",
    "classification_vs_snr.png": "BLISS star/galaxy accuracy of matched sources against the true SNR.",
    "flux_residuals.png": "Relative flux residuals of matched sources: median and robust-scatter band per "
    "SNR bin (bins with at least 5 sources); dashed, the Cramer-Rao bound +-1/SNR.",
    "ellipticity_residuals.png": "BLISS disk-ellipticity residuals (posterior point estimate minus truth) "
    "of true galaxies called galaxies, against the true SNR; dashed, the approximate Cramer-Rao bound "
    "+-1/SNR of a Gaussian galaxy without PSF (estimates pulled towards the prior fall below it).",
    "calibration.png": "BLISS calibration: reliability diagram of the tile detection probability (left), "
    "coverage of central 68% and 95% flux and position intervals (middle; grey band +-5 points) and PIT "
    "histograms (right; flat when calibrated). Coverage and PIT use the tiles holding a true source that "
    "BLISS reports.",
    "separation_sweep.png": "Two galaxies (the first twice as bright and 50% larger) at 1-10 pixels: "
    "detection of the second and median flux residuals (deblended fluxes; parametric galaxy models "
    "unless the run asked for the autoencoder).",
    "tile_position.png": "Detection probability of isolated SNR 10-30 stars at tile centres, edges and "
    "corners (the checkerboard's tile-boundary check).",
    "variations.png": "F1 of the three methods in every variation.",
    "example_scene.png": "A default-variation scene in noise units: true sources, each method's "
    "detections, and the positions in BLISS posterior catalog samples.",
}


def write_report(
    output_dir: Path, metrics: dict[str, Any], extras: dict[str, Any], model: BlissModel, dpi: int = 90
) -> list[Path]:
    """Write ``metrics.json``, the figures and ``index.html`` into ``output_dir``.

    Files are written under temporary names and renamed at the end, so an
    interrupted run never leaves a half-written report that looks complete.

    Returns
    -------
    paths
        The files written.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    default = metrics["variations"][metrics["default_variation"]]
    results: SceneResults = extras["default_results"]
    fwhm_pix = model.conditions.psf_fwhm_arcsec / model.conditions.pixel_scale_arcsec
    example_truth = {name: results.per_image[f"true_{name}"][0] for name in ("x", "y")}
    example_estimates = {
        method: {name: results.per_image[f"{method}_{name}"][0] for name in ("x", "y")} for method in METHODS
    }
    figures = {
        "detection_vs_snr.png": _plots.detection_by_snr_figure(default, METHODS),
        "detection_vs_mag.png": _plots.detection_by_mag_figure(
            default, METHODS, metrics["conditions"]["point_source_depth_mag"]
        ),
        "f1_vs_blendedness.png": _plots.f1_blendedness_figure(default, METHODS),
        "classification_vs_snr.png": _plots.classification_figure(default),
        "flux_residuals.png": _plots.flux_residual_figure(default, METHODS),
        "ellipticity_residuals.png": _plots.ellipticity_figure(default),
        "calibration.png": _plots.calibration_figure(default["calibration"]),
        "separation_sweep.png": _plots.separation_sweep_figure(metrics["separation_sweep"], fwhm_pix),
        "tile_position.png": _plots.tile_position_figure(metrics["tile_position_detection_prob"]),
        "variations.png": _plots.variations_figure(metrics["variations"], METHODS),
        "example_scene.png": _plots.example_scene_figure(
            results.example, example_truth, example_estimates, extras["samples"]
        ),
    }
    # Every file is staged under its own new temporary name (`atomic_write_path`) and all are renamed
    # together at the end; if any fails, the staged ones are removed and the previous report stays.
    targets = [output_dir / name for name in figures] + [
        output_dir / "metrics.json",
        output_dir / "index.html",
    ]
    with contextlib.ExitStack() as stack:
        staged = {target.name: stack.enter_context(atomic_write_path(target)) for target in targets}
        for name, figure in figures.items():
            figure.savefig(staged[name], dpi=dpi, format="png")
            plt.close(figure)
        staged["metrics.json"].write_text(json.dumps(json_safe(metrics), indent=1, allow_nan=False))
        staged["index.html"].write_text(_html(metrics))
    return targets


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.3f}"
    return html.escape(str(value))


def _html(metrics: dict[str, Any]) -> str:
    head = metrics["headline"]
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{_fmt(value)}</td></tr>" for name, value in head.items()
    )
    target_rows = []
    for name, target in metrics["targets"].items():
        colour = "green" if target["met"] else "red"
        verdict = "met" if target["met"] else "MISSED"
        target_rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{_fmt(target['value'])}</td>"
            f"<td>{target['allowed'][0]:.2f} - {target['allowed'][1]:.2f}</td>"
            f"<td style='color:{colour};font-weight:bold'>{verdict}</td></tr>"
        )
    variation_rows = []
    for name, scores in metrics["variations"].items():
        cells = "".join(f"<td>{_fmt(scores[m]['f1'])}</td>" for m in METHODS)
        cells += "".join(f"<td>{_fmt(scores[m]['recall_snr5_10'])}</td>" for m in METHODS)
        variation_rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{scores['n_scenes']}</td><td>{scores['n_true_sources']}</td>"
            f"<td>{scores['psf_fwhm_arcsec']:.2f}</td>{cells}</tr>"
        )
    method_heads = "".join(f"<th>F1 {m}</th>" for m in METHODS) + "".join(
        f"<th>recall SNR 5-10 {m}</th>" for m in METHODS
    )
    figures = "".join(
        f"<figure><img src='{name}' alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}"
        "</figcaption></figure>"
        for name, caption in FIGURES.items()
    )
    plan = metrics["plan"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>BLISS validation report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}img{{max-width:100%}}
figure{{margin:2em 0}}figcaption{{color:#444}}</style></head><body>
<h1>BLISS validation report</h1>
<p>Model: <code>{html.escape(str(metrics["model"]))}</code>
(package {html.escape(str(metrics["model_version"]))}).
Held-out 128x128 scenes simulated from the model's prior and conditions (seed {plan["seed"]});
BLISS, SEP and photutils run on the same images. Wall time {metrics["wall_seconds"]:.0f} s.</p>
<h2>Headline (default variation)</h2><table><tr><th>figure</th><th>value</th></tr>{rows}</table>
<h2>Calibration targets</h2>
<table><tr><th>figure</th><th>value</th><th>allowed</th><th>verdict</th></tr>{"".join(target_rows)}</table>
<h2>Variations</h2>
<table><tr><th>variation</th><th>scenes</th><th>true sources</th><th>PSF FWHM (")</th>{method_heads}</tr>
{"".join(variation_rows)}</table>
<p>Tile-boundary dip of the detection probability: {metrics["tile_edge_dip"]:.3f}
&plusmn; {metrics["tile_edge_dip_stderr"]:.3f} (standard error).</p>
<h2>Figures</h2>{figures}
</body></html>
"""
