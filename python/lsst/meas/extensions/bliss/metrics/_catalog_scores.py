"""Scores of stored BLISS catalogs against their truth tables (what `BlissValidateTask` and
`BlissValidateSummaryTask` write).

In the core rather than in ``validate`` so that the pipeline layer reaches it
without importing the report's plotting stack.

The inputs are column mappings with the names of the Butler tables
(``bliss_source`` and ``bliss_truth``; an `astropy.table.Table` is such a
mapping), so the core stays free of ``lsst.*`` imports.  Counts are kept next
to every rate so that scores of many detectors can be summed.
"""

from __future__ import annotations

__all__ = [
    "SOURCE_COLUMNS_USED",
    "TRUTH_COLUMNS_USED",
    "catalog_scores",
    "combined_catalog_scores",
    "json_safe",
]

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._calibration import interval_coverage
from ._detection import DEFAULT_MAG_EDGES, classification_accuracy, detection_metrics
from ._matching import matched_attributes
from ._residuals import relative_residual_stats

TRUTH_COLUMNS_USED: tuple[str, ...] = ("x", "y", "flux", "is_galaxy", "mag")
"""Columns read from the truth table."""

SOURCE_COLUMNS_USED: tuple[str, ...] = (
    "x",
    "y",
    "xErr",
    "yErr",
    "bliss_detect_prob",
    "bliss_galaxy_prob",
    "bliss_flux",
    "bliss_flux_q16",
    "bliss_flux_q84",
)
"""Columns read from the BLISS source table."""


def _columns(table: Mapping[str, Any], names: tuple[str, ...], what: str) -> dict[str, np.ndarray]:
    # keys(), not `in`: an astropy Table's `in` looks among its rows.
    present = set(table.keys())
    missing = [name for name in names if name not in present]
    if missing:
        raise KeyError(
            f"The {what} table lacks the columns {missing}; it needs {list(names)} "
            f"(the {what} dataset written by this package)."
        )
    # Parent rows of blend families (deblend_nChild > 0) group detections; they are not detections.
    rows = np.asarray(table["deblend_nChild"]) == 0 if "deblend_nChild" in present else slice(None)
    return {name: np.asarray(table[name], dtype=np.float64)[rows] for name in names}


def catalog_scores(
    truth: Mapping[str, Any], sources: Mapping[str, Any], match_radius_pix: float = 1.0
) -> dict[str, Any]:
    """Detection, classification, flux and calibration scores of one catalog.

    Parameters
    ----------
    truth
        True sources: `TRUTH_COLUMNS_USED` (positions in pixels, flux in nJy).
    sources
        BLISS detections: `SOURCE_COLUMNS_USED` (rows with ``deblend_nChild > 0``, the parents of
        blend families, are left out).
    match_radius_pix
        Radius of the one-to-one matches (pixels).

    Returns
    -------
    scores
        ``n_true``, ``n_est``, ``n_matched``, ``precision``, ``recall``,
        ``f1``, ``recall_by_true_mag`` (`BinnedRate` dict),
        ``classification_accuracy``, ``flux_bias`` and ``flux_scatter``
        (relative residuals of matches), ``flux_coverage68`` (truth inside
        the 16-84% posterior interval), ``position_coverage68`` (x and y
        within one posterior standard deviation), ``mean_detect_prob``
        (mean detection probability of the detections, to compare with
        ``precision``); NaN where a score has no data.

    Raises
    ------
    KeyError
        If a table lacks a needed column.
    """
    return combined_catalog_scores([truth], [sources], match_radius_pix)


def combined_catalog_scores(
    truths: Sequence[Mapping[str, Any]],
    sources: Sequence[Mapping[str, Any]],
    match_radius_pix: float = 1.0,
) -> dict[str, Any]:
    """The scores of `catalog_scores` over many exposures at once.

    Sources are matched within each exposure (positions are pixels of its own
    detector); counts, rates and residual statistics are then taken over all
    matches, so medians and scatters are those of the whole set, not
    averages of per-exposure figures.

    Parameters
    ----------
    truths, sources
        The truth and BLISS tables of each exposure, in the same order.
    match_radius_pix
        Radius of the one-to-one matches (pixels).

    Returns
    -------
    scores
        As `catalog_scores`, plus ``n_exposures``.

    Raises
    ------
    KeyError
        If a table lacks a needed column.
    ValueError
        If the two sequences differ in length or are empty.
    """
    if len(truths) != len(sources) or not truths:
        raise ValueError(
            f"Need one truth table per source table and at least one of each; got {len(truths)} "
            f"truth and {len(sources)} source tables."
        )
    true = [_columns(table, TRUTH_COLUMNS_USED, "truth") for table in truths]
    est = [_columns(table, SOURCE_COLUMNS_USED, "source") for table in sources]
    detection = detection_metrics(
        [t["x"] for t in true],
        [t["y"] for t in true],
        [e["x"] for e in est],
        [e["y"] for e in est],
        true_mag=[t["mag"] for t in true],
        match_radii_pix=(match_radius_pix,),
        mag_edges=DEFAULT_MAG_EDGES,
    )
    per_image = {f"true_{name}": [t[name] for t in true] for name in TRUTH_COLUMNS_USED}
    per_image.update({f"src_{name}": [e[name] for e in est] for name in SOURCE_COLUMNS_USED})
    pairs = matched_attributes(per_image, "src", TRUTH_COLUMNS_USED, match_radius_pix)
    flux = (
        relative_residual_stats(pairs["est_bliss_flux"], pairs["true_flux"]) if detection.n_matched else None
    )
    positions_inside = np.concatenate(
        [
            np.abs(pairs["est_x"] - pairs["true_x"]) <= pairs["est_xErr"],
            np.abs(pairs["est_y"] - pairs["true_y"]) <= pairs["est_yErr"],
        ]
    )
    detect_prob = np.concatenate([e["bliss_detect_prob"] for e in est])
    recall_by_mag = detection.recall_by_true_mag
    assert recall_by_mag is not None
    return {
        "n_exposures": len(truths),
        "match_radius_pix": match_radius_pix,
        "n_true": detection.n_true,
        "n_est": detection.n_est,
        "n_matched": detection.n_matched,
        "precision": detection.precision,
        "recall": detection.recall,
        "f1": detection.f1,
        "recall_by_true_mag": recall_by_mag.to_dict(),
        "classification_accuracy": classification_accuracy(
            pairs["true_is_galaxy"], np.clip(pairs["est_bliss_galaxy_prob"], 0.0, 1.0)
        ).accuracy,
        "flux_bias": flux.median if flux is not None else math.nan,
        "flux_scatter": flux.scatter if flux is not None else math.nan,
        "flux_coverage68": interval_coverage(
            pairs["true_flux"], pairs["est_bliss_flux_q16"], pairs["est_bliss_flux_q84"]
        ),
        "position_coverage68": float(positions_inside.mean()) if positions_inside.size else math.nan,
        "mean_detect_prob": float(detect_prob.mean()) if detect_prob.size else math.nan,
    }


def json_safe(value: Any) -> Any:
    """``value`` with builtin types only and non-finite floats as None (strict JSON and YAML)."""
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
