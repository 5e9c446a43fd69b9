"""Statistics of the residuals of matched pairs: median and robust scatter (overall and binned,
absolute and relative), the bootstrap error of the scatter, ellipticity components of shapes,
and the Cramer-Rao bound on the flux error (the physical limit of a flux residual).

Residuals are in the units of their inputs (fluxes in nJy, images in nJy and variances in
nJy^2).  Everything returned is numpy (or plain Python) so that it serializes to JSON
(``to_dict``); NaN marks a value computed from no data.
"""

from __future__ import annotations

__all__ = [
    "MAD_TO_SIGMA",
    "BinnedResidualStats",
    "cramer_rao_flux_sigma",
    "ellipticity_from_shape",
    "relative_residual_stats",
    "residual_stats",
    "robust_scatter",
    "robust_scatter_stderr",
]

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ._arrays import ArrayLike, as_float_array, as_vector, bin_index, check_edges, check_same_shape, json_list
from ._detection import DEFAULT_SNR_EDGES

MAD_TO_SIGMA: float = 1.4826
"""Ratio of a Gaussian's standard deviation to its median absolute deviation."""


def _finite_values(values: ArrayLike) -> np.ndarray:
    """The finite values of ``values`` (any shape), flattened."""
    array = as_float_array(values, "values").ravel()
    return array[np.isfinite(array)]


def _mad_sigma(array: np.ndarray) -> np.ndarray:
    """``1.4826 x`` the median absolute deviation along the last axis."""
    return MAD_TO_SIGMA * np.median(np.abs(array - np.median(array, axis=-1, keepdims=True)), axis=-1)


def robust_scatter(values: ArrayLike) -> float:
    """``1.4826 x`` the median absolute deviation (the standard deviation for Gaussian data).

    Non-finite values are ignored; NaN for no data.
    """
    array = _finite_values(values)
    if array.size == 0:
        return math.nan
    return float(_mad_sigma(array))


