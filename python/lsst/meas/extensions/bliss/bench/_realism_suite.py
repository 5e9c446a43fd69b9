"""``bliss-bench realism``: BLISS and SEP on held-out scenes of realistic galaxies drawn by GalSim.

The scenes hold the model's own prior (its conditions, density, stars and
fluxes, without its added bright stars) with the richer galaxy population of
`REALISTIC_GALAXIES`: star-forming knots, irregular (off-centre) knots,
published sizes and ellipticities with a compact population and radii up to
5", and close pairs.  They are drawn by GalSim, not by the torch renderer that
made the training images (`render_galsim_images`; the knots as
``DeltaFunction`` points), with a seed that the model's training and
validation did not use, observed with the survey's noise (`observe`), and
given to BLISS (point estimates, detection probability > 0.5) and SEP (the
settings of ``bliss-bench science``).

Figures, per method (``bliss_``, ``sep_``), all with one-to-one matches
within 1 pixel (`metrics`):

* ``f1``: over all true sources and detections;
* ``recall_snr10``: fraction of true sources with SNR >= 10 that are matched;
* ``precision_snr10``: fraction of detections with estimated SNR >= 10 that
  are matched;
* ``class_acc_snr10``: star/galaxy accuracy of matched sources with true SNR
  >= 10, and ``class_acc_compact_snr10`` of those whose true half-light radius
  is below 0.2" (stars and compact galaxies); SEP does not classify (null);
* ``class_acc_compact_snr10_ideal``: beside it, the accuracy an ideal observer
  that knows each compact galaxy's profile could reach on the same matched
  sources (`ideal_classification_accuracy`), the ceiling of that figure;
* ``shred_rate_snr20``: fraction of true galaxies with SNR >= 20 that get one
  or more extra detections, matching no true source, within 1.5 half-light
  radii (of the major axis of the larger of disk and bulge) of their centre.
"""

from __future__ import annotations

__all__ = ["COMPACT_HLR_ARCSEC", "DESCRIPTION", "add_arguments", "run"]

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..baselines import run_sep_batch
from ..catalog import FullCatalog
from ..inference import estimate_catalog
from ..io import BlissModel, load_default_model
from ..metrics import (
    BinnedRate,
    classification_accuracy,
    detection_metrics,
    ideal_classification_accuracy,
    matched_attributes,
    point_source_residual_fraction,
    shred_rate,
    source_snr_and_blendedness,
)
from ..rendering import (
    STAMP_HALF_SIZES,
    PointSpreadFunction,
    catalog_to_render_sources,
    render_galsim_images,
)
from ..simulation import SourcePrior, observe
from ..validate import catalog_rows

