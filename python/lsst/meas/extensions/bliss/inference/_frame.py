"""Full-frame inference: images of any size, masks, a spatially varying PSF, posterior samples.

A detector image (4k x 4k for LSST) is normalized once as a whole, then cut
into overlapping chunks whose origins lie on the tile grid and on the
checkerboard's period.  Each chunk carries a halo at least as wide as
everything a core tile's decision depends on (the backbone's receptive field
plus two tiles per colour group, through which decisions propagate), so every
tile is decided exactly as it would be in one pass over the whole image:
chunking changes neither the catalog nor the posterior samples, whose random
numbers are keyed by the global tile (`TileRandomness`).
"""

from __future__ import annotations

__all__ = ["FRAME_FLAGS", "FrameConfig", "FrameResult", "PsfModel", "infer_frame", "psf_kernel_fwhm_pix"]

import copy
import dataclasses
import functools
import math
import numbers
import time
from collections.abc import Callable

import numpy as np
import torch

from ..catalog import FullCatalog, empty_source_fields
from ..io import BlissModel
from ..network import (
    N_INPUT_CHANNELS,
    BlissEncoder,
    EncodedImage,
    SampledSources,
    TilePosterior,
    TileRandomness,
    noise_scale,
    prepare_inputs,
    sample_sources,
)
from ..runtime import check_backbone_precision, check_device_name, resolve_backbone_dtype, resolve_device
from ..survey import DEFAULT_INVALID_MASK_PLANES, SurveyConditions, invalid_mask_bits
from ._heap import reuse_freed_memory
from ._inference import ESTIMATE_FIELDS, evaluation_mode, padded_to_tiles, posterior_to_tile_catalog
from ._limits import (
    InputConditions,
    OutOfRange,
    OutOfTrainedRangeError,
    out_of_range_problems,
    representable_signal_to_noise,
)

PsfModel = float | Callable[[float, float], "float | np.ndarray"]
"""A PSF FWHM in pixels for the whole image, or a callable ``(x, y) -> FWHM in pixels or a kernel image``."""

OUT_OF_RANGE_CHOICES: tuple[str, ...] = ("error", "flag")
"""What `infer_frame` does with an image outside the model's trained conditions."""

FRAME_FLAGS: tuple[str, ...] = ("flag_masked", "flag_image_edge", "flag_out_of_range")
"""Boolean catalog fields: the source's footprint (a box of half-side ``2 FWHM + 2 hlr``) holds
invalid pixels (masked, non-finite, with non-positive variance, or of a signal-to-noise beyond
`max_representable_signal_to_noise`), or reaches beyond the image; or the image lies outside the
model's trained conditions and was processed anyway (``FrameConfig.out_of_range="flag"``)."""

CPU_SAMPLE_BATCH = 16
"""Posterior samples drawn together in one pass on a CPU by default: the default 16 in one pass (faster
than passes of 4, see the inference documentation), with the pass's temporary
tensors (about 0.4 GB per 16 samples on a 512 x 512-tile chunk) bounded for larger ``n_samples``."""

_ACTIVATIONS_PER_LAYER = 4.25
"""Live copies of the backbone's widest activation per chunk (a residual block's input, hidden layer
and output, and the allocator's slack); with the input and its chunk copy this is about 300 bytes per
pixel for the packaged encoder, whose peak memory was measured with it (float32 on the CPU)."""


