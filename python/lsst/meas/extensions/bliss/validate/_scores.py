"""Every yardstick of one variation's scenes, for every method, as JSON-ready values.

All numbers come from `lsst.meas.extensions.bliss.metrics` (one definition
for the project); this module only selects the inputs: 1-pixel Hungarian
matches, recall by true SNR and magnitude, precision by estimated SNR and
magnitude, F1 by blendedness, star/galaxy accuracy by true SNR, relative flux
and disk-ellipticity residuals by true SNR, and BLISS's calibration (tile
detection reliability and ECE, coverage and PIT of its flux and position
posteriors).
"""

from __future__ import annotations

__all__ = ["CALIBRATION_TARGETS", "SCORE_SNR_EDGES", "score_scenes", "targets_met"]

import math
from typing import Any

import numpy as np

from ..metrics import (
    DEFAULT_SNR_EDGES,
    classification_accuracy,
    detection_metrics,
    expected_calibration_error,
    matched_attributes,
    pit_histogram,
    relative_residual_stats,
    residual_stats,
)
from ..survey import flux_njy_to_mag
from ._scenes import METHODS, SceneResults

SCORE_SNR_EDGES: tuple[float, ...] = (3.0, 5.0, 7.0, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0, 300.0, math.inf)
"""SNR bins of the residual and classification curves."""

_MATCHED_TRUE_ATTRIBUTES = ("flux", "is_galaxy", "snr", "blendedness", "e1", "e2")
"""True attributes carried with each 1-pixel match."""

CALIBRATION_TARGETS: dict[str, tuple[float, float]] = {
    "flux_coverage68": (0.63, 0.73),
    "flux_coverage95": (0.90, 1.00),
    "position_coverage68": (0.63, 0.73),
    "position_coverage95": (0.90, 1.00),
    "detection_ece": (0.0, 0.03),
}
"""Allowed range of each calibration figure of the shipped model (targets: +-5 points, ECE <= 0.03)."""


def _mag(flux_njy: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux_njy > 0, flux_njy_to_mag(np.clip(flux_njy, 1e-30, None)), np.nan)


def _classification_by_snr(pairs: dict[str, np.ndarray]) -> dict[str, Any]:
    edges = np.asarray(SCORE_SNR_EDGES)
    accuracy, counts = [], []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        use = (pairs["true_snr"] >= low) & (pairs["true_snr"] < high)
        scores = classification_accuracy(pairs["true_is_galaxy"][use], pairs["est_galaxy_prob"][use])
        accuracy.append(scores.accuracy)
        counts.append(scores.n)
    return {"edges": [float(e) for e in edges], "accuracy": accuracy, "count": counts}


def _coverage(pit: np.ndarray, level: float) -> float:
    """Fraction of truths inside the central ``level`` interval, from their PIT values."""
    if pit.size == 0:
        return math.nan
    tail = 0.5 * (1.0 - level)
    return float(np.mean((pit >= tail) & (pit <= 1.0 - tail)))


def _calibration(results: SceneResults) -> dict[str, Any]:
    tiles = results.tiles
    ece, reliability = expected_calibration_error(
        np.clip(tiles["tile_detection_prob"], 0.0, 1.0), tiles["tile_has_source"].astype(float), n_bins=10
    )
    # Empty tiles with a near-zero probability dominate the ECE; the one over the tiles that may hold
    # a source (probability >= 0.05) says how well the probabilities users read are calibrated.
    candidate = tiles["tile_detection_prob"] >= 0.05
    ece_candidates, _ = expected_calibration_error(
        np.clip(tiles["tile_detection_prob"][candidate], 0.0, 1.0),
        tiles["tile_has_source"][candidate].astype(float),
        n_bins=10,
    )
    position_pit = np.concatenate([tiles["tile_pit_x"], tiles["tile_pit_y"]])
    calibration: dict[str, Any] = {
        "detection_ece": ece,
        "detection_ece_prob_above_0.05": ece_candidates,
        "n_tiles_prob_above_0.05": int(candidate.sum()),
        "detection_reliability": reliability.to_dict(),
        "n_tiles": int(tiles["tile_detection_prob"].size),
        "n_reported_true_tiles": int(tiles["tile_pit_flux"].size),
        "flux_pit": pit_histogram(tiles["tile_pit_flux"]).to_dict(),
        "position_pit": pit_histogram(position_pit).to_dict(),
    }
    bright = tiles["tile_pit_snr"] >= 10
    for level in (68, 95):
        calibration[f"flux_coverage{level}"] = _coverage(tiles["tile_pit_flux"], level / 100)
        calibration[f"position_coverage{level}"] = _coverage(position_pit, level / 100)
        calibration[f"flux_coverage{level}_snr10"] = _coverage(tiles["tile_pit_flux"][bright], level / 100)
    return calibration


