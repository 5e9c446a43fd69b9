"""Detection scores: precision / recall / F1 overall and binned by SNR, magnitude and
blendedness (with their default bin edges), the BTK definitions of source SNR and blendedness,
and star/galaxy classification accuracy of matched pairs.

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
    "BinnedRate",
    "ClassificationScores",
    "DetectionMetrics",
    "IDEAL_CLASSIFICATION_SNR_EDGES",
    "classification_accuracy",
    "detection_metrics",
    "ideal_classification_accuracy",
    "point_source_residual_fraction",
    "source_snr_and_blendedness",
]

import dataclasses
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
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
from ._arrays import ArrayLike, as_vector, bin_index, check_edges, check_same_shape, json_list, ratio
from ._matching import match_sources

DEFAULT_SNR_EDGES: tuple[float, ...] = (0.0, 3.0, 5.0, 10.0, 20.0, 50.0, math.inf)
"""Default SNR bin edges of the binned detection metrics."""

DEFAULT_MAG_EDGES: tuple[float, ...] = tuple(float(m) for m in range(16, 29))
"""Default magnitude bin edges (1 mag wide, 16-28 AB: the prior's bright limit to beyond the depth)."""

DEFAULT_BLENDEDNESS_EDGES: tuple[float, ...] = (-math.inf, 0.01, 0.1, 0.25, 0.5, math.inf)
"""Default blendedness bin edges; the outer edges are infinite so that round-off
(an isolated source's blendedness can be -1e-8) never drops a source."""

PerImage = Sequence[ArrayLike]


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
        "precision": ratio(n_matched, n_est),
        "recall": ratio(n_matched, n_true),
        # The harmonic mean of precision and recall, written so that it is 0,
        # not NaN, when nothing matched but both lists are non-empty.
        "f1": ratio(2 * n_matched, n_true + n_est),
    }


def _per_image(values: PerImage, name: str, lengths: list[int] | None = None) -> list[np.ndarray]:
    """Per-image 1-d float arrays; ``lengths`` (if given) is the number of entries each must have."""
    if isinstance(values, np.ndarray | torch.Tensor) and values.ndim == 1:
        values = [values]
    arrays = [as_vector(v, f"{name}[{i}]") for i, v in enumerate(values)]
    if lengths is not None:
        if len(arrays) != len(lengths):
            raise ValueError(f"{name} has {len(arrays)} images; the positions have {len(lengths)}.")
        for i, (array, length) in enumerate(zip(arrays, lengths, strict=True)):
            if array.size != length:
                raise ValueError(f"{name}[{i}] has {array.size} entries; the positions have {length}.")
    return arrays


def _bin_counts(values: np.ndarray, edges: np.ndarray, select: np.ndarray | None = None) -> np.ndarray:
    """Number of ``values`` (optionally only where ``select``) in each bin, int64."""
    index = bin_index(values, edges)
    keep = index >= 0 if select is None else (index >= 0) & select
    return np.bincount(index[keep], minlength=edges.size - 1)


def _binned_rate(
    quantity: str, edges: np.ndarray, n_true: np.ndarray, n_est: np.ndarray, n_matched: np.ndarray, kind: str
) -> BinnedRate:
    if kind == "recall":
        value = [ratio(m, t) for m, t in zip(n_matched, n_true, strict=True)]
    elif kind == "precision":
        value = [ratio(m, e) for m, e in zip(n_matched, n_est, strict=True)]
    else:
        value = [ratio(2 * m, t + e) for m, t, e in zip(n_matched, n_true, n_est, strict=True)]
    return BinnedRate(
        quantity,
        json_list(edges),
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
    snr_edge_array = check_edges(snr_edges, "snr_edges")
    mag_edge_array = check_edges(mag_edges, "mag_edges")
    blend_edge_array = check_edges(blendedness_edges, "blendedness_edges")

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
    truth = as_vector(true_is_galaxy, "true_is_galaxy")
    prob = as_vector(est_galaxy_prob, "est_galaxy_prob")
    arrays = {"true_is_galaxy": truth, "est_galaxy_prob": prob}
    if snr is not None:
        arrays["snr"] = as_vector(snr, "snr")
    check_same_shape(arrays)
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
        accuracy=ratio(correct.sum(), correct.size),
        galaxy_accuracy=ratio(correct[is_galaxy].sum(), is_galaxy.sum()),
        star_accuracy=ratio(correct[~is_galaxy].sum(), (~is_galaxy).sum()),
        n=int(correct.size),
        n_galaxy=int(is_galaxy.sum()),
        n_star=int((~is_galaxy).sum()),
    )


IDEAL_CLASSIFICATION_SNR_EDGES: tuple[float, ...] = (10.0, 12.5, 15.0, 20.0, 30.0, 50.0, 100.0, math.inf)
"""SNR bins of `ideal_classification_accuracy`: narrow at low SNR, where the accuracy changes fastest."""