@dataclasses.dataclass(frozen=True)
class FrameConfig:
    """Options of `infer_frame`.

    Attributes
    ----------
    detection_threshold
        Minimum detection probability of a catalog source.
    n_samples
        Posterior catalog samples to draw (0 for none).
    seed
        Seed of the samples; the same seed gives the same samples.
    invalid_mask_planes
        Mask planes whose pixels are invalid network inputs.
    chunk_pixels
        Side of a chunk's core in pixels; None derives it from
        ``memory_budget_gb``.
    memory_budget_gb
        Memory the encoder may use for one chunk; None: 1 GB on a CPU, a
        tenth of the GPU's memory on CUDA.
    psf_grid_pixels
        Spacing of the grid on which a PSF callable is evaluated; the FWHM is
        interpolated bilinearly in between.
    device
        Torch device; ``"auto"`` uses CUDA when available.
    sample_batch_size
        Posterior samples drawn together in one pass; None: all of them on a
        GPU, at most `CPU_SAMPLE_BATCH` on a CPU (a pass's memory grows with
        its samples).  The samples do not depend on it.
    precision
        Arithmetic of the encoder's backbone (see `resolve_backbone_dtype`):
        ``"float32"``, ``"bfloat16"``, or ``"auto"`` (bfloat16 on a CPU that
        computes it natively, float32 elsewhere).  The heads and the
        posterior passes always run in float32.  bfloat16 makes the backbone
        faster on such a CPU but perturbs bright-source fluxes by a fraction
        of their posterior width (see ``doc/lsst.meas.extensions.bliss/benchmarks.rst``).
    reuse_freed_memory
        On a CPU, let the large activation tensors reuse freed heap memory
        (`reuse_freed_memory`: a process-wide glibc setting) instead of
        mapping fresh pages for every layer.
    out_of_range
        What to do with an image outside the model's trained conditions (see
        `out_of_range_problems`): ``"error"`` refuses it
        (`OutOfTrainedRangeError`, naming each quantity, its value and the
        range); ``"flag"`` runs anyway and sets ``flag_out_of_range`` on
        every source.
    pixel_scale_rtol
        Accepted relative difference between the image's pixel scale and the
        model's.
    psf_fwhm_margin_arcsec
        Accepted excursion of the image's PSF FWHM beyond the model's trained
        range, arcsec, on either side.
    depth_margin_mag
        Accepted difference, in magnitudes, between the image's median
        per-pixel noise and the training images' (deeper or shallower).
    extra_bands
        Bands accepted besides the model's own.
    """

    detection_threshold: float = 0.5
    n_samples: int = 16
    seed: int = 0
    invalid_mask_planes: tuple[str, ...] = DEFAULT_INVALID_MASK_PLANES
    chunk_pixels: int | None = None
    memory_budget_gb: float | None = None
    psf_grid_pixels: int = 128
    device: str = "auto"
    sample_batch_size: int | None = None
    precision: str = "float32"
    reuse_freed_memory: bool = True
    out_of_range: str = "error"
    pixel_scale_rtol: float = 0.02
    psf_fwhm_margin_arcsec: float = 0.05
    depth_margin_mag: float = 1.0
    extra_bands: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_backbone_precision(self.precision)
        if self.out_of_range not in OUT_OF_RANGE_CHOICES:
            raise ValueError(f"out_of_range={self.out_of_range!r} must be one of {OUT_OF_RANGE_CHOICES}.")
        tolerances = (self.pixel_scale_rtol, self.psf_fwhm_margin_arcsec, self.depth_margin_mag)
        if not all(math.isfinite(value) and value >= 0 for value in tolerances):
            raise ValueError(
                f"pixel_scale_rtol={self.pixel_scale_rtol}, psf_fwhm_margin_arcsec="
                f"{self.psf_fwhm_margin_arcsec} and depth_margin_mag={self.depth_margin_mag} must be >= 0."
            )
        if not 0.0 < self.detection_threshold < 1.0:
            raise ValueError(f"detection_threshold={self.detection_threshold} must lie in (0, 1).")
        if self.sample_batch_size is not None and self.sample_batch_size < 1:
            raise ValueError(f"sample_batch_size={self.sample_batch_size} must be positive (or None).")
        if self.n_samples < 0:
            raise ValueError(f"n_samples={self.n_samples} must be >= 0.")
        if self.chunk_pixels is not None and self.chunk_pixels < 1:
            raise ValueError(f"chunk_pixels={self.chunk_pixels} must be positive (or None).")
        if (self.memory_budget_gb is not None and self.memory_budget_gb <= 0) or self.psf_grid_pixels < 1:
            raise ValueError("memory_budget_gb and psf_grid_pixels must be positive.")
        check_device_name(self.device)
        if len(set(self.invalid_mask_planes)) != len(self.invalid_mask_planes):
            raise ValueError(
                f"invalid_mask_planes={list(self.invalid_mask_planes)} lists a plane more than once."
            )


@dataclasses.dataclass
class FrameResult:
    """Probabilistic catalog of one image.

    Attributes
    ----------
    status
        ``"ok"``, or ``"no_valid_pixels"`` when no pixel is a valid input
        (then the catalog and samples are empty and ``tile_params`` too).
    catalog
        Point estimates of the sources with detection probability above the
        threshold, batch of one image, fields `SOURCE_FIELDS`,
        `ESTIMATE_FIELDS`, `FRAME_FLAGS` and ``psf_fwhm_pix`` (the PSF FWHM
        the network was conditioned on at the source, pixels); ordered by
        tile (row-major).
    samples
        ``n_samples`` posterior catalog samples, each like ``catalog``
        without the flags.
    tile_params
        Raw variational parameters of every tile per factor, shape
        (Ht, Wt, n_params), on the image's tile grid (the last row and column
        of tiles may extend beyond the image); interpret them with the
        encoder's factors (fluxes in units of ``flux_scale_njy``).
    flux_scale_njy
        Flux unit of the network (median per-pixel noise of the image), nJy.
    timings
        Seconds spent per stage.
    out_of_range
        Where the image leaves the model's trained conditions, one sentence
        each (see `out_of_range_problems`); non-empty only when
        ``FrameConfig.out_of_range`` is ``"flag"`` (then every source has
        ``flag_out_of_range``).
    """

    status: str
    catalog: FullCatalog
    samples: list[FullCatalog]
    tile_params: dict[str, torch.Tensor]
    flux_scale_njy: float
    timings: dict[str, float]
    out_of_range: list[str] = dataclasses.field(default_factory=list)