def score_scenes(results: SceneResults) -> dict[str, Any]:
    """All figures of one variation.

    Returns
    -------
    scores
        ``{"n_scenes", "n_true_sources", "psf_fwhm_arcsec", "density_factor",
        "seconds", "<method>": {...}, "calibration": {...}}``; each method
        holds ``f1``, ``precision``, ``recall``, ``recall_snr5_10``, the full
        `DetectionMetrics` (``detection``), ``flux_residual`` by true SNR and,
        for BLISS, ``classification_by_snr``, ``ellipticity_residual``
        (``e1`` and ``e2`` of true galaxies called galaxies) and
        ``classification_accuracy_snr10``.
    """
    per_image = results.per_image
    true_mag = [_mag(flux) for flux in per_image["true_flux"]]
    scores: dict[str, Any] = {
        "n_scenes": results.n_scenes,
        "n_true_sources": int(sum(values.size for values in per_image["true_x"])),
        "psf_fwhm_arcsec": float(np.median(results.psf_fwhm_arcsec)),
        "density_factor": results.variation.density_factor,
        "seconds": results.seconds,
    }
    for method in METHODS:
        detection = detection_metrics(
            true_x=per_image["true_x"],
            true_y=per_image["true_y"],
            est_x=per_image[f"{method}_x"],
            est_y=per_image[f"{method}_y"],
            true_snr=per_image["true_snr"],
            true_mag=true_mag,
            true_blendedness=per_image["true_blendedness"],
            est_snr=per_image[f"{method}_snr"],
            est_mag=[_mag(flux) for flux in per_image[f"{method}_flux"]],
        )
        recall_by_snr = detection.recall_by_true_snr
        assert recall_by_snr is not None
        snr5 = list(DEFAULT_SNR_EDGES).index(5.0)
        pairs = matched_attributes(results.per_image, method, _MATCHED_TRUE_ATTRIBUTES)
        figures: dict[str, Any] = {
            "f1": detection.f1,
            "precision": detection.precision,
            "recall": detection.recall,
            "recall_snr5_10": recall_by_snr.value[snr5],
            "detection": detection.to_dict(),
            "flux_residual": relative_residual_stats(
                pairs["est_flux"], pairs["true_flux"], pairs["true_snr"], SCORE_SNR_EDGES
            ).to_dict(),
        }
        if method == "bliss":
            figures["classification_by_snr"] = _classification_by_snr(pairs)
            figures["classification_accuracy_snr10"] = classification_accuracy(
                pairs["true_is_galaxy"], pairs["est_galaxy_prob"], pairs["true_snr"], min_snr=10
            ).accuracy
            galaxies = (pairs["true_is_galaxy"] > 0.5) & (pairs["est_galaxy_prob"] > 0.5)
            figures["ellipticity_residual"] = {
                component: residual_stats(
                    pairs[f"est_{component}"][galaxies] - pairs[f"true_{component}"][galaxies],
                    pairs["true_snr"][galaxies],
                    SCORE_SNR_EDGES,
                ).to_dict()
                for component in ("e1", "e2")
            }
        scores[method] = figures
    scores["calibration"] = _calibration(results)
    return scores


def targets_met(calibration: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each calibration target: its value, allowed range, and whether it is met."""
    return {
        name: {
            "value": calibration[name],
            "allowed": list(allowed),
            "met": bool(allowed[0] <= calibration[name] <= allowed[1]),
        }
        for name, allowed in CALIBRATION_TARGETS.items()
    }
