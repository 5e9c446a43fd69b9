"""Calibration of posteriors: interval coverage, expected calibration error with its
reliability table, and histograms of probability-integral-transform (PIT) values.

Everything returned is numpy (or plain Python) so that it serializes to JSON
(``to_dict``); NaN marks a value computed from no data.
"""

from __future__ import annotations

__all__ = [
    "PitHistogram",
    "ReliabilityTable",
    "expected_calibration_error",
    "interval_coverage",
    "pit_histogram",
]

import dataclasses
import math
from typing import Any

import numpy as np
import scipy.special

from ._arrays import ArrayLike, as_float_array, as_vector, check_same_shape, json_list


def interval_coverage(truth: ArrayLike, lower: ArrayLike, upper: ArrayLike) -> float:
    """Fraction of true values inside their intervals ``[lower, upper]``.

    Parameters
    ----------
    truth, lower, upper
        Same shape (any); e.g. the 16th and 84th posterior percentiles for a
        central 68% interval.

    Raises
    ------
    ValueError
        On mismatched shapes, NaNs, or ``lower > upper``.
    """
    t = as_float_array(truth, "truth")
    lo, hi = as_float_array(lower, "lower"), as_float_array(upper, "upper")
    check_same_shape({"truth": t, "lower": lo, "upper": hi})
    if np.isnan(t).any() or np.isnan(lo).any() or np.isnan(hi).any():
        raise ValueError("truth, lower and upper must not contain NaN.")
    if np.any(lo > hi):
        raise ValueError("Some intervals have lower > upper.")
    if t.size == 0:
        return math.nan
    return float(np.mean((t >= lo) & (t <= hi)))


@dataclasses.dataclass(frozen=True)
class ReliabilityTable:
    """Reliability diagram of probabilities in equal-width bins on [0, 1].

    Attributes
    ----------
    bin_centres
        Centre of each bin, length ``n_bins``.
    mean_prob
        Mean predicted probability in each bin (NaN where empty).
    observed_frequency
        Fraction of positive outcomes in each bin (NaN where empty).
    counts
        Number of predictions in each bin.
    """

    bin_centres: list[float]
    mean_prob: list[float]
    observed_frequency: list[float]
    counts: list[int]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def expected_calibration_error(
    prob: ArrayLike, outcome: ArrayLike, n_bins: int = 10
) -> tuple[float, ReliabilityTable]:
    """Expected calibration error of predicted probabilities, and the reliability table.

    ``ECE = sum_b (n_b / n) |mean_prob_b - observed_frequency_b|`` over
    equal-width bins of the probability.

    Parameters
    ----------
    prob
        Predicted probabilities in [0, 1] (e.g. detection probabilities), shape (n,).
    outcome
        Whether each event happened (bool or 0/1; e.g. the detection matched
        a true source), shape (n,).
    n_bins
        Number of bins.

    Raises
    ------
    ValueError
        On mismatched shapes, probabilities outside [0, 1], or ``n_bins < 1``.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins={n_bins} must be >= 1.")
    p = as_vector(prob, "prob")
    y = as_vector(outcome, "outcome")
    check_same_shape({"prob": p, "outcome": y})
    if np.any((p < 0) | (p > 1) | np.isnan(p)):
        raise ValueError("prob must be probabilities in [0, 1].")
    if np.any((y != 0) & (y != 1)):
        raise ValueError("outcome must be 0/1 or boolean.")
    index = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    prob_sum = np.bincount(index, weights=p, minlength=n_bins)
    outcome_sum = np.bincount(index, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.where(counts > 0, prob_sum / counts, np.nan)
        frequency = np.where(counts > 0, outcome_sum / counts, np.nan)
    filled = counts > 0
    ece = (
        float(np.sum(counts[filled] * np.abs(mean_prob[filled] - frequency[filled])) / p.size)
        if p.size
        else math.nan
    )
    table = ReliabilityTable(
        json_list((np.arange(n_bins) + 0.5) / n_bins),
        json_list(mean_prob),
        json_list(frequency),
        [int(c) for c in counts],
    )
    return ece, table


@dataclasses.dataclass(frozen=True)
class PitHistogram:
    """Histogram of probability-integral-transform values on [0, 1].

    For calibrated posteriors the values ``CDF(truth)`` (or ``1 - CDF``, the
    VSBC form) are uniform and the histogram is flat.

    Attributes
    ----------
    edges
        Bin edges, length ``n_bins + 1``.
    counts
        Values per bin, length ``n_bins``.
    density
        ``counts / (n / n_bins)``: 1 in every bin when flat.
    chi2, p_value
        Pearson chi-squared statistic against the uniform histogram and its
        p-value (``n_bins - 1`` degrees of freedom); NaN for no data.
    """

    edges: list[float]
    counts: list[int]
    density: list[float]
    chi2: float
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def pit_histogram(cdf_at_truth: ArrayLike, n_bins: int = 10) -> PitHistogram:
    """Histogram of PIT values ``CDF(truth)``, each in [0, 1].

    Parameters
    ----------
    cdf_at_truth
        Posterior CDF evaluated at the true value, any shape (flattened).
    n_bins
        Number of equal-width bins.

    Raises
    ------
    ValueError
        If a value is outside [0, 1] or NaN, or ``n_bins < 1``.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins={n_bins} must be >= 1.")
    values = as_float_array(cdf_at_truth, "cdf_at_truth").ravel()
    if np.any((values < 0) | (values > 1) | np.isnan(values)):
        raise ValueError("cdf_at_truth must be in [0, 1].")
    index = np.minimum((values * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    expected = values.size / n_bins
    if values.size:
        density = counts / expected
        chi2 = float(np.sum((counts - expected) ** 2) / expected)
        p_value = float(scipy.special.chdtrc(n_bins - 1, chi2)) if n_bins > 1 else 1.0
    else:
        density = np.full(n_bins, np.nan)
        chi2 = p_value = math.nan
    return PitHistogram(
        json_list(np.linspace(0.0, 1.0, n_bins + 1)),
        [int(c) for c in counts],
        json_list(density),
        chi2,
        p_value,
    )