def psf_kernel_fwhm_pix(kernel: np.ndarray, conditions: SurveyConditions) -> float:
    """FWHM (pixels) of the model's PSF family with the same effective area as a kernel image.

    The effective area ``1 / sum(p^2)`` of the normalized kernel sets the
    noise of point-source photometry; matching it maps any PSF image onto the
    one-parameter family (Moffat or Gaussian, see `SurveyConditions.psf`) the
    network was trained on.

    Raises
    ------
    ValueError
        If the kernel is not a finite 2-d image with a positive sum.
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim != 2 or not np.isfinite(kernel).all() or kernel.sum() <= 0:
        raise ValueError(
            f"PSF kernel image of shape {kernel.shape} must be a finite 2-d image with a positive sum."
        )
    kernel = kernel / kernel.sum()
    area = 1.0 / float(np.square(kernel).sum())
    family = (conditions.psf_model, conditions.moffat_beta, conditions.pixel_scale_arcsec)
    fwhm_grid, area_grid = _effective_area_table(*family)
    return float(np.interp(area, area_grid, fwhm_grid))


@functools.lru_cache(maxsize=8)
def _effective_area_table(
    psf_model: str, moffat_beta: float, pixel_scale_arcsec: float
) -> tuple[np.ndarray, np.ndarray]:
    """Effective area of the PSF family (pixelized) on a grid of FWHM in pixels; cached because a PSF
    callable is evaluated at hundreds of positions of a detector."""
    fwhm_pix = np.linspace(0.5, 20.0, 196)
    conditions = SurveyConditions.from_survey().replace(
        psf_model=psf_model, moffat_beta=moffat_beta, pixel_scale_arcsec=pixel_scale_arcsec
    )
    psf = conditions.psf(fwhm_pix * pixel_scale_arcsec)
    size = 128
    transform = psf.fourier_grid(size, dtype=torch.float64)
    images = torch.fft.irfft2(transform.to(torch.complex128), s=(size, size))
    area = 1.0 / images.square().sum(dim=(-2, -1))
    return fwhm_pix, area.numpy()


@dataclasses.dataclass(frozen=True)
class _PsfFwhmGrid:
    """The PSF FWHM of an image (pixels) evaluated on a grid of nodes and bilinear in between.

    Each chunk takes its window of the map (`window`) and the catalog its sources' values (`at`)
    instead of one image-sized map: a 4k map and its temporaries were 0.2 GB of memory that a first
    call touches for the first time.  Both give what the whole map would, value for value.
    """

    node_x: np.ndarray
    """Node columns, shape (NX,), float64, from 0 to ``width - 1``."""
    node_y: np.ndarray
    """Node rows, shape (NY,), float64, from 0 to ``height - 1``."""
    values: np.ndarray
    """FWHM at the nodes, pixels, shape (NY, NX)."""
    height: int
    width: int

    def window(self, rows: slice, cols: slice) -> torch.Tensor:
        """FWHM at the pixels of ``rows`` x ``cols`` (which may run past the image, where the edge
        values are repeated, as for an image padded to whole tiles), shape (h, w), float32."""
        row_index = np.clip(np.arange(rows.start, rows.stop), 0, self.height - 1)
        col_index = np.clip(np.arange(cols.start, cols.stop), 0, self.width - 1)
        lower, fraction, along_x, step = self._terms(row_index, col_index)
        return torch.addcmul(along_x[lower], fraction[:, None], step[lower])

    def at(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """FWHM at the pixels ``(rows[i], cols[i])`` inside the image, shape (N,), float32."""
        lower, fraction, along_x, step = self._terms(rows.numpy(), cols.numpy())
        columns = torch.arange(cols.numel())
        return torch.addcmul(along_x[lower, columns], fraction, step[lower, columns])

    def _terms(
        self, rows: np.ndarray, cols: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Bilinear interpolation as lower + fraction x (upper - lower), which keeps a constant PSF
        exact: each row's lower node row (R,), its fraction of the way to the next (R,), and the FWHM
        along x at every node row (NY, C) with its step to the next node row (NY, C), float32.  (A
        matrix product with numpy's BLAS cost as much, and its threads kept spinning afterwards,
        taking a core from the normalization that follows.)"""
        along_x = torch.from_numpy(np.stack([np.interp(cols, self.node_x, row) for row in self.values]))
        step = torch.cat([along_x[1:] - along_x[:-1], along_x.new_zeros(1, along_x.shape[1])])
        rows_float = rows.astype(np.float64)
        lower = np.searchsorted(self.node_y, rows_float, side="right") - 1
        spacing = np.append(np.diff(self.node_y), 1.0)
        fraction = torch.from_numpy((rows_float - self.node_y[lower]) / spacing[lower]).to(torch.float32)
        return torch.from_numpy(lower), fraction, along_x.to(torch.float32), step.to(torch.float32)