DESCRIPTION = "BLISS vs SEP on GalSim scenes of realistic galaxies: F1, recall, classification, shredding"
SCENE_SIZE = 256
BORDER_TILES = 4
COMPACT_HLR_ARCSEC = 0.2
"""True half-light radius below which a source counts as compact (stars included)."""
SHRED_RADIUS_HLR = 1.5
METHODS = ("bliss", "sep")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the realism suite."""
    parser.add_argument("--model", type=Path, default=None, help="model file (default: the packaged model)")
    parser.add_argument(
        "--n-scenes", type=int, default=None, help=f"{SCENE_SIZE}x{SCENE_SIZE} scenes (default 200, quick 40)"
    )
    parser.add_argument("--batch-size", type=int, default=4, help="scenes per batch")


def _major_hlr_arcsec(rows: dict[str, np.ndarray]) -> np.ndarray:
    """Major-axis half-light radius of the larger of disk and bulge (zero for stars), arcsec."""
    disk = rows["disk_hlr_arcsec"] / np.sqrt(np.clip(rows["disk_q"], 1e-6, 1.0))
    bulge = rows["bulge_hlr_arcsec"] / np.sqrt(np.clip(rows["bulge_q"], 1e-6, 1.0))
    disk = np.where(rows["disk_frac"] > 0, disk, 0.0)
    bulge = np.where(rows["disk_frac"] < 1, bulge, 0.0)
    return np.where(rows["is_galaxy"] > 0.5, np.maximum(disk, bulge), 0.0)


def _compact_point_residuals(
    truth: FullCatalog, psf: PointSpreadFunction, pixel_scale_arcsec: float
) -> np.ndarray:
    """`point_source_residual_fraction` of the compact true sources (major half-light radius below
    `COMPACT_HLR_ARCSEC`), shape (B, N_max) like ``truth.x``; NaN for the other sources and padding."""
    sources = catalog_to_render_sources(truth, pixel_scale_arcsec)
    # The render sources are the catalog's valid entries in the same order.
    valid = truth.is_valid
    shape_fields = ("is_galaxy", "disk_frac", "disk_hlr_arcsec", "disk_q", "bulge_hlr_arcsec", "bulge_q")
    compact = _major_hlr_arcsec({name: truth.fields[name][valid].double().numpy() for name in shape_fields})
    compact = compact < COMPACT_HLR_ARCSEC
    values = np.full(compact.size, np.nan)
    values[compact] = point_source_residual_fraction(sources.select(torch.from_numpy(compact)), psf)
    fractions = np.full(tuple(truth.x.shape), np.nan)
    fractions[valid.numpy()] = values
    return fractions


def _at_least(rate: BinnedRate | None, threshold: float, kind: str) -> float:
    """Recall or precision over the bins at or above ``threshold`` (a bin edge) of a binned rate."""
    if rate is None or threshold not in rate.edges:
        raise ValueError(f"{threshold} is not a bin edge of the binned {kind}.")
    first = rate.edges.index(threshold)
    matched = sum(rate.n_matched[first:])
    total = sum((rate.n_true if kind == "recall" else rate.n_est)[first:])
    return matched / total if total else math.nan


def method_figures(per_image: dict[str, list[np.ndarray]], method: str, pixel_scale_arcsec: float) -> dict:
    """The suite's figures for one method from per-image truth and detections.

    Parameters
    ----------
    per_image
        Per-image arrays: ``true_x``, ``true_y``, ``true_snr``, ``true_is_galaxy``,
        ``true_hlr_arcsec`` (see `_major_hlr_arcsec`), ``true_point_residual`` (see
        `point_source_residual_fraction`; NaN where not computed), shape (N_b,) each;
        ``<method>_x``, ``<method>_y``, ``<method>_snr`` and, for a classifier,
        ``<method>_galaxy_prob``, shape (M_b,) each.
    method
        Column prefix of the method.
    pixel_scale_arcsec
        Arcsec per pixel.

    Returns
    -------
    figures
        ``<method>_f1``, ``_recall_snr10``, ``_precision_snr10``,
        ``_class_acc_snr10``, ``_class_acc_compact_snr10`` and
        ``_class_acc_compact_snr10_ideal`` (None without a classifier),
        ``_shred_rate_snr20`` and counts.
    """
    detection = detection_metrics(
        per_image["true_x"],
        per_image["true_y"],
        per_image[f"{method}_x"],
        per_image[f"{method}_y"],
        true_snr=per_image["true_snr"],
        est_snr=per_image[f"{method}_snr"],
        match_radii_pix=(1.0,),
    )
    figures: dict[str, Any] = {
        f"{method}_f1": detection.f1,
        f"{method}_recall_snr10": _at_least(detection.recall_by_true_snr, 10.0, "recall"),
        f"{method}_precision_snr10": _at_least(detection.precision_by_est_snr, 10.0, "precision"),
        f"{method}_class_acc_snr10": None,
        f"{method}_class_acc_compact_snr10": None,
        f"{method}_class_acc_compact_snr10_ideal": None,
    }
    if f"{method}_galaxy_prob" in per_image:
        pairs = matched_attributes(per_image, method, ("is_galaxy", "snr", "hlr_arcsec", "point_residual"))
        scores = classification_accuracy(
            pairs["true_is_galaxy"], pairs["est_galaxy_prob"], pairs["true_snr"], min_snr=10
        )
        compact = pairs["true_hlr_arcsec"] < COMPACT_HLR_ARCSEC
        compact_scores = classification_accuracy(
            pairs["true_is_galaxy"][compact],
            pairs["est_galaxy_prob"][compact],
            pairs["true_snr"][compact],
            min_snr=10,
        )
        figures[f"{method}_class_acc_snr10"] = scores.accuracy
        figures[f"{method}_class_acc_compact_snr10"] = compact_scores.accuracy
        figures[f"{method}_class_acc_compact_snr10_ideal"] = ideal_classification_accuracy(
            pairs["true_is_galaxy"][compact],
            pairs["true_snr"][compact],
            pairs["true_point_residual"][compact],
            min_snr=10,
        )
        figures[f"{method}_compact_galaxies_called_galaxies_snr10"] = compact_scores.galaxy_accuracy
        figures[f"{method}_n_compact_pairs_snr10"] = compact_scores.n
    shredding = shred_rate(
        per_image["true_x"],
        per_image["true_y"],
        [SHRED_RADIUS_HLR * hlr / pixel_scale_arcsec for hlr in per_image["true_hlr_arcsec"]],
        [
            (galaxy > 0.5) & (snr >= 20)
            for galaxy, snr in zip(per_image["true_is_galaxy"], per_image["true_snr"], strict=True)
        ],
        per_image[f"{method}_x"],
        per_image[f"{method}_y"],
    )
    figures[f"{method}_shred_rate_snr20"] = shredding.rate
    figures[f"{method}_shred_n_galaxies_snr20"] = shredding.n_galaxies
    figures[f"{method}_detection"] = detection.to_dict()
    return figures


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the suite; returns the JSON results plus a one-line ``summary``."""
    model = BlissModel.load(args.model) if args.model is not None else load_default_model()
    n_scenes = args.n_scenes or (40 if args.quick else 200)
    if n_scenes < 1 or args.batch_size < 1:
        raise ValueError(f"--n-scenes {n_scenes} and --batch-size {args.batch_size} must be >= 1.")
    model.require_held_out_seed(args.seed, "--seed")
    conditions = model.conditions
    scale = conditions.pixel_scale_arcsec
    tile_size = model.encoder.config.tile_size
    scene_prior = model.prior.without_bright_stars().with_realistic_galaxies()
    prior = SourcePrior(scene_prior, conditions, tile_size)
    generator = torch.Generator().manual_seed(args.seed)
    n_tiles = SCENE_SIZE // tile_size + 2 * BORDER_TILES
    margin = BORDER_TILES * tile_size
    fwhm_pix = conditions.psf_fwhm_arcsec / scale
    per_image: dict[str, list[np.ndarray]] = {}
    seconds = {"galsim": 0.0, "bliss": 0.0, "sep": 0.0}
    n_knotty = 0
    done = 0
    while done < n_scenes:
        size = min(args.batch_size, n_scenes - done)
        tiles = prior.sample(size, n_tiles, n_tiles, generator)
        padded = tiles.to_full_catalog()
        sources = catalog_to_render_sources(padded, scale)
        n_knotty += int(sources.has_knots.sum())
        psf = conditions.psf(np.full(size, conditions.psf_fwhm_arcsec))
        start = time.perf_counter()
        drawn = render_galsim_images(sources, psf, size, padded.height, padded.width)
        seconds["galsim"] += time.perf_counter() - start
        window = (slice(None), slice(margin, margin + SCENE_SIZE), slice(margin, margin + SCENE_SIZE))
        noiseless = torch.from_numpy(drawn[window]).float()
        image, variance, mask = observe(noiseless, conditions, generator)
        truth: FullCatalog = tiles.crop(BORDER_TILES).to_full_catalog()
        snr, _ = source_snr_and_blendedness(truth, psf, conditions, noiseless, STAMP_HALF_SIZES[-1])
        point_residual = _compact_point_residuals(truth, psf, scale)
        start = time.perf_counter()
        estimate = estimate_catalog(model.encoder, image, variance, mask, fwhm_pix, scale)
        seconds["bliss"] += time.perf_counter() - start
        start = time.perf_counter()
        sep_catalogs = run_sep_batch(image, variance, mask)
        seconds["sep"] += time.perf_counter() - start
        for index in range(size):
            true_rows, est_rows = catalog_rows(truth, index), catalog_rows(estimate, index)
            sep = sep_catalogs[index]
            columns = {
                "true_x": true_rows["x"],
                "true_y": true_rows["y"],
                "true_is_galaxy": true_rows["is_galaxy"].astype(np.float64),
                "true_snr": snr[index, : len(true_rows["x"])],
                "true_hlr_arcsec": _major_hlr_arcsec(true_rows),
                "true_point_residual": point_residual[index, : len(true_rows["x"])],
                "bliss_x": est_rows["x"],
                "bliss_y": est_rows["y"],
                "bliss_snr": est_rows["flux_njy"] / np.clip(est_rows["flux_err_njy"], 1e-30, None),
                "bliss_galaxy_prob": est_rows["galaxy_prob"],
                "sep_x": sep.x,
                "sep_y": sep.y,
                "sep_snr": sep.snr,
            }
            for name, values in columns.items():
                per_image.setdefault(name, []).append(np.asarray(values, dtype=np.float64))
        done += size

    all_snr = np.concatenate(per_image["true_snr"])
    all_galaxy = np.concatenate(per_image["true_is_galaxy"]) > 0.5
    all_hlr = np.concatenate(per_image["true_hlr_arcsec"])
    results: dict[str, Any] = {
        "model": str(args.model) if args.model is not None else "packaged default",
        "n_scenes": n_scenes,
        "scene_size": SCENE_SIZE,
        "scene_prior": scene_prior.to_dict(),
        "n_true_sources": int(all_snr.size),
        "n_true_snr10": int(np.sum(all_snr >= 10)),
        "n_galaxies_snr20": int(np.sum(all_galaxy & (all_snr >= 20))),
        "n_compact_galaxies_snr10": int(
            np.sum(all_galaxy & (all_hlr < COMPACT_HLR_ARCSEC) & (all_snr >= 10))
        ),
        "n_galaxies_with_knots_drawn": n_knotty,
        "galsim_seconds": seconds["galsim"],
        "bliss_seconds": seconds["bliss"],
        "sep_seconds": seconds["sep"],
    }
    for method in METHODS:
        results.update(method_figures(per_image, method, scale))
    r = results

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    lines = [
        f"realism: {n_scenes} GalSim scenes {SCENE_SIZE}x{SCENE_SIZE}, {r['n_true_sources']} true sources, "
        f"{r['n_galaxies_snr20']} galaxies with SNR>=20"
    ]
    for method in METHODS:
        lines.append(
            f"realism: {method} f1 {fmt(r[f'{method}_f1'])}, recall(SNR>=10) "
            f"{fmt(r[f'{method}_recall_snr10'])}, precision(SNR>=10) {fmt(r[f'{method}_precision_snr10'])}, "
            f"class acc {fmt(r[f'{method}_class_acc_snr10'])} (compact "
            f"{fmt(r[f'{method}_class_acc_compact_snr10'])}, ideal "
            f"{fmt(r[f'{method}_class_acc_compact_snr10_ideal'])}), shred rate(SNR>=20) "
            f"{fmt(r[f'{method}_shred_rate_snr20'])}"
        )
    lines.append(
        f"bliss_shred_rate_snr20 = {fmt(r['bliss_shred_rate_snr20'])}, "
        f"sep_shred_rate_snr20 = {fmt(r['sep_shred_rate_snr20'])}"
    )
    results["summary"] = "\n".join(lines)
    return results
