"""Science metrics: matching, detection, measurement, calibration and physical limits.

These are the project's single implementation of the metrics
(``doc/lsst.meas.extensions.bliss/metrics.rst``): one-to-one Hungarian matching on pixel distance
(a match needs distance <= 1 px, 2 px also reported), precision / recall / F1
overall and binned by SNR, magnitude and blendedness, the BTK definitions of
source SNR and blendedness, classification accuracy, robust residual
statistics, interval coverage, expected calibration error, PIT histograms
and the Cramer-Rao flux bound.

Positions are in pixels, ``x`` the column and ``y`` the row, pixel centres at
integer coordinates; fluxes in nJy; images in nJy and variances in nJy^2.
Everything returned is numpy (or plain Python) so that it serializes to JSON
(``to_dict``); NaN marks a value computed from no data.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_BLENDEDNESS_EDGES",
    "DEFAULT_MAG_EDGES",
    "DEFAULT_SNR_EDGES",
    "MAD_TO_SIGMA",
    "BinnedRate",
    "BinnedResidualStats",
    "ClassificationScores",
    "DetectionMetrics",
    "PitHistogram",
    "ReliabilityTable",
    "SourceMatch",
    "classification_accuracy",
    "cramer_rao_flux_sigma",
    "detection_metrics",
    "ellipticity_from_shape",
    "expected_calibration_error",
    "interval_coverage",
    "match_sources",
    "matched_attributes",
    "pit_histogram",
    "relative_residual_stats",
    "residual_stats",
    "robust_scatter",
    "robust_scatter_stderr",
    "source_snr_and_blendedness",
]

import dataclasses
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.optimize
import scipy.sparse
import scipy.sparse.csgraph
import scipy.spatial
import scipy.special
import torch

from ..catalog import FullCatalog
from ..rendering import (
    STAMP_HALF_SIZES,
    PointSpreadFunction,
    RenderSources,
    catalog_to_render_sources,
    render_stamps,
    stamp_half_size,
)
from ..survey import SurveyConditions

MAD_TO_SIGMA: float = 1.4826
"""Ratio of a Gaussian's standard deviation to its median absolute deviation."""

DEFAULT_SNR_EDGES: tuple[float, ...] = (0.0, 3.0, 5.0, 10.0, 20.0, 50.0, math.inf)
"""Default SNR bin edges of the binned detection metrics."""

DEFAULT_MAG_EDGES: tuple[float, ...] = tuple(float(m) for m in range(16, 29))
"""Default magnitude bin edges (1 mag wide, 16-28 AB: the prior's bright limit to beyond the depth)."""

DEFAULT_BLENDEDNESS_EDGES: tuple[float, ...] = (-math.inf, 0.01, 0.1, 0.25, 0.5, math.inf)
"""Default blendedness bin edges; the outer edges are infinite so that round-off
(an isolated source's blendedness can be -1e-8) never drops a source."""

ArrayLike = np.ndarray | torch.Tensor | Sequence[float]
PerImage = Sequence[ArrayLike]