def point_source_residual_fraction(
    sources: RenderSources, psf: PointSpreadFunction, half_size: int = 15
) -> np.ndarray:
    """How far each source's image is from every point source: ``||G - a S|| / ||G||``.

    ``G`` is the source's noiseless image, ``S`` a point source at the same position under the same
    PSF and ``a`` the least-squares flux of that point source. In sky-limited noise of per-pixel
    standard deviation ``sigma`` the two hypotheses "this galaxy" and "a point source" are
    ``d = SNR * fraction`` noise units apart (``SNR = ||G|| / sigma``), which sets how well any
    classifier can tell them apart (see `ideal_classification_accuracy`).

    Parameters
    ----------
    sources
        ``n`` sources (pixel units); stars give zero.
    psf
        PSF batch indexed by ``sources.psf_index``.
    half_size
        Half-size of the stamps compared, pixels; it must hold the sources' light (the default, 3"
        at LSST's pixel scale, holds galaxies of half-light radius below about 0.5").

    Returns
    -------
    fraction
        Shape (n,), in [0, 1].
    """
    if len(sources) == 0:
        return np.zeros(0)
    point_sources = dataclasses.replace(sources, is_galaxy=torch.zeros_like(sources.is_galaxy))
    images = render_stamps(sources, psf, half_size, dtype=torch.float64).flatten(1)
    points = render_stamps(point_sources, psf, half_size, dtype=torch.float64).flatten(1)
    point_flux = (images * points).sum(1) / (points * points).sum(1)
    residual = images - point_flux[:, None] * points
    fraction = residual.norm(dim=1) / images.norm(dim=1).clamp(min=1e-300)
    return torch.where(sources.is_galaxy.bool(), fraction, 0.0).numpy()


def ideal_classification_accuracy(
    true_is_galaxy: ArrayLike,
    snr: ArrayLike,
    residual_fraction: ArrayLike,
    min_snr: float = 10.0,
    snr_edges: Sequence[float] = IDEAL_CLASSIFICATION_SNR_EDGES,
) -> float:
    """Star/galaxy accuracy that an ideal observer could reach on a sample: a ceiling for any classifier.

    Within each SNR bin, each galaxy is taken as a two-hypothesis problem against a point source of
    the fitted flux, with the bin's fractions of stars and galaxies as prior probabilities. The
    observer knows the galaxy's exact profile and position; only its class is unknown. With the
    hypotheses ``d = snr * residual_fraction`` noise units apart (`point_source_residual_fraction`)
    and ``lambda = ln(p_star / p_galaxy)``, the Bayes decision's accuracy is
    ``1 - p_galaxy Phi(lambda / d - d / 2) - p_star Phi(-lambda / d - d / 2)``; the bin's accuracy
    is its mean over the bin's galaxies (every star is correct in a bin without galaxies), and the
    result the mean over bins weighted by their sources. A classifier that does not know the
    galaxies' profiles can only do worse, so a target above this figure is unreachable on the
    sample. It assumes sky-limited noise and isolated sources.

    Parameters
    ----------
    true_is_galaxy
        True class of each source (bool or 0/1), shape (K,).
    snr
        True SNR of each source, shape (K,).
    residual_fraction
        `point_source_residual_fraction` of each source, shape (K,) (not used for stars).
    min_snr
        Sources with a lower SNR are left out.
    snr_edges
        Increasing SNR bin edges; sources outside them are left out.

    Returns
    -------
    accuracy
        Ideal accuracy on the selected sources; NaN if there are none.

    Raises
    ------
    ValueError
        On mismatched shapes, or a residual fraction of a galaxy outside [0, 1].
    """
    is_galaxy = as_vector(true_is_galaxy, "true_is_galaxy") > 0.5
    snr = as_vector(snr, "snr")
    fraction = as_vector(residual_fraction, "residual_fraction")
    check_same_shape({"true_is_galaxy": is_galaxy, "snr": snr, "residual_fraction": fraction})
    edges = check_edges(snr_edges, "snr_edges")
    if np.any(is_galaxy & ~((fraction >= 0) & (fraction <= 1))):
        raise ValueError("residual_fraction of every galaxy must be in [0, 1].")
    weighted, total = 0.0, 0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (snr >= max(low, min_snr)) & (snr < high)
        n_galaxy, n_inside = int((inside & is_galaxy).sum()), int(inside.sum())
        if n_inside == 0:
            continue
        total += n_inside
        if n_galaxy in (0, n_inside):
            weighted += n_inside  # one class only: the prior alone decides every source correctly
            continue
        p_galaxy = n_galaxy / n_inside
        log_odds = math.log((1.0 - p_galaxy) / p_galaxy)
        distance = np.maximum(snr[inside & is_galaxy] * fraction[inside & is_galaxy], 1e-12)
        error = p_galaxy * scipy.special.ndtr(log_odds / distance - distance / 2) + (
            1.0 - p_galaxy
        ) * scipy.special.ndtr(-log_odds / distance - distance / 2)
        weighted += n_inside * float(np.mean(1.0 - error))
    return weighted / total if total else math.nan