def _fixed_psf_fwhm(psf: object) -> float:
    """A PSF FWHM given as a number, in pixels, checked.

    Raises
    ------
    TypeError
        If ``psf`` is neither a real number (or a 0-d numeric array) nor a callable, naming what it is.
    ValueError
        If the FWHM is not finite and positive.
    """
    numeric_scalar = (isinstance(psf, np.ndarray) and psf.ndim == 0 and psf.dtype.kind in "iuf") or (
        isinstance(psf, torch.Tensor)
        and psf.ndim == 0
        and psf.dtype != torch.bool
        and not psf.dtype.is_complex
    )
    if isinstance(psf, bool) or not (isinstance(psf, numbers.Real) or numeric_scalar):
        raise TypeError(
            f"psf={psf!r} ({type(psf).__name__}) is not a PSF model: pass the PSF FWHM in pixels (a positive "
            "number) or a callable (x, y) -> FWHM in pixels or a PSF kernel image."
        )
    fwhm = float(psf)  # type: ignore[arg-type]
    if not math.isfinite(fwhm) or fwhm <= 0:
        raise ValueError(f"psf: the PSF FWHM {fwhm} pixels must be finite and positive.")
    return fwhm


def _psf_fwhm_grid(
    psf: PsfModel, height: int, width: int, grid_pixels: int, conditions: SurveyConditions
) -> _PsfFwhmGrid:
    """The PSF model evaluated every ``grid_pixels`` pixels (and at the last row and column); a fixed
    FWHM is one node."""
    if not callable(psf):
        fwhm = _fixed_psf_fwhm(psf)
        origin = np.zeros(1)
        return _PsfFwhmGrid(origin, origin.copy(), np.full((1, 1), fwhm), height, width)

    def nodes(size: int) -> np.ndarray:
        return np.unique(np.append(np.arange(0, size, grid_pixels), size - 1)).astype(np.float64)

    node_x, node_y = nodes(width), nodes(height)
    values = np.empty((node_y.size, node_x.size))
    for i, y in enumerate(node_y):
        for j, x in enumerate(node_x):
            try:
                result = psf(float(x), float(y))
                fwhm = (
                    float(result)
                    if np.ndim(result) == 0
                    else psf_kernel_fwhm_pix(np.asarray(result), conditions)
                )
            except Exception as err:
                raise ValueError(f"The PSF model failed at (x, y) = ({x:g}, {y:g}): {err}") from err
            if not math.isfinite(fwhm) or fwhm <= 0:
                raise ValueError(
                    f"The PSF model gave a FWHM of {fwhm} pixels at (x, y) = ({x:g}, {y:g}); "
                    "it must be finite and positive."
                )
            values[i, j] = fwhm
    return _PsfFwhmGrid(node_x, node_y, values, height, width)


@dataclasses.dataclass(frozen=True)
class _ChunkLayout:
    """Chunks on the tile grid: core tile ranges and the halo around them."""

    n_tiles_h: int
    n_tiles_w: int
    core_tiles: int
    halo_tiles: int
    head_margin: int

    def chunks(self) -> list[tuple[int, int, int, int]]:
        """``(row0, row1, col0, col1)`` core tile ranges, in raster order."""
        return [
            (r, min(r + self.core_tiles, self.n_tiles_h), c, min(c + self.core_tiles, self.n_tiles_w))
            for r in range(0, self.n_tiles_h, self.core_tiles)
            for c in range(0, self.n_tiles_w, self.core_tiles)
        ]

    def window(self, start: int, stop: int, size: int) -> tuple[int, int]:
        """Tile range of the chunk (core plus halo, clipped to the image)."""
        return max(0, start - self.halo_tiles), min(size, stop + self.halo_tiles)


def _memory_budget_gb(config: FrameConfig, device: torch.device) -> float:
    """The chunk memory budget: as configured, else 1 GB on a CPU and a tenth of a GPU's memory
    (fewer, larger chunks keep a GPU busy; the batched samples need about as much again)."""
    if config.memory_budget_gb is not None:
        return config.memory_budget_gb
    if device.type == "cuda":
        return 0.1 * torch.cuda.get_device_properties(device).total_memory / 1e9
    return 1.0