def _as_float_array(values: ArrayLike, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a numeric array; {error}") from error


def _as_vector(values: ArrayLike, name: str) -> np.ndarray:
    array = _as_float_array(values, name)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional; got shape {array.shape}.")
    return array


def _check_same_shape(arrays: dict[str, np.ndarray]) -> None:
    shapes = {name: array.shape for name, array in arrays.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"Array shapes do not match: {listed}.")


def _check_edges(edges: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(edges, dtype=np.float64)
    if array.ndim != 1 or array.size < 2 or np.isnan(array).any() or not np.all(np.diff(array) > 0):
        raise ValueError(
            f"{name} must be at least two strictly increasing, non-NaN bin edges; got {edges!r}."
        )
    return array


def _bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value, bins ``[e_i, e_{i+1})`` with the last edge included; -1 outside or NaN."""
    index = np.searchsorted(edges, values, side="right") - 1
    index[values == edges[-1]] = edges.size - 2
    outside = (index < 0) | (index > edges.size - 2) | np.isnan(values)
    index[outside] = -1
    return index


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator > 0 else math.nan


def _json_list(values: np.ndarray) -> list[float]:
    return [float(v) for v in values]


# ---------------------------------------------------------------------------
# Matching


@dataclasses.dataclass(frozen=True)
class SourceMatch:
    """One-to-one matches between true and estimated sources of one image.

    Attributes
    ----------
    true_index, est_index
        Indices of matched pairs into the true and estimated lists, shape (K,),
        int64, sorted by ``true_index``.
    distance
        Pixel distance of each pair, shape (K,), all ``<= max_distance_pix``.
    n_true, n_est
        Number of true and estimated sources that were matched against.
    max_distance_pix
        The match radius in pixels.
    """

    true_index: np.ndarray
    est_index: np.ndarray
    distance: np.ndarray
    n_true: int
    n_est: int
    max_distance_pix: float

    @property
    def n_matched(self) -> int:
        return int(self.true_index.size)


def match_sources(
    true_x: ArrayLike,
    true_y: ArrayLike,
    est_x: ArrayLike,
    est_y: ArrayLike,
    max_distance_pix: float = 1.0,
) -> SourceMatch:
    """Match true and estimated sources one-to-one by pixel distance.

    The Hungarian assignment (`scipy.optimize.linear_sum_assignment`) is run
    on the distances, with every pair farther than ``max_distance_pix`` given
    a cost larger than any set of valid pairs can sum to: the assignment then
    first maximizes the number of pairs within the radius and only then
    minimizes their total distance, so a far pair never blocks a close one.
    Pairs beyond the radius are never matches.  The problem separates into
    the connected groups of sources linked by pairs within the radius, which
    are solved one at a time (exact, and fast on crowded full frames).

    Parameters
    ----------
    true_x, true_y
        True positions in pixels, shape (N,).
    est_x, est_y
        Estimated positions in pixels, shape (M,).
    max_distance_pix
        Largest distance of a match, pixels (inclusive).

    Returns
    -------
    match
        The matched pairs.

    Raises
    ------
    ValueError
        If shapes differ, positions are not finite, or the radius is not > 0.
    """
    if not (math.isfinite(max_distance_pix) and max_distance_pix > 0):
        raise ValueError(f"max_distance_pix={max_distance_pix!r} must be finite and > 0.")
    tx, ty = _as_vector(true_x, "true_x"), _as_vector(true_y, "true_y")
    ex, ey = _as_vector(est_x, "est_x"), _as_vector(est_y, "est_y")
    _check_same_shape({"true_x": tx, "true_y": ty})
    _check_same_shape({"est_x": ex, "est_y": ey})
    for name, array in (("true_x", tx), ("true_y", ty), ("est_x", ex), ("est_y", ey)):
        if not np.isfinite(array).all():
            raise ValueError(f"{name} contains non-finite positions; remove padding entries first.")
    n_true, n_est = tx.size, ex.size
    empty = SourceMatch(
        np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), n_true, n_est, float(max_distance_pix)
    )
    if n_true == 0 or n_est == 0:
        return empty

    true_xy, est_xy = np.stack([tx, ty], axis=1), np.stack([ex, ey], axis=1)
    # The tree query radius is padded a hair so that pairs exactly on the radius
    # survive its pruning; the exact distance test below decides.
    pairs = scipy.spatial.cKDTree(true_xy).sparse_distance_matrix(
        scipy.spatial.cKDTree(est_xy), max_distance_pix * (1.0 + 1e-9), output_type="ndarray"
    )
    edge_true = pairs["i"].astype(np.int64)
    edge_est = pairs["j"].astype(np.int64)
    edge_distance = np.hypot(tx[edge_true] - ex[edge_est], ty[edge_true] - ey[edge_est])
    keep = edge_distance <= max_distance_pix
    edge_true, edge_est, edge_distance = edge_true[keep], edge_est[keep], edge_distance[keep]
    if edge_true.size == 0:
        return empty

    # Connected groups of the bipartite graph (true nodes 0..N-1, estimates N..N+M-1).
    graph = scipy.sparse.coo_matrix(
        (np.ones(edge_true.size), (edge_true, n_true + edge_est)), shape=(n_true + n_est,) * 2
    )
    _, component = scipy.sparse.csgraph.connected_components(graph, directed=False)
    edge_component = component[edge_true]
    order = np.argsort(edge_component, kind="stable")
    boundaries = np.flatnonzero(np.diff(edge_component[order])) + 1

    matched_true: list[np.ndarray] = []
    matched_est: list[np.ndarray] = []
    matched_distance: list[np.ndarray] = []
    for edges in np.split(order, boundaries):
        if edges.size == 1:
            matched_true.append(edge_true[edges])
            matched_est.append(edge_est[edges])
            matched_distance.append(edge_distance[edges])
            continue
        rows, row_of = np.unique(edge_true[edges], return_inverse=True)
        cols, col_of = np.unique(edge_est[edges], return_inverse=True)
        # Any assignment using a non-pair costs more than all valid pairs together.
        forbidden = (min(rows.size, cols.size) + 1) * max_distance_pix + 1.0
        cost = np.full((rows.size, cols.size), forbidden)
        is_pair = np.zeros((rows.size, cols.size), dtype=bool)
        cost[row_of, col_of] = edge_distance[edges]
        is_pair[row_of, col_of] = True
        assigned_rows, assigned_cols = scipy.optimize.linear_sum_assignment(cost)
        valid = is_pair[assigned_rows, assigned_cols]
        matched_true.append(rows[assigned_rows[valid]])
        matched_est.append(cols[assigned_cols[valid]])
        matched_distance.append(cost[assigned_rows[valid], assigned_cols[valid]])

    true_index = np.concatenate(matched_true)
    by_true = np.argsort(true_index, kind="stable")
    return SourceMatch(
        true_index[by_true],
        np.concatenate(matched_est)[by_true],
        np.concatenate(matched_distance)[by_true],
        n_true,
        n_est,
        float(max_distance_pix),
    )


def matched_attributes(
    per_image: Mapping[str, Sequence[np.ndarray]],
    method: str,
    true_names: Iterable[str],
    max_distance_pix: float = 1.0,
) -> dict[str, np.ndarray]:
    """Attributes of one method's one-to-one matches (`match_sources`), concatenated over images.

    Parameters
    ----------
    per_image
        Per-image arrays: ``true_x``, ``true_y`` and ``true_<name>`` for each
        of ``true_names``, shape (N_i,); ``<method>_x``, ``<method>_y`` and
        any other ``<method>_<name>`` columns, shape (M_i,).
    method
        Prefix of the estimated columns, e.g. ``"bliss"``.
    true_names
        True attributes to carry (without the ``true_`` prefix).
    max_distance_pix
        Match radius in pixels.

    Returns
    -------
    pairs
        ``true_<name>`` for each of ``true_names`` and ``est_<name>`` for every
        ``<method>_<name>`` column (positions included), shape (P,) for the P
        matched pairs of all images in image order.
    """
    true_names = tuple(true_names)
    prefix = f"{method}_"
    est_names = [name.removeprefix(prefix) for name in per_image if name.startswith(prefix)]
    columns: dict[str, list[np.ndarray]] = {f"true_{name}": [] for name in true_names}
    columns.update({f"est_{name}": [] for name in est_names})
    for index in range(len(per_image["true_x"])):
        match = match_sources(
            per_image["true_x"][index],
            per_image["true_y"][index],
            per_image[f"{prefix}x"][index],
            per_image[f"{prefix}y"][index],
            max_distance_pix,
        )
        for name in true_names:
            columns[f"true_{name}"].append(np.asarray(per_image[f"true_{name}"][index])[match.true_index])
        for name in est_names:
            columns[f"est_{name}"].append(np.asarray(per_image[f"{prefix}{name}"][index])[match.est_index])
    return {name: np.concatenate(values) if values else np.zeros(0) for name, values in columns.items()}


# ---------------------------------------------------------------------------
# Source SNR and blendedness (BTK definitions)


def source_snr_and_blendedness(
    catalog: FullCatalog,
    psf: PointSpreadFunction | None,
    conditions: SurveyConditions,
    noiseless: torch.Tensor | None = None,
    max_stamp_half_size: int = 64,
    max_chunk_bytes: int = 256 * 2**20,
) -> tuple[np.ndarray, np.ndarray]:
    """SNR and blendedness of every true source of a catalog.

    Each source is rendered alone on its stamp (as the simulator renders
    it); sums run over the stamp pixels inside the image:

    * ``SNR = sqrt(sum_p I_p^2 / Var_p)`` with ``Var_p = (I_p + B) / g +
      (read_noise / g)^2`` in nJy^2, ``I`` the source's noiseless image (nJy),
      ``B`` the sky per pixel (nJy) and ``g`` the electrons per nJy: the BTK
      SNR ``sqrt(sum I^2 / (I + B))`` in electrons, which is also the
      Cramer-Rao flux SNR.
    * ``blendedness = 1 - sum(I^2) / sum(I * I_all)``, ``I_all`` the
      noiseless image of all sources: 0 for an isolated source, towards 1 for
      one buried in a brighter neighbour.

    Parameters
    ----------
    catalog
        True sources, ``B`` images of ``H x W`` pixels, up to ``M`` each.
    psf
        PSF batch with one PSF for all images or one per image (image ``b``
        uses PSF ``b``); ``None`` uses ``conditions.psf()``.
    conditions
        Pixel scale, sky level, calibration and read noise.
    noiseless
        ``I_all`` in nJy, shape (B, H, W), e.g. ``SimulatedBatch.noiseless``
        (which also holds the light of sources outside the image); ``None``
        renders the catalog.
    max_stamp_half_size
        Largest stamp half-size in pixels; use the simulator's
        ``SimulatorConfig.max_stamp_half_size`` to reproduce its images.
    max_chunk_bytes
        Approximate memory bound of one rendering chunk.

    Returns
    -------
    snr, blendedness
        Shape (B, M) each, float64; NaN for padding entries (and blendedness
        NaN for a source with no light in the image).

    Raises
    ------
    ValueError
        If the PSF batch or ``noiseless`` does not fit the catalog.
    """
    batch, height, width = catalog.batch_size, catalog.height, catalog.width
    if psf is None:
        psf = conditions.psf()
    if psf.n_psf not in (1, batch):
        raise ValueError(f"psf has {psf.n_psf} PSFs; give one for all images or one per image ({batch}).")
    device = catalog.x.device
    if noiseless is not None:
        if tuple(noiseless.shape) != (batch, height, width):
            raise ValueError(
                f"noiseless has shape {tuple(noiseless.shape)}; expected (B, H, W) = "
                f"{(batch, height, width)} to match the catalog."
            )
        all_sources = noiseless.to(device=device, dtype=torch.float64).contiguous()
    else:
        all_sources = torch.zeros(batch, height, width, device=device, dtype=torch.float64)

    snr = np.full((batch, catalog.max_sources), np.nan)
    blendedness = np.full((batch, catalog.max_sources), np.nan)
    sources = catalog_to_render_sources(catalog, conditions.pixel_scale_arcsec)
    if len(sources) == 0:
        return snr, blendedness
    if psf.n_psf == 1:
        sources.psf_index = torch.zeros_like(sources.psf_index)
    half_sizes = stamp_half_size(sources, psf, min(max_stamp_half_size, STAMP_HALF_SIZES[-1]))

    def chunks() -> Iterator[tuple[torch.Tensor, RenderSources, torch.Tensor]]:
        """Source indices, sources and float32 stamps, by stamp size, in memory-bounded chunks."""
        for half_size in torch.unique(half_sizes).tolist():
            group = (half_sizes == half_size).nonzero().squeeze(1)
            fft_side = 2 * half_size + 2
            # About eight complex64 half-spectra per source live at once while rendering.
            step = max(1, max_chunk_bytes // (64 * fft_side * (fft_side // 2 + 1)))
            for start in range(0, group.numel(), step):
                index = group[start : start + step]
                part = sources.select(index)
                yield index, part, render_stamps(part, psf, half_size)

    def stamp_pixels(part: RenderSources, half_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat image index of each stamp pixel (0 outside the image) and whether it is inside."""
        offsets = torch.arange(-half_size, half_size + 1, device=device)
        rows = (torch.round(part.y).long()[:, None] + offsets)[:, :, None]
        cols = (torch.round(part.x).long()[:, None] + offsets)[:, None, :]
        inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
        flat = (part.image_index[:, None, None] * height + rows) * width + cols
        return torch.where(inside, flat, torch.zeros_like(flat)), inside

    if noiseless is None:
        # I_all needs every stamp before any cross sum; keep the (float32) stamps
        # rather than render them twice.
        stored = list(chunks())
        for _, part, stamps in stored:
            flat, inside = stamp_pixels(part, stamps.shape[-1] // 2)
            all_sources.view(-1).index_add_(0, flat[inside], stamps[inside].to(torch.float64))
        rendered: Iterable[tuple[torch.Tensor, RenderSources, torch.Tensor]] = stored
    else:
        rendered = chunks()

    gain = conditions.njy_to_electrons
    read_variance = (conditions.read_noise_e / gain) ** 2
    snr_flat = torch.empty(len(sources), device=device, dtype=torch.float64)
    blend_flat = torch.empty(len(sources), device=device, dtype=torch.float64)
    for index, part, stamps in rendered:
        flat, inside = stamp_pixels(part, stamps.shape[-1] // 2)
        # Only the pixels inside the image are observed.
        own = stamps.to(torch.float64) * inside
        # Fourier rendering rings slightly below zero; the Poisson term cannot.
        variance = (own.clamp(min=0) + conditions.sky_level_njy) / gain + read_variance
        own_power = own.square().sum(dim=(1, 2))
        snr_flat[index] = (own.square() / variance).sum(dim=(1, 2)).sqrt()
        overlap = (own * all_sources.view(-1)[flat]).sum(dim=(1, 2))
        blend_flat[index] = torch.where(
            overlap > 0, 1.0 - own_power / overlap, torch.full_like(overlap, math.nan)
        )
    valid = catalog.is_valid.cpu().numpy()
    snr[valid] = snr_flat.cpu().numpy()
    blendedness[valid] = blend_flat.cpu().numpy()
    return snr, blendedness


# ---------------------------------------------------------------------------
# Detection metrics


@dataclasses.dataclass(frozen=True)
class BinnedRate:
    """A rate (recall, precision or F1) in bins of some quantity.

    Attributes
    ----------
    quantity
        What the bins are of (e.g. ``"true_snr"``).
    edges
        Bin edges, length ``n_bins + 1``; bins are ``[e_i, e_{i+1})``, the last
        one closed.
    n_true, n_est
        True and estimated sources in each bin (for recall, only ``n_true``
        is meaningful; for precision only ``n_est``), length ``n_bins``.
    n_matched
        Matched sources in each bin, length ``n_bins``.
    value
        The rate in each bin, NaN where its denominator is 0, length ``n_bins``.
    """

    quantity: str
    edges: list[float]
    n_true: list[int]
    n_est: list[int]
    n_matched: list[int]
    value: list[float]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class DetectionMetrics:
    """Detection scores aggregated over images.

    Attributes
    ----------
    match_radius_pix
        Radius of the primary match (pixels); the scalar scores and all binned
        scores use it.
    n_true, n_est, n_matched
        Totals at the primary radius.
    precision, recall, f1
        At the primary radius (NaN where undefined).
    by_radius
        ``{str(radius): {"n_matched", "precision", "recall", "f1"}}`` for
        every radius asked for.
    recall_by_true_snr, recall_by_true_mag, precision_by_est_snr, precision_by_est_mag, f1_by_blendedness
        Binned scores, `None` where the quantity was not given.
    """

    match_radius_pix: float
    n_true: int
    n_est: int
    n_matched: int
    precision: float
    recall: float
    f1: float
    by_radius: dict[str, dict[str, float]]
    recall_by_true_snr: BinnedRate | None = None
    recall_by_true_mag: BinnedRate | None = None
    precision_by_est_snr: BinnedRate | None = None
    precision_by_est_mag: BinnedRate | None = None
    f1_by_blendedness: BinnedRate | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts, lists, ints and floats (NaN where empty)."""
        return dataclasses.asdict(self)


def _scores(n_true: int, n_est: int, n_matched: int) -> dict[str, float]:
    return {
        "n_matched": int(n_matched),
        "precision": _ratio(n_matched, n_est),
        "recall": _ratio(n_matched, n_true),
        # The harmonic mean of precision and recall, written so that it is 0,
        # not NaN, when nothing matched but both lists are non-empty.
        "f1": _ratio(2 * n_matched, n_true + n_est),
    }


def _per_image(values: PerImage, name: str, lengths: list[int] | None = None) -> list[np.ndarray]:
    """Per-image 1-d float arrays; ``lengths`` (if given) is the number of entries each must have."""
    if isinstance(values, np.ndarray | torch.Tensor) and values.ndim == 1:
        values = [values]
    arrays = [_as_vector(v, f"{name}[{i}]") for i, v in enumerate(values)]
    if lengths is not None:
        if len(arrays) != len(lengths):
            raise ValueError(f"{name} has {len(arrays)} images; the positions have {len(lengths)}.")
        for i, (array, length) in enumerate(zip(arrays, lengths, strict=True)):
            if array.size != length:
                raise ValueError(f"{name}[{i}] has {array.size} entries; the positions have {length}.")
    return arrays


def _bin_counts(values: np.ndarray, edges: np.ndarray, select: np.ndarray | None = None) -> np.ndarray:
    """Number of ``values`` (optionally only where ``select``) in each bin, int64."""
    index = _bin_index(values, edges)
    keep = index >= 0 if select is None else (index >= 0) & select
    return np.bincount(index[keep], minlength=edges.size - 1)


def _binned_rate(
    quantity: str, edges: np.ndarray, n_true: np.ndarray, n_est: np.ndarray, n_matched: np.ndarray, kind: str
) -> BinnedRate:
    if kind == "recall":
        value = [_ratio(m, t) for m, t in zip(n_matched, n_true, strict=True)]
    elif kind == "precision":
        value = [_ratio(m, e) for m, e in zip(n_matched, n_est, strict=True)]
    else:
        value = [_ratio(2 * m, t + e) for m, t, e in zip(n_matched, n_true, n_est, strict=True)]
    return BinnedRate(
        quantity,
        _json_list(edges),
        [int(c) for c in n_true],
        [int(c) for c in n_est],
        [int(c) for c in n_matched],
        value,
    )


def detection_metrics(
    true_x: PerImage,
    true_y: PerImage,
    est_x: PerImage,
    est_y: PerImage,
    true_snr: PerImage | None = None,
    true_mag: PerImage | None = None,
    true_blendedness: PerImage | None = None,
    est_snr: PerImage | None = None,
    est_mag: PerImage | None = None,
    match_radii_pix: Sequence[float] = (1.0, 2.0),
    snr_edges: Sequence[float] = DEFAULT_SNR_EDGES,
    mag_edges: Sequence[float] = DEFAULT_MAG_EDGES,
    blendedness_edges: Sequence[float] = DEFAULT_BLENDEDNESS_EDGES,
) -> DetectionMetrics:
    """Precision, recall and F1 over a set of images, overall and binned.

    Each image is matched on its own with `match_sources`; counts are summed
    over images.  Estimates should already be the detections (e.g. detection
    probability > 0.5, or one posterior sample).

    * Recall is binned by the true SNR and magnitude of the true sources,
      precision by the estimated SNR and magnitude of the estimates.
    * F1 by blendedness: a true source falls in the bin of its blendedness;
      an estimate in the bin of its matched true source or, if unmatched, of
      the nearest true source of its image (the source it most plausibly came
      from; estimates in images without true sources fall in no bin).  Then
      ``F1 = 2 matched / (n_true + n_est)`` in each bin.

    Parameters
    ----------
    true_x, true_y, est_x, est_y
        Per-image positions in pixels: a sequence of ``B`` arrays of shape
        (N_b,) (true) or (M_b,) (estimated); one 1-d array means one image.
        Entries with a non-finite position are padding and are ignored, so
        NaN-padded (B, M) arrays can be passed as they are.
    true_snr, true_mag, true_blendedness
        Per-image values aligned with the true positions, or `None` to skip
        the corresponding binned scores.
    est_snr, est_mag
        Per-image values aligned with the estimated positions, or `None`.
    match_radii_pix
        Match radii in pixels; the first is the primary one (used for the
        binned scores), all get overall scores in ``by_radius``.
    snr_edges, mag_edges, blendedness_edges
        Bin edges (strictly increasing; may be infinite).

    Returns
    -------
    metrics
        The scores; ``metrics.to_dict()`` is JSON-friendly.

    Raises
    ------
    ValueError
        If the per-image lists have different numbers of images or entries,
        or the radii or edges are invalid.
    """
    # Duplicates would be counted twice; keep the first occurrence of each radius.
    radii = list(dict.fromkeys(float(r) for r in match_radii_pix))
    if not radii or not all(math.isfinite(r) and r > 0 for r in radii):
        raise ValueError(f"match_radii_pix={match_radii_pix!r} must be one or more finite radii > 0.")
    snr_edge_array = _check_edges(snr_edges, "snr_edges")
    mag_edge_array = _check_edges(mag_edges, "mag_edges")
    blend_edge_array = _check_edges(blendedness_edges, "blendedness_edges")

    tx, ex = _per_image(true_x, "true_x"), _per_image(est_x, "est_x")
    if len(tx) != len(ex):
        raise ValueError(f"true_x has {len(tx)} images but est_x has {len(ex)}.")
    true_lengths, est_lengths = [a.size for a in tx], [a.size for a in ex]
    ty, ey = _per_image(true_y, "true_y", true_lengths), _per_image(est_y, "est_y", est_lengths)

    def optional(values: PerImage | None, name: str, lengths: list[int]) -> list[np.ndarray] | None:
        return None if values is None else _per_image(values, name, lengths)

    t_snr = optional(true_snr, "true_snr", true_lengths)
    t_mag = optional(true_mag, "true_mag", true_lengths)
    t_blend = optional(true_blendedness, "true_blendedness", true_lengths)
    e_snr = optional(est_snr, "est_snr", est_lengths)
    e_mag = optional(est_mag, "est_mag", est_lengths)

    n_matched_at = dict.fromkeys(radii, 0)
    keep_true, keep_est = [], []
    true_matched, est_matched, est_blendedness = [], [], []
    for b in range(len(tx)):
        keep_true.append(np.isfinite(tx[b]) & np.isfinite(ty[b]))
        keep_est.append(np.isfinite(ex[b]) & np.isfinite(ey[b]))
        bx, by = tx[b][keep_true[b]], ty[b][keep_true[b]]
        cx, cy = ex[b][keep_est[b]], ey[b][keep_est[b]]
        primary = match_sources(bx, by, cx, cy, radii[0])
        n_matched_at[radii[0]] += primary.n_matched
        for radius in radii[1:]:
            n_matched_at[radius] += match_sources(bx, by, cx, cy, radius).n_matched
        true_matched.append(np.isin(np.arange(bx.size), primary.true_index))
        est_matched.append(np.isin(np.arange(cx.size), primary.est_index))
        if t_blend is not None:
            # An estimate takes the blendedness of its match, else of the nearest true source.
            blend = t_blend[b][keep_true[b]]
            est_blend = np.full(cx.size, np.nan)
            if bx.size > 0 and cx.size > 0:
                _, nearest = scipy.spatial.cKDTree(np.stack([bx, by], 1)).query(np.stack([cx, cy], 1))
                est_blend = blend[nearest]
                est_blend[primary.est_index] = blend[primary.true_index]
            est_blendedness.append(est_blend)

    def concatenate(per_image: list[np.ndarray], keep: list[np.ndarray] | None = None) -> np.ndarray:
        if keep is not None:
            per_image = [v[k] for v, k in zip(per_image, keep, strict=True)]
        return np.concatenate([np.zeros(0)] + per_image)

    is_true_matched = concatenate(true_matched).astype(bool)
    is_est_matched = concatenate(est_matched).astype(bool)
    n_true_total, n_est_total = int(is_true_matched.size), int(is_est_matched.size)
    by_radius = {str(r): _scores(n_true_total, n_est_total, n_matched_at[r]) for r in radii}
    primary_scores = by_radius[str(radii[0])]

    def recall_by(values: list[np.ndarray] | None, name: str, edges: np.ndarray) -> BinnedRate | None:
        if values is None:
            return None
        gathered = concatenate(values, keep_true)
        n_true = _bin_counts(gathered, edges)
        n_matched = _bin_counts(gathered, edges, is_true_matched)
        return _binned_rate(name, edges, n_true, np.zeros_like(n_true), n_matched, "recall")

    def precision_by(values: list[np.ndarray] | None, name: str, edges: np.ndarray) -> BinnedRate | None:
        if values is None:
            return None
        gathered = concatenate(values, keep_est)
        n_est = _bin_counts(gathered, edges)
        n_matched = _bin_counts(gathered, edges, is_est_matched)
        return _binned_rate(name, edges, np.zeros_like(n_est), n_est, n_matched, "precision")

    f1_by_blendedness = None
    if t_blend is not None:
        true_blend = concatenate(t_blend, keep_true)
        f1_by_blendedness = _binned_rate(
            "blendedness",
            blend_edge_array,
            _bin_counts(true_blend, blend_edge_array),
            _bin_counts(concatenate(est_blendedness), blend_edge_array),
            _bin_counts(true_blend, blend_edge_array, is_true_matched),
            "f1",
        )
    return DetectionMetrics(
        match_radius_pix=radii[0],
        n_true=n_true_total,
        n_est=n_est_total,
        n_matched=int(primary_scores["n_matched"]),
        precision=primary_scores["precision"],
        recall=primary_scores["recall"],
        f1=primary_scores["f1"],
        by_radius=by_radius,
        recall_by_true_snr=recall_by(t_snr, "true_snr", snr_edge_array),
        recall_by_true_mag=recall_by(t_mag, "true_mag", mag_edge_array),
        precision_by_est_snr=precision_by(e_snr, "est_snr", snr_edge_array),
        precision_by_est_mag=precision_by(e_mag, "est_mag", mag_edge_array),
        f1_by_blendedness=f1_by_blendedness,
    )


# ---------------------------------------------------------------------------
# Matched-pair statistics


@dataclasses.dataclass(frozen=True)
class ClassificationScores:
    """Star/galaxy classification accuracy on matched pairs.

    Attributes
    ----------
    accuracy, galaxy_accuracy, star_accuracy
        Fraction classified correctly overall, among true galaxies and among
        true stars (NaN where there are none).
    n, n_galaxy, n_star
        Number of pairs used in each.
    """

    accuracy: float
    galaxy_accuracy: float
    star_accuracy: float
    n: int
    n_galaxy: int
    n_star: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def classification_accuracy(
    true_is_galaxy: ArrayLike,
    est_galaxy_prob: ArrayLike,
    snr: ArrayLike | None = None,
    min_snr: float | None = None,
    threshold: float = 0.5,
) -> ClassificationScores:
    """Classification accuracy of matched pairs, overall and per true class.

    Parameters
    ----------
    true_is_galaxy
        True class of each pair (bool or 0/1), shape (K,).
    est_galaxy_prob
        Estimated galaxy probability (or 0/1 class), shape (K,); a pair is
        called a galaxy where it exceeds ``threshold``.
    snr
        SNR of each pair (e.g. the true SNR), shape (K,); needed with ``min_snr``.
    min_snr
        Use only pairs with ``snr >= min_snr``.
    threshold
        Probability above which a source is called a galaxy.

    Raises
    ------
    ValueError
        On mismatched shapes, probabilities outside [0, 1], or ``min_snr``
        without ``snr``.
    """
    truth = _as_vector(true_is_galaxy, "true_is_galaxy")
    prob = _as_vector(est_galaxy_prob, "est_galaxy_prob")
    arrays = {"true_is_galaxy": truth, "est_galaxy_prob": prob}
    if snr is not None:
        arrays["snr"] = _as_vector(snr, "snr")
    _check_same_shape(arrays)
    if np.any((prob < 0) | (prob > 1) | np.isnan(prob)):
        raise ValueError("est_galaxy_prob must be probabilities in [0, 1].")
    use = np.ones(truth.size, dtype=bool)
    if min_snr is not None:
        if snr is None:
            raise ValueError("min_snr needs snr, the SNR of each pair.")
        use = arrays["snr"] >= min_snr
    is_galaxy = truth[use] > 0.5
    correct = (prob[use] > threshold) == is_galaxy
    return ClassificationScores(
        accuracy=_ratio(correct.sum(), correct.size),
        galaxy_accuracy=_ratio(correct[is_galaxy].sum(), is_galaxy.sum()),
        star_accuracy=_ratio(correct[~is_galaxy].sum(), (~is_galaxy).sum()),
        n=int(correct.size),
        n_galaxy=int(is_galaxy.sum()),
        n_star=int((~is_galaxy).sum()),
    )


def _finite_values(values: ArrayLike) -> np.ndarray:
    """The finite values of ``values`` (any shape), flattened."""
    array = _as_float_array(values, "values").ravel()
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
    values = _as_vector(residual, "residual")
    finite = np.isfinite(values)
    overall = values[finite]
    median = float(np.median(overall)) if overall.size else math.nan
    if bins_by is None:
        return BinnedResidualStats(median, robust_scatter(overall), int(overall.size), None, [], [], [], [])
    by = _as_vector(bins_by, "bins_by")
    _check_same_shape({"residual": values, "bins_by": by})
    edge_array = _check_edges(edges, "edges")
    index = _bin_index(by, edge_array)
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
        _json_list(edge_array),
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
    est_array, truth_array = _as_vector(est, "est"), _as_vector(truth, "truth")
    _check_same_shape({"est": est_array, "truth": truth_array})
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
    q = _as_float_array(axis_ratio, "axis_ratio")
    angle = _as_float_array(position_angle_rad, "position_angle_rad")
    _check_same_shape({"axis_ratio": q, "position_angle_rad": angle})
    if np.any(~((q > 0) & (q <= 1))):
        raise ValueError("axis_ratio must be in (0, 1] (minor over major axis).")
    modulus = (1.0 - q) / (1.0 + q)
    return modulus * np.cos(2.0 * angle), modulus * np.sin(2.0 * angle)


# ---------------------------------------------------------------------------
# Calibration


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
    t = _as_float_array(truth, "truth")
    lo, hi = _as_float_array(lower, "lower"), _as_float_array(upper, "upper")
    _check_same_shape({"truth": t, "lower": lo, "upper": hi})
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
    p = _as_vector(prob, "prob")
    y = _as_vector(outcome, "outcome")
    _check_same_shape({"prob": p, "outcome": y})
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
        _json_list((np.arange(n_bins) + 0.5) / n_bins),
        _json_list(mean_prob),
        _json_list(frequency),
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
    values = _as_float_array(cdf_at_truth, "cdf_at_truth").ravel()
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
        _json_list(np.linspace(0.0, 1.0, n_bins + 1)),
        [int(c) for c in counts],
        _json_list(density),
        chi2,
        p_value,
    )


# ---------------------------------------------------------------------------
# Physical limit


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