def robust_scatter_stderr(values: ArrayLike, n_resamples: int = 1000, seed: int = 0) -> float:
    """Bootstrap standard error of `robust_scatter`.

    A scatter measured on a few dozen sources is itself uncertain (for Gaussian
    data about ``1.2 / sqrt(n)`` of it, the median absolute deviation being an
    inefficient estimator); this says how far a pass or fail against a limit
    can be trusted.

    Parameters
    ----------
    values
        The residuals, any shape; non-finite values are ignored.
    n_resamples
        Bootstrap resamples.
    seed
        Seed of the resampling (the result is reproducible).

    Returns
    -------
    stderr
        Standard deviation of the resampled scatters; NaN for fewer than two values.
    """
    array = _finite_values(values)
    if array.size < 2:
        return math.nan
    rng = np.random.default_rng(seed)
    # Resamples are drawn in blocks of about 10^7 values so that memory stays bounded for long inputs.
    rows_per_block = max(1, 10_000_000 // array.size)
    scatters = []
    for start in range(0, n_resamples, rows_per_block):
        resampled = rng.choice(array, size=(min(rows_per_block, n_resamples - start), array.size))
        scatters.append(_mad_sigma(resampled))
    return float(np.std(np.concatenate(scatters), ddof=1))


@dataclasses.dataclass(frozen=True)
class BinnedResidualStats:
    """Median (bias) and robust scatter of residuals, overall and in bins.

    Attributes
    ----------
    median, scatter, count
        Over all finite residuals (``scatter`` is `robust_scatter`).
    quantity
        What the bins are of (e.g. ``"snr"``), or `None` when unbinned.
    edges
        Bin edges, length ``n_bins + 1`` (empty when unbinned).
    bin_median, bin_scatter, bin_count
        Per bin, length ``n_bins``; NaN where a bin is empty.
    """

    median: float
    scatter: float
    count: int
    quantity: str | None
    edges: list[float]
    bin_median: list[float]
    bin_scatter: list[float]
    bin_count: list[int]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def residual_stats(
    residual: ArrayLike,
    bins_by: ArrayLike | None = None,
    edges: Sequence[float] = DEFAULT_SNR_EDGES,
    quantity: str = "snr",
) -> BinnedResidualStats:
    """Median and robust scatter of residuals, overall and binned by another quantity.

    Parameters
    ----------
    residual
        Residuals of matched pairs (e.g. ``e1_est - e1_true``), shape (K,).
    bins_by
        The quantity to bin by (e.g. the true SNR), shape (K,), or `None`.
    edges
        Bin edges of ``bins_by``.
    quantity
        Name of ``bins_by`` for the report.

    Raises
    ------
    ValueError
        On mismatched shapes or invalid edges.
    """
    values = as_vector(residual, "residual")
    finite = np.isfinite(values)
    overall = values[finite]
    median = float(np.median(overall)) if overall.size else math.nan
    if bins_by is None:
        return BinnedResidualStats(median, robust_scatter(overall), int(overall.size), None, [], [], [], [])
    by = as_vector(bins_by, "bins_by")
    check_same_shape({"residual": values, "bins_by": by})
    edge_array = check_edges(edges, "edges")
    index = bin_index(by, edge_array)
    bin_median, bin_scatter, bin_count = [], [], []
    for b in range(edge_array.size - 1):
        in_bin = values[(index == b) & finite]
        bin_count.append(int(in_bin.size))
        bin_median.append(float(np.median(in_bin)) if in_bin.size else math.nan)
        bin_scatter.append(robust_scatter(in_bin))
    return BinnedResidualStats(
        median,
        robust_scatter(overall),
        int(overall.size),
        quantity,
        json_list(edge_array),
        bin_median,
        bin_scatter,
        bin_count,
    )


def relative_residual_stats(
    est: ArrayLike,
    truth: ArrayLike,
    bins_by: ArrayLike | None = None,
    edges: Sequence[float] = DEFAULT_SNR_EDGES,
    quantity: str = "snr",
) -> BinnedResidualStats:
    """Statistics of the relative residual ``(est - truth) / truth`` of matched pairs.

    Parameters
    ----------
    est, truth
        Estimated and true values (e.g. fluxes in nJy), shape (K,); ``truth``
        must be non-zero.
    bins_by, edges, quantity
        See `residual_stats` (e.g. ``bins_by=true_snr``).

    Raises
    ------
    ValueError
        On mismatched shapes or a zero true value.
    """
    est_array, truth_array = as_vector(est, "est"), as_vector(truth, "truth")
    check_same_shape({"est": est_array, "truth": truth_array})
    if np.any(truth_array == 0):
        raise ValueError("truth contains zeros; a relative residual needs non-zero true values.")
    return residual_stats((est_array - truth_array) / truth_array, bins_by, edges, quantity)


def ellipticity_from_shape(
    axis_ratio: ArrayLike, position_angle_rad: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """Ellipticity components of ellipses, ``|e| = (1 - q) / (1 + q)``.

    Parameters
    ----------
    axis_ratio
        Minor over major axis ``q`` in (0, 1], any shape.
    position_angle_rad
        Major-axis angle counter-clockwise from +x, radians, same shape.

    Returns
    -------
    e1, e2
        ``|e| cos 2 theta`` and ``|e| sin 2 theta``, the input shape.

    Raises
    ------
    ValueError
        On mismatched shapes or an axis ratio outside (0, 1].
    """
    q = as_float_array(axis_ratio, "axis_ratio")
    angle = as_float_array(position_angle_rad, "position_angle_rad")
    check_same_shape({"axis_ratio": q, "position_angle_rad": angle})
    if np.any(~((q > 0) & (q <= 1))):
        raise ValueError("axis_ratio must be in (0, 1] (minor over major axis).")
    modulus = (1.0 - q) / (1.0 + q)
    return modulus * np.cos(2.0 * angle), modulus * np.sin(2.0 * angle)


def cramer_rao_flux_sigma(
    unit_flux_image: np.ndarray | torch.Tensor, variance: np.ndarray | torch.Tensor | float
) -> np.ndarray | torch.Tensor:
    """Cramer-Rao bound on the flux error of a source of known profile and position.

    ``sigma_F = (sum_p P_p^2 / V_p)^(-1/2)`` for the unit-flux image ``P``
    (e.g. the effective PSF of a point source) on pixel variance ``V``.  For
    a Gaussian PSF of width sigma on a flat background of per-pixel noise
    ``sigma_sky`` this is ``sigma_sky sqrt(4 pi sigma^2)``.

    Parameters
    ----------
    unit_flux_image
        ``P`` in 1/pixel (sums to 1 over the full profile), shape (..., H, W).
    variance
        ``V`` in (flux units)^2 per pixel, broadcastable to ``P``; must be
        > 0 (``inf`` marks a pixel that carries no information).

    Returns
    -------
    sigma
        Flux error in the units of ``sqrt(V)``, shape (...); a torch tensor if
        ``unit_flux_image`` is one, else a numpy array (0-d for a single image).

    Raises
    ------
    ValueError
        If the image has fewer than two dimensions, the variance does not
        broadcast, or a variance is not > 0.
    """
    is_torch = isinstance(unit_flux_image, torch.Tensor)
    image = unit_flux_image if is_torch else torch.as_tensor(np.asarray(unit_flux_image, dtype=np.float64))
    if image.ndim < 2:
        raise ValueError(f"unit_flux_image must have shape (..., H, W); got {tuple(image.shape)}.")
    var = torch.as_tensor(variance, device=image.device)
    var = var.to(image.dtype if image.is_floating_point() else torch.float64)
    try:
        shape = torch.broadcast_shapes(image.shape, var.shape)
    except RuntimeError as error:
        raise ValueError(
            f"variance of shape {tuple(var.shape)} does not broadcast to the image shape "
            f"{tuple(image.shape)}."
        ) from error
    if shape != image.shape:
        raise ValueError(
            f"variance of shape {tuple(var.shape)} would enlarge the image shape {tuple(image.shape)}."
        )
    if not bool(torch.all(var > 0)):
        raise ValueError("variance must be > 0 everywhere (use inf for pixels without information).")
    information = (image.square() / var).sum(dim=(-2, -1))
    sigma = information.rsqrt()
    return sigma if is_torch else sigma.numpy()