def _layout(
    encoder: BlissEncoder, n_tiles_h: int, n_tiles_w: int, config: FrameConfig, budget_gb: float
) -> _ChunkLayout:
    tile, groups = encoder.config.tile_size, encoder.config.checkerboard_groups
    period = 2  # origins on even tiles keep every tile's checkerboard colour
    # Decisions reach two tiles further with each colour group (the head's two 3x3 convolutions).
    head_margin = period * math.ceil(2 * groups / period)
    halo = period * math.ceil(encoder.config.context_pixels / tile / period) + head_margin
    if config.chunk_pixels is None:
        bytes_per_pixel = 4 * (
            2 * N_INPUT_CHANNELS + _ACTIVATIONS_PER_LAYER * encoder.config.widest_activation_channels
        )
        side = math.sqrt(budget_gb * 1e9 / bytes_per_pixel) / tile
        largest = max(period, int(side) - 2 * halo)
        # As many chunks per side as the largest core needs, but of equal size: a narrow last chunk
        # would cost a whole halo for little core.
        n_chunks = math.ceil(max(n_tiles_h, n_tiles_w) / largest)
        core = math.ceil(max(n_tiles_h, n_tiles_w) / n_chunks)
        core = period * math.ceil(core / period)
    else:
        core = period * max(1, max(period, config.chunk_pixels // tile) // period)
    return _ChunkLayout(n_tiles_h, n_tiles_w, core, halo, head_margin)


def _sample_batches(
    config: FrameConfig, encoded: EncodedImage, device: torch.device
) -> list[tuple[int, ...]]:
    """Sample indices drawn together: one at a time without the sparse passes, else batches of
    ``config.sample_batch_size`` (default: all on a GPU; on a CPU, where a pass keeps only its
    sources and the tiles near them, at most `CPU_SAMPLE_BATCH`, so that a pass's memory stays
    bounded for large ``n_samples``)."""
    if encoded.absent is None:
        return [(index,) for index in range(config.n_samples)]
    default = config.n_samples if device.type == "cuda" else min(config.n_samples, CPU_SAMPLE_BATCH)
    size = config.sample_batch_size or max(1, default)
    return [
        tuple(range(first, min(first + size, config.n_samples))) for first in range(0, config.n_samples, size)
    ]


def _crop_posterior(posterior: TilePosterior, rows: slice, cols: slice) -> TilePosterior:
    def crop(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: value[:, rows, cols] for name, value in tensors.items()}

    return TilePosterior(crop(posterior.params), crop(posterior.values), posterior.flux_scale_njy)


@dataclasses.dataclass(frozen=True)
class _CoreTiles:
    """A chunk's core on the image's tile grid, to turn its tiles into catalog rows.

    Attributes
    ----------
    encoder
        The encoder (its factors and tile size).
    pixel_scale_arcsec
        Arcsec per pixel.
    origin
        Global ``(row, col)`` tile index of the core's first tile.
    n_tiles_w
        Tiles per row of the whole image (for the global tile index).
    """

    encoder: BlissEncoder
    pixel_scale_arcsec: float
    origin: tuple[int, int]
    n_tiles_w: int

    def estimate_rows(
        self, posterior: TilePosterior, detection_threshold: float | None
    ) -> dict[str, torch.Tensor]:
        """Sources of the core's posterior (a batch of one) as flat rows, with global positions and tile
        index (``detection_threshold`` None: the tiles whose decided detection is 1)."""
        if detection_threshold is None:
            present = posterior.values["detection"][0, ..., 0] > 0.5
        else:
            present = torch.sigmoid(posterior.params["detection"][0, ..., 0]) > detection_threshold
        tile_rows, tile_cols = torch.nonzero(present, as_tuple=True)
        return self.rows(
            {name: value[0, tile_rows, tile_cols] for name, value in posterior.params.items()},
            {name: value[0, tile_rows, tile_cols] for name, value in posterior.values.items()},
            posterior.flux_scale_njy,
            tile_rows,
            tile_cols,
            detection_threshold,
        )

    def sample_rows(
        self,
        sources: SampledSources,
        n_samples: int,
        core: tuple[slice, slice],
        flux_scale_njy: torch.Tensor,
    ) -> list[dict[str, torch.Tensor]]:
        """Sources of each of the ``n_samples`` batch elements of `sample_sources` (whose tiles count
        from the window that ``core`` indexes) within the core, as flat rows per sample."""
        rows, cols = core
        inside = torch.nonzero(
            (sources.rows >= rows.start)
            & (sources.rows < rows.stop)
            & (sources.cols >= cols.start)
            & (sources.cols < cols.stop),
            as_tuple=True,
        )[0]
        # The rows of all samples at once, then split by sample: a stable sort keeps each sample's order.
        kept = sources.select(inside[torch.sort(sources.images[inside], stable=True).indices])
        every = self.rows(
            kept.params, kept.values, flux_scale_njy, kept.rows - rows.start, kept.cols - cols.start, None
        )
        counts = torch.bincount(kept.images, minlength=n_samples).tolist()
        split = [value.split(counts) for value in every.values()]
        return [dict(zip(every, parts, strict=True)) for parts in zip(*split, strict=True)]

    def rows(
        self,
        params: dict[str, torch.Tensor],
        values: dict[str, torch.Tensor],
        flux_scale_njy: torch.Tensor,
        tile_rows: torch.Tensor,
        tile_cols: torch.Tensor,
        detection_threshold: float | None,
    ) -> dict[str, torch.Tensor]:
        """Catalog rows of ``P`` core tiles ``(tile_rows, tile_cols)`` (each (P,)) from their parameters
        and values (each (P, n))."""
        # The catalog fields of the selected tiles only, laid out as a one-row tile grid (1, 1, P).
        selected = TilePosterior(
            {name: value[None, None] for name, value in params.items()},
            {name: value[None, None] for name, value in values.items()},
            flux_scale_njy,
        )
        tiles = posterior_to_tile_catalog(
            selected, self.encoder, self.pixel_scale_arcsec, detection_threshold
        )
        location = tiles.locations[0, 0, :, 0]
        tile = tiles.tile_size
        row0, col0 = self.origin
        rows = {
            "x": (tile_cols + col0 + location[:, 0]) * tile - 0.5,
            "y": (tile_rows + row0 + location[:, 1]) * tile - 0.5,
            "tile_index": (tile_rows + row0) * self.n_tiles_w + tile_cols + col0,
        }
        rows.update({name: value[0, 0, :, 0] for name, value in tiles.fields.items()})
        return rows


def _assemble(
    parts: list[dict[str, torch.Tensor]], names: tuple[str, ...], height: int, width: int
) -> FullCatalog:
    """One-image catalog from chunk rows: sorted by tile, without sources beyond the image."""
    padding = empty_source_fields((0,), torch.device("cpu"), torch.float32, names)
    rows = {
        name: torch.cat([part[name].cpu() for part in parts]) if parts else padding.get(name, torch.empty(0))
        for name in ("x", "y", "tile_index", *names)
    }
    if rows["tile_index"].dtype != torch.long:
        rows["tile_index"] = rows["tile_index"].long()
    inside = torch.nonzero((rows["x"] < width - 0.5) & (rows["y"] < height - 0.5), as_tuple=True)[0]
    kept_index = inside[torch.argsort(rows["tile_index"][inside], stable=True)]
    kept = {name: value.index_select(0, kept_index) for name, value in rows.items()}
    return FullCatalog(
        height,
        width,
        torch.tensor([kept_index.numel()]),
        kept["x"][None],
        kept["y"][None],
        {name: kept[name][None] for name in names},
    )


def _nearest_pixels(catalog: FullCatalog) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column (M,) of the pixel nearest each source of a one-image catalog, clamped to the
    image."""
    row = catalog.y[0].round().long().clamp(0, catalog.height - 1)
    col = catalog.x[0].round().long().clamp(0, catalog.width - 1)
    return row, col


def _footprint_flags(
    catalog: FullCatalog, valid: torch.Tensor, fwhm_pix: torch.Tensor, pixel_scale_arcsec: float
) -> dict[str, torch.Tensor]:
    """`FRAME_FLAGS` of each source (PSF FWHM ``fwhm_pix`` (M,) at its nearest pixel), from an
    integral image of the invalid pixels (H, W)."""
    height, width = valid.shape
    if catalog.x[0].numel() == 0:
        empty = torch.zeros(1, 0, dtype=torch.bool)
        return {"flag_masked": empty, "flag_image_edge": empty}
    row, col = _nearest_pixels(catalog)
    hlr_pix = torch.maximum(catalog.fields["disk_hlr_arcsec"][0], catalog.fields["bulge_hlr_arcsec"][0])
    radius = torch.ceil(2.0 * fwhm_pix + 2.0 * hlr_pix / pixel_scale_arcsec).long()
    top, bottom, left, right = row - radius, row + radius, col - radius, col + radius
    edge = (top < 0) | (left < 0) | (bottom >= height) | (right >= width)
    # Invalid pixels per box from prefix sums along rows, summed over each box's rows (a 2-d integral
    # image would need a cumulative sum down the columns, several times slower on a CPU).
    invalid = torch.zeros(height, width + 1, dtype=torch.int32)
    invalid[:, 1:] = (~valid).to(torch.int32).cumsum(1)
    top, left = top.clamp(0, height - 1), left.clamp(0, width)
    bottom, right = bottom.clamp(0, height - 1), (right + 1).clamp(0, width)
    box_rows = top[:, None] + torch.arange(int((bottom - top).max()) + 1)
    in_box = box_rows <= bottom[:, None]
    box_rows = box_rows.clamp(max=height - 1)
    per_row = invalid[box_rows, right[:, None]] - invalid[box_rows, left[:, None]]
    count = (per_row * in_box).sum(dim=1)
    return {"flag_masked": (count > 0)[None], "flag_image_edge": edge[None]}


def _as_frame_tensor(name: str, array: np.ndarray | torch.Tensor | None) -> torch.Tensor | None:
    if array is None:
        return None
    tensor = torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array)
    if tensor.ndim != 2:
        raise ValueError(f"{name} must be a 2-d image (H, W); got shape {tuple(tensor.shape)}.")
    return tensor


def infer_frame(
    model: BlissModel,
    image: np.ndarray | torch.Tensor,
    variance: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor | None,
    psf: PsfModel,
    config: FrameConfig | None = None,
    mask_plane_bits: dict[str, int] | None = None,
    progress: Callable[[int, int], None] | None = None,
    conditions: InputConditions | None = None,
) -> FrameResult:
    """Probabilistic catalog of one image of any size.

    Parameters
    ----------
    model
        Trained model (its pixel scale and PSF family are assumed).
    image
        Background-subtracted image in nJy, shape (H, W).
    variance
        Variance in nJy^2, shape (H, W).
    mask
        Integer bit mask, shape (H, W), or None.
    psf
        PSF FWHM in pixels, or a callable ``(x, y) -> FWHM in pixels or a
        PSF kernel image`` evaluated on a grid (``config.psf_grid_pixels``).
    config
        Options; default `FrameConfig()`.
    mask_plane_bits
        Mask plane name -> bit index of ``mask`` (an LSST mask's plane
        dictionary); default that of the simulated images.
    progress
        Called as ``progress(chunks_done, n_chunks)`` after each chunk (for
        progress logs on large images).
    conditions
        The image's pixel scale and band where known (from its WCS and
        filter); checked, with its PSF size and noise level, against the
        model's trained ranges (``config.out_of_range``).  Default: unknown
        (the model's pixel scale is assumed, the band is not checked).

    Returns
    -------
    result
        Catalog, posterior samples, per-tile parameters and timings.

    Raises
    ------
    ValueError
        If the shapes of image, variance and mask differ, the image is
        smaller than one tile, or the PSF model fails or gives a non-finite
        or non-positive FWHM (the message names the position).
    TypeError
        If ``psf`` is neither a number nor a callable (the message names ``psf``).
    OutOfTrainedRangeError
        If the image's pixel scale, band, PSF FWHM or noise level lies
        outside the model's trained ranges and ``config.out_of_range`` is
        ``"error"`` (the message names each quantity, its value and the range).
    """
    config = config or FrameConfig()
    device = resolve_device(config.device)
    backbone_dtype = resolve_backbone_dtype(config.precision, device)
    if device.type == "cpu" and config.reuse_freed_memory:
        reuse_freed_memory()  # before the image-sized arrays of the normalization
    timings: dict[str, float] = {}
    start = time.perf_counter()
    encoder = model.encoder
    tile = encoder.config.tile_size
    image_t, variance_t = _as_frame_tensor("image", image), _as_frame_tensor("variance", variance)
    mask_t = _as_frame_tensor("mask", mask)
    assert image_t is not None and variance_t is not None
    shapes = {"image": image_t.shape, "variance": variance_t.shape}
    if mask_t is not None:
        shapes["mask"] = mask_t.shape
    if len(set(shapes.values())) > 1:
        described = ", ".join(f"{name} {tuple(shape)}" for name, shape in shapes.items())
        raise ValueError(f"image, variance and mask must have the same shape; got {described}.")
    height, width = image_t.shape
    if min(height, width) < tile:
        raise ValueError(
            f"Image of {height}x{width} pixels is smaller than one tile ({tile} pixels); "
            "the network needs at least one whole tile."
        )
    invalid_bits = invalid_mask_bits(config.invalid_mask_planes, mask_plane_bits)
    pixel_scale = model.conditions.pixel_scale_arcsec
    fwhm_grid = _psf_fwhm_grid(psf, height, width, config.psf_grid_pixels, model.conditions)

    # Each chunk's inputs are normalized when it is reached, with the whole image's noise unit: the
    # same channels as the whole image's at once, without a 4k image's 0.3 GB of them in memory (memory
    # touched for the first time costs a first call as much as the arithmetic on it).
    padded_image, padded_variance, padded_mask, _ = padded_to_tiles(
        encoder,
        image_t.to(torch.float32)[None],
        variance_t.to(torch.float32)[None],
        None if mask_t is None else mask_t[None],
        0.0,  # the PSF map comes a window at a time from the grid
    )
    # Pixels beyond what the model's inputs represent (a hot pixel, a missed cosmic ray, a variance far
    # too small) are invalid like masked ones, so they neither reach the network nor go unflagged.
    max_snr = representable_signal_to_noise(model, None if conditions is None else conditions.band)
    padded_valid, flux_scale_t = noise_scale(
        padded_image, padded_variance, padded_mask, invalid_bits, max_snr
    )
    valid = padded_valid[0, :height, :width]
    flux_scale = float(flux_scale_t[0])
    timings["normalize"] = time.perf_counter() - start
    out_of_range: list[OutOfRange] = []
    if bool(valid.any()):
        # The noise unit is the median per-pixel noise of the valid pixels: the image's depth.
        out_of_range = out_of_range_problems(
            model,
            conditions or InputConditions(),
            (float(fwhm_grid.values.min()), float(fwhm_grid.values.max())),
            flux_scale,
            config.pixel_scale_rtol,
            config.psf_fwhm_margin_arcsec,
            config.depth_margin_mag,
            tuple(config.extra_bands),
        )
        if out_of_range and config.out_of_range == "error":
            raise OutOfTrainedRangeError(out_of_range)
    names = tuple(empty_source_fields((0,), torch.device("cpu"), torch.float32)) + ESTIMATE_FIELDS
    if not bool(valid.any()):
        empty = _assemble([], names, height, width)
        flags = {flag: torch.zeros(1, 0, dtype=torch.bool) for flag in FRAME_FLAGS}
        catalog = dataclasses.replace(
            empty, fields={**empty.fields, **flags, "psf_fwhm_pix": torch.zeros(1, 0, dtype=empty.x.dtype)}
        )
        samples = [_assemble([], names, height, width) for _ in range(config.n_samples)]
        return FrameResult("no_valid_pixels", catalog, samples, {}, flux_scale, timings)

    # Channels-last convolutions run faster on the CPU (oneDNN's native layout).
    encoder = copy.deepcopy(encoder).to(device=device, memory_format=torch.channels_last)
    n_tiles_h, n_tiles_w = padded_valid.shape[-2] // tile, padded_valid.shape[-1] // tile
    layout = _layout(encoder, n_tiles_h, n_tiles_w, config, _memory_budget_gb(config, device))
    tile_params: dict[str, torch.Tensor] = {
        factor.name: torch.zeros(n_tiles_h, n_tiles_w, factor.n_params) for factor in encoder.factors
    }
    estimate_parts: list[dict[str, torch.Tensor]] = []
    sample_parts: list[list[dict[str, torch.Tensor]]] = [[] for _ in range(config.n_samples)]
    timings["network"] = timings["samples"] = 0.0
    chunks = layout.chunks()
    device_flux_scale = flux_scale_t.to(device)  # every chunk is normalized with the whole image's unit
    with evaluation_mode(encoder), torch.no_grad():
        for chunk_index, (row0, row1, col0, col1) in enumerate(chunks):
            tick = time.perf_counter()
            win_r0, win_r1 = layout.window(row0, row1, n_tiles_h)
            win_c0, win_c1 = layout.window(col0, col1, n_tiles_w)
            rows, cols = slice(win_r0 * tile, win_r1 * tile), slice(win_c0 * tile, win_c1 * tile)
            chunk_inputs = prepare_inputs(
                padded_image[..., rows, cols],
                padded_variance[..., rows, cols],
                None if padded_mask is None else padded_mask[..., rows, cols],
                fwhm_grid.window(rows, cols)[None],
                invalid_bits,
                flux_scale_t,
                max_snr,
                encoder.config.input_noise,
            )
            chunk_inputs = dataclasses.replace(
                chunk_inputs,
                tensor=chunk_inputs.tensor.to(device).contiguous(memory_format=torch.channels_last),
            )
            timings["normalize"] += time.perf_counter() - tick
            tick = time.perf_counter()
            # The posterior passes need only the core and the tiles its decisions depend on through
            # the colour groups; the rest of the halo served the backbone's receptive field.
            head_r0, head_r1 = max(win_r0, row0 - layout.head_margin), min(win_r1, row1 + layout.head_margin)
            head_c0, head_c1 = max(win_c0, col0 - layout.head_margin), min(win_c1, col1 + layout.head_margin)
            features = encoder.features(chunk_inputs, backbone_dtype)
            # The passes need only the image's flux unit: the chunk's input channels (78 MB for a
            # 2k x 2k chunk) are freed before the absent trajectory and the samples are made.
            del chunk_inputs
            encoded = encoder.encode_features(features, keep_dense=False).crop(
                slice(head_r0 - win_r0, head_r1 - win_r0), slice(head_c0 - win_c0, head_c1 - win_c0)
            )
            del features
            core = (slice(row0 - head_r0, row1 - head_r0), slice(col0 - head_c0, col1 - head_c0))
            estimate = _crop_posterior(encoder.posterior_from_encoded(encoded, device_flux_scale), *core)
            for name, params in estimate.params.items():
                tile_params[name][row0:row1, col0:col1] = params[0].cpu()
            core_tiles = _CoreTiles(encoder, pixel_scale, (row0, col0), n_tiles_w)
            estimate_parts.append(core_tiles.estimate_rows(estimate, config.detection_threshold))
            timings["network"] += time.perf_counter() - tick
            tick = time.perf_counter()
            for indices in _sample_batches(config, encoded, device):
                randomness = TileRandomness(
                    config.seed, tile_origin=(head_r0, head_c0), sample_indices=indices
                )
                if encoded.absent is None:
                    sample = encoder.posterior_from_encoded(encoded, device_flux_scale, randomness)
                    sample = _crop_posterior(sample, *core)
                    sample_parts[indices[0]].append(core_tiles.estimate_rows(sample, None))
                    continue
                # Several samples in one sparse pass: the same numbers as one at a time, fewer steps.
                sources = sample_sources(encoder, encoded.absent.repeat(len(indices)), randomness)
                per_sample = core_tiles.sample_rows(sources, len(indices), core, device_flux_scale)
                for index, rows in zip(indices, per_sample, strict=True):
                    sample_parts[index].append(rows)
            timings["samples"] += time.perf_counter() - tick
            # Freed before the next chunk's are made, instead of when their names are rebound after it:
            # otherwise two chunks' features and absent trajectories (0.3 GB at 4k) live at once.
            del encoded, estimate
            if progress is not None:
                progress(chunk_index + 1, len(chunks))
    tick = time.perf_counter()
    catalog = _assemble(estimate_parts, names, height, width)
    source_fwhm = fwhm_grid.at(*_nearest_pixels(catalog))
    catalog.fields.update(_footprint_flags(catalog, valid, source_fwhm, pixel_scale))
    catalog.fields["flag_out_of_range"] = torch.full_like(catalog.fields["flag_masked"], bool(out_of_range))
    catalog.fields["psf_fwhm_pix"] = source_fwhm[None].to(catalog.x.dtype)
    samples = [_assemble(parts, names, height, width) for parts in sample_parts]
    timings["catalog"] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - start
    messages = [problem.message for problem in out_of_range]
    return FrameResult("ok", catalog, samples, tile_params, flux_scale, timings, messages)
