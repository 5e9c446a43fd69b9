"""Batched Fourier-space renderer of stars and bulge+disk galaxies.

Each source is drawn on its own square stamp by evaluating the analytic (or
tabulated) Fourier transform of its light profile, multiplying by the
effective PSF transform and a sub-pixel phase shift, and transforming back
with one batched ``irfft2``.  This is exact up to the band limit of the
pixel grid, like GalSim's FFT drawing: the pixel response is a convolution
with the unit box and pixel values are samples of the convolved profile at
pixel centres.  Stamps are computed on an FFT grid about twice their size so
that light outside a stamp does not wrap around into it, and are then added
to the images.

Conventions: positions in pixels, ``x`` along columns and ``y`` along rows,
pixel centres at integer coordinates; position angles in radians measured
counter-clockwise from the +x axis; half-light radii in pixels, of the round
profile before an area-preserving shear to axis ratio ``q`` (GalSim's
``.shear(q=q, beta=angle)``).
"""

from __future__ import annotations

__all__ = [
    "STAMP_HALF_SIZES",
    "RenderSources",
    "catalog_to_render_sources",
    "paste_stamps",
    "render_images",
    "render_stamps",
    "render_stamps_by_size",
    "stamp_half_size",
]

import bisect
import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Iterator

import torch

from ..catalog import FullCatalog
from ._knots import KNOT_EXTENT_HLR, KNOT_FIELDS, knot_fluxes, knot_offsets_pix
from ._profiles import EXPONENTIAL_HLR_OVER_SCALE, devaucouleurs_fourier_one_plus_squared
from ._psf import PointSpreadFunction, rfft_wavenumbers

STAMP_HALF_SIZES: tuple[int, ...] = (
    4,
    7,
    9,
    11,
    13,
    15,
    17,
    19,
    23,
    27,
    31,
    39,
    47,
    55,
    63,
    79,
    95,
    111,
    127,
    159,
    191,
    223,
    255,
)
"""Stamp half-sizes (pixels) that sources are grouped into; a stamp is ``2 h + 1`` pixels wide.

Each is one less than half a fast FFT size (2, 3, 5 and 7 its only prime factors), so that an
unpadded stamp fills its FFT grid."""

GALAXY_EXTENT_HLR: float = 5.0
"""Radius, in (major-axis) half-light radii, that a galaxy stamp must contain.

This holds 99.8% of an exponential disk and all of the truncated bulge."""


@dataclasses.dataclass
class RenderSources:
    """A flat batch of ``n`` sources to render, in pixel units.

    Attributes
    ----------
    x, y
        Centre in pixels (x column, y row), shape (n,).
    flux
        Total flux in image units (e.g. nJy), shape (n,).
    is_galaxy
        True for galaxies, False for point sources, shape (n,).
    disk_frac
        Fraction of the galaxy flux in the exponential disk, shape (n,).
    disk_hlr_pix, bulge_hlr_pix
        Half-light radii of disk and bulge in pixels, shape (n,).
    disk_q, bulge_q
        Axis ratios (minor / major) in (0, 1], shape (n,).
    position_angle_rad
        Major-axis angle counter-clockwise from +x in radians, shape (n,).
    image_index
        Index of the image each source belongs to, shape (n,).
    psf_index
        Index into the PSF batch used for each source, shape (n,).
    knot_frac, knot_count, knot_seed, knot_offset_hlr
        The galaxies' star-forming knots (see `KNOT_FIELDS`), shape (n,)
        each, or all `None` for smooth galaxies only.
    """

    x: torch.Tensor
    y: torch.Tensor
    flux: torch.Tensor
    is_galaxy: torch.Tensor
    disk_frac: torch.Tensor
    disk_hlr_pix: torch.Tensor
    disk_q: torch.Tensor
    bulge_hlr_pix: torch.Tensor
    bulge_q: torch.Tensor
    position_angle_rad: torch.Tensor
    image_index: torch.Tensor
    psf_index: torch.Tensor
    knot_frac: torch.Tensor | None = None
    knot_count: torch.Tensor | None = None
    knot_seed: torch.Tensor | None = None
    knot_offset_hlr: torch.Tensor | None = None

    def __post_init__(self) -> None:
        given = [getattr(self, name) is not None for name in KNOT_FIELDS]
        if any(given) and not all(given):
            raise ValueError(f"RenderSources needs all of {KNOT_FIELDS} or none of them.")

    def __len__(self) -> int:
        return self.x.shape[0]

    def select(self, index: torch.Tensor) -> RenderSources:
        """Return the sources at ``index`` (boolean mask or integer indices)."""
        return self.apply(lambda values: values[index])

    def apply(self, function: Callable[[torch.Tensor], torch.Tensor]) -> RenderSources:
        """The sources with ``function`` applied to every tensor (e.g. to move them to a device)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return RenderSources(**{k: None if v is None else function(v) for k, v in values.items()})

    @property
    def has_knots(self) -> torch.Tensor:
        """True for galaxies with knots, shape (n,)."""
        if self.knot_count is None or self.knot_frac is None:
            return torch.zeros_like(self.is_galaxy)
        return self.is_galaxy & (self.knot_count.round() > 0) & (self.knot_frac > 0)


def _next_fft_size(minimum: int) -> int:
    """Smallest even integer >= minimum whose prime factors are 2, 3, 5 and 7 (fast FFT sizes)."""
    size = max(2, minimum + (minimum % 2))
    while True:
        remainder = size
        for prime in (2, 3, 5, 7):
            while remainder % prime == 0:
                remainder //= prime
        if remainder == 1:
            return size
        size += 2


def stamp_half_size(
    sources: RenderSources, psf: PointSpreadFunction, max_half_size: int = STAMP_HALF_SIZES[-1]
) -> torch.Tensor:
    """Stamp half-size for each source, chosen from `STAMP_HALF_SIZES`.

    Parameters
    ----------
    sources
        The sources, ``n`` of them.
    psf
        Their PSFs (``sources.psf_index`` indexes it).
    max_half_size
        Upper bound on the half-size; larger sources are cut at the stamp edge.

    Returns
    -------
    half_size
        Integer half-sizes, shape (n,).
    """
    disk_extent = sources.disk_hlr_pix / sources.disk_q.sqrt() * (sources.disk_frac > 0)
    if sources.knot_offset_hlr is not None:
        # Knots lie within KNOT_EXTENT_HLR radii of a centre that may be offset from the galaxy's.
        knot_reach = (KNOT_EXTENT_HLR + sources.knot_offset_hlr) / GALAXY_EXTENT_HLR
        disk_extent = disk_extent * torch.where(sources.has_knots, knot_reach.clamp(min=1.0), 1.0)
    bulge_extent = sources.bulge_hlr_pix / sources.bulge_q.sqrt() * (sources.disk_frac < 1)
    galaxy_extent = GALAXY_EXTENT_HLR * torch.maximum(disk_extent, bulge_extent) * sources.is_galaxy
    psf_extent = psf.radius_pix().to(sources.x.device, sources.x.dtype)[sources.psf_index]
    needed = torch.sqrt(galaxy_extent.square() + psf_extent.square()) + 1.0
    sizes = torch.tensor(STAMP_HALF_SIZES, device=needed.device, dtype=needed.dtype)
    choice = torch.searchsorted(sizes, needed.contiguous()).clamp(max=len(STAMP_HALF_SIZES) - 1)
    return torch.clamp(sizes[choice].long(), max=max_half_size)


@functools.cache
def _fourier_grid(fft_size: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """The wavenumbers of the ``rfft2`` grid of an ``N x N`` stamp in the forms the renderer needs.

    The renderer's half-spectra are transposed, ``[kx, ky]`` of shape (N // 2 + 1, N), so that
    the inverse FFT along ``ky``, which comes first, is along contiguous memory (see
    `_render_terms`).  Cached per grid, so the tensors must not be modified.

    Returns
    -------
    basis
        The monomials of a profile's squared argument, ``1``, ``kx^2``,
        ``2 kx ky`` and ``ky^2`` (radians per pixel), flattened, shape (4, (N // 2 + 1) N).
    minus_kx, minus_ky
        ``-kx``, shape (N // 2 + 1, 1), and ``-ky``, shape (1, N), radians per pixel (a shift
        by ``s`` is the phase ``exp(-i k s)``).
    phase_basis
        ``[[-kx, 0], [0, -ky]]``, shape (2, N // 2 + 1 + N): its product with shifts ``(x, y)``
        gives the angles of both separable phase factors at once.
    """
    ky, kx = rfft_wavenumbers(fft_size, device, dtype)
    kx, ky = kx.reshape(-1, 1), ky.reshape(1, -1)
    kx_grid, ky_grid = kx.expand(-1, fft_size), ky.expand(kx.shape[0], -1)
    basis = torch.stack(
        [torch.ones_like(kx_grid), kx_grid.square(), 2.0 * kx_grid * ky_grid, ky_grid.square()]
    )
    phase_basis = torch.block_diag(-kx.reshape(1, -1), -ky)
    return basis.reshape(4, -1), -kx, -ky, phase_basis


# Smallest flux fraction of a disk or a bulge (see `_source_terms`): a pure bulge's disk then weighs
# 1e-12 of its flux (and a pure disk's bulge), and the disk's transform, between 1e-12 and 1e12 times
# the bulge's, stays far from float32's smallest normal and largest numbers.
_MIN_WEIGHT = 1.0e-12


def _source_terms(sources: RenderSources, dtype: torch.dtype) -> torch.Tensor:
    """Per-source numbers that the renderer needs on every stamp, computed once for a batch.

    The profiles' squared arguments are a matrix product of coefficients with
    the monomials of `_fourier_grid`: an area-preserving shear to axis ratio q
    along angle theta maps the round transform's squared argument to
    ``k_major^2 / q + k_minor^2 q``; with the profile scale r folded in,
    ``a k_major^2 + b k_minor^2`` with ``a = r^2 / q`` and ``b = r^2 q``, the
    quadratic form ``A kx^2 + 2 B kx ky + C ky^2`` with
    ``A, C = (a + b) / 2 +- (a - b) / 2 cos(2 theta)`` and ``B = (a - b) / 2 sin(2 theta)``.
    The profile is computed in units of the bulge's flux ``f_bulge``:
    ``bulge + (f_disk / f_bulge) disk``, with the disk's row multiplied by
    ``w = (f_disk / f_bulge)^(-2/3)`` so that ``rsqrt(w (1 + u^2))^3`` is its
    transform ``(1 + u^2)^(-3/2)`` times ``f_disk / f_bulge`` (both fractions at
    least 1e-12, see `_MIN_WEIGHT`), and ``f_bulge`` goes with the flux.  A star is
    a flat "bulge", ``(1, 0, 0, 0)``, of weight 1, without a disk.

    Parameters
    ----------
    sources
        ``n`` sources.
    dtype
        Real dtype of the result.

    Returns
    -------
    terms
        Shape (n, 11): columns 0-3 the disk's coefficients (of ``w (1 + u_disk^2)``,
        ``u_disk`` the wavenumber in disk scale lengths) and 4-7 the bulge's (of
        ``1 + u_bulge^2``, ``u_bulge`` in bulge half-light radii), against the rows
        of the basis of `_fourier_grid`; 8 the flux times ``f_bulge``; 9 and 10 the
        offsets ``x - round(x)`` and ``y - round(y)``, pixels.
    """
    scale = torch.stack([sources.disk_hlr_pix / EXPONENTIAL_HLR_OVER_SCALE, sources.bulge_hlr_pix], dim=1)
    scale_sq = scale.to(dtype).square()
    axis_ratio = torch.stack([sources.disk_q, sources.bulge_q], dim=1).to(dtype)
    major, minor = scale_sq / axis_ratio, scale_sq * axis_ratio
    half_sum, half_difference = (major + minor).mul_(0.5), (major - minor).mul_(0.5)
    double_angle = (2.0 * sources.position_angle_rad).to(dtype)[:, None]
    along = half_difference * torch.cos(double_angle)
    cross = half_difference * torch.sin(double_angle)
    coefficients = torch.stack([torch.ones_like(half_sum), half_sum + along, cross, half_sum - along], dim=-1)
    disk_frac = sources.disk_frac.to(dtype)
    disk_weight = disk_frac
    if sources.knot_frac is not None:
        # The knots' share of the disk light is drawn as points (`_knot_fourier`).
        disk_weight = disk_weight * torch.where(sources.has_knots, 1.0 - sources.knot_frac.to(dtype), 1.0)
    bulge_weight = (1.0 - disk_frac).clamp(min=_MIN_WEIGHT)
    if not bool(sources.is_galaxy.all()):
        flat = torch.zeros(4, device=coefficients.device, dtype=dtype)
        flat[0] = 1.0
        coefficients[:, 1] = torch.where(sources.is_galaxy[:, None], coefficients[:, 1], flat)
        disk_weight = torch.where(sources.is_galaxy, disk_weight, 0.0)
        bulge_weight = torch.where(sources.is_galaxy, bulge_weight, 1.0)
    relative_disk_weight = disk_weight.clamp(min=_MIN_WEIGHT) / bulge_weight
    coefficients[:, 0].mul_(relative_disk_weight.pow(-2.0 / 3.0)[:, None])
    position = torch.stack([sources.x, sources.y], dim=1)
    offset = (position - torch.round(position)).to(dtype)
    amplitude = sources.flux.to(dtype) * bulge_weight
    return torch.cat([coefficients.flatten(1), amplitude[:, None], offset], dim=1)


def _phase_factor(angle: torch.Tensor) -> torch.Tensor:
    """``exp(i angle)``, complex, same shape as ``angle`` (radians).

    Three times faster on a CPU than `torch.polar`, whose sine and cosine are not vectorized.
    """
    return torch.complex(torch.cos(angle), torch.sin(angle))


def _knot_terms(sources: RenderSources, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The knots of ``n`` galaxies with knots: offsets (n, J, 2), pixels, float64, and fluxes (n, J).

    ``J`` is the largest ``knot_count``; the fluxes, in ``dtype``, are zero beyond each galaxy's count
    (see `knot_offsets_pix` and `knot_fluxes`).
    """
    assert sources.knot_count is not None and sources.knot_seed is not None  # callers check has_knots
    assert sources.knot_frac is not None and sources.knot_offset_hlr is not None
    n_knots = int(sources.knot_count.round().max())
    offsets = knot_offsets_pix(
        sources.knot_seed,
        n_knots,
        sources.disk_hlr_pix,
        sources.disk_q,
        sources.position_angle_rad,
        sources.knot_offset_hlr,
    )
    fluxes = knot_fluxes(sources.flux, sources.disk_frac, sources.knot_frac, sources.knot_count, n_knots)
    return offsets, fluxes.to(dtype)


def _knot_fourier(
    offsets: torch.Tensor,
    fluxes: torch.Tensor,
    minus_kx: torch.Tensor,
    minus_ky: torch.Tensor,
    shift: torch.Tensor,
) -> torch.Tensor:
    """Transforms of galaxies' knots, ``sum_j f_j exp(-i k . (d_j + s))``, shape (n, N // 2 + 1, N).

    The phase factor of a point is separable in ``kx`` and ``ky``, so the sum
    over knots is one batched complex matrix product of (n, N // 2 + 1, J) by (n, J, N).

    Parameters
    ----------
    offsets, fluxes
        The knots' offsets ``d_j`` from their galaxies' centres, pixels, and fluxes ``f_j``, shapes
        (n, J, 2) and (n, J) (`_knot_terms`).
    minus_kx, minus_ky
        Negated wavenumbers of `_fourier_grid`, shapes (N // 2 + 1, 1) and (1, N).
    shift
        The galaxies' offsets ``s`` from the pixel at the grid's centre, ``(x, y)`` in pixels, shape
        (n, 2) (the PSF transform of `PointSpreadFunction.centred_fourier_grid` centres them).

    Returns
    -------
    transform
        In the transposed ``[kx, ky]`` layout of `_fourier_grid`, complex.
    """
    positions = (offsets + shift.to(offsets.dtype)[:, None, :]).to(minus_kx.dtype)
    phase_x = _phase_factor(positions[..., 0:1] * minus_kx.reshape(-1))
    phase_y = _phase_factor(positions[..., 1:2] * minus_ky.reshape(-1)).mul_(fluxes[..., None])
    return torch.bmm(phase_x.transpose(1, 2), phase_y)


def render_stamps(
    sources: RenderSources,
    psf: PointSpreadFunction,
    half_size: int,
    fft_padding: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Render each source on a stamp centred on its nearest pixel.

    The profiles' squared arguments are one matrix product of per-source
    coefficients with the grid's monomials (`_source_terms`); the
    disk's transform is analytic, the bulge's tabulated.  The real profile is
    multiplied by the (real) PSF transform before the one complex product with
    the source's flux and sub-pixel phase.

    Parameters
    ----------
    sources
        ``n`` sources; their stamps are centred on ``round(x), round(y)``.
    psf
        PSF batch indexed by ``sources.psf_index``.
    half_size
        Stamp half-size ``h``; stamps are ``S = 2 h + 1`` pixels wide.
    fft_padding
        The FFT grid is at least this many times the stamp size.  With 1 the
        little light beyond the stamp (stamps hold >= 99.8% of it, see
        `stamp_half_size`) folds back onto the stamp's edges; 2 removes
        that at four times the cost.
    dtype
        Real floating dtype of the computation.

    Returns
    -------
    stamps
        Shape (n, S, S), in the units of ``sources.flux``; stamp pixel
        ``[h, h]`` is image pixel ``(round(y), round(x))``.
    """
    fft_size = _fft_size(half_size, fft_padding, psf)
    terms = _source_terms(sources, dtype)
    knotty = sources.has_knots.nonzero().squeeze(1) if sources.knot_count is not None else None
    knots = None
    if knotty is not None and knotty.numel() > 0:
        knots = (knotty, *_knot_terms(sources.select(knotty), dtype))
    return _render_terms(
        terms,
        bool(sources.is_galaxy.any()),
        sources.psf_index,
        knots,
        psf,
        half_size,
        fft_size,
    )


def _fft_size(half_size: int, fft_padding: float, psf: PointSpreadFunction) -> int:
    """Side of the FFT grid of stamps of half-size ``half_size`` (see `render_stamps`)."""
    return _next_fft_size(max(math.ceil(fft_padding * (2 * half_size + 1)), psf.min_fft_size))


def _render_terms(
    terms: torch.Tensor,
    any_galaxy: bool,
    psf_index: torch.Tensor,
    knots: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    psf: PointSpreadFunction,
    half_size: int,
    fft_size: int,
) -> torch.Tensor:
    """`render_stamps` of ``n`` sources given their `_source_terms`, shape (n, 11).

    The computation is in the dtype of ``terms``; ``any_galaxy`` says whether any source is a
    galaxy, ``psf_index`` (n,) indexes ``psf``, ``knots`` holds the indices of the galaxies with
    knots and their `_knot_terms` (`None` if there are none), and ``fft_size`` is `_fft_size`.
    """
    device, dtype = terms.device, terms.dtype
    basis, minus_kx, minus_ky, phase_basis = _fourier_grid(fft_size, device, dtype)
    n_sources, n_columns = terms.shape[0], minus_kx.shape[0]
    # Centred on the grid and normalized for the inverse FFTs ("forward" norm below).
    if psf.n_psf > 1:
        psf_transform = psf.centred_fourier_grid_of(psf_index, fft_size, device, dtype)
    else:
        psf_transform = psf.centred_fourier_grid(fft_size, device, dtype)
    complex_dtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    transform = torch.empty(n_sources, n_columns, fft_size, device=device, dtype=complex_dtype)
    if any_galaxy:
        profile = _smooth_profiles(terms, basis).view(n_sources, n_columns, fft_size)
        if psf_transform.is_complex():
            transform.copy_(profile).mul_(psf_transform)
        elif profile.requires_grad:  # autograd does not take out= arguments
            transform = (profile * psf_transform).to(complex_dtype)
        else:
            # The product with a real PSF transform is written straight into the complex transform.
            torch.mul(profile, psf_transform, out=transform)
    else:
        transform.copy_(psf_transform)
    # The flux and the offset from the nearest pixel are separable, f exp(-i ky y) exp(-i kx x):
    # both factors from one product and one complex exponential (complex(cos, sin) is three times
    # faster on a CPU than torch.polar), with the flux multiplying the real cos and sin (a complex
    # tensor times a real one is several times slower than the two real products).
    angle = torch.mm(terms[:, 9:11], phase_basis)
    cos, sin = torch.cos(angle), torch.sin(angle)
    cos[:, n_columns:].mul_(terms[:, 8:9])
    sin[:, n_columns:].mul_(terms[:, 8:9])
    phase = torch.complex(cos, sin)
    transform.mul_(phase[:, None, n_columns:]).mul_(phase[:, :n_columns, None])
    if knots is not None:
        knotty, knot_offsets, knot_fluxes = knots
        knot_transform = _knot_fourier(knot_offsets, knot_fluxes, minus_kx, minus_ky, terms[knotty, 9:11])
        knot_transform.mul_(psf_transform[knotty] if psf.n_psf > 1 else psf_transform)
        transform.index_add_(0, knotty, knot_transform)
    low, high = fft_size // 2 - half_size, fft_size // 2 + half_size + 1
    if transform.requires_grad:  # autograd does not take out= arguments
        images = torch.fft.irfftn(transform, s=(fft_size, fft_size), dim=(-1, -2), norm="forward")
        return images[:, low:high, low:high].transpose(1, 2)
    # Along the contiguous ky first, written transposed, so that the transform along kx is along
    # contiguous memory too and the image comes out [y, x]: torch then copies the half-spectrum
    # once instead of three times, which makes the inverse FFT about 40% faster.
    rows = torch.empty(n_sources, fft_size, n_columns, device=device, dtype=complex_dtype)
    torch.fft.ifft(transform, dim=-1, norm="forward", out=rows.transpose(1, 2))
    images = torch.fft.irfft(rows, n=fft_size, dim=-1, norm="forward")
    return images[:, low:high, low:high]


def _smooth_profiles(terms: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """The sources' bulge+disk transforms in units of their bulges' flux, shape (n, N (N // 2 + 1)).

    Parameters
    ----------
    terms
        `_source_terms` of ``n`` sources, shape (n, 11).
    basis
        The monomials of `_fourier_grid`, shape (4, N (N // 2 + 1)).
    """
    if terms.requires_grad:
        disk_root = torch.rsqrt(torch.mm(terms[:, 0:4], basis))
        bulge = devaucouleurs_fourier_one_plus_squared(torch.mm(terms[:, 4:8], basis))
        return torch.addcmul(bulge, disk_root.square(), disk_root)
    # Without autograd, in place: each pass then reads and writes memory that is already in the
    # cache, which makes them about 20% faster.
    bulge_argument = torch.mm(terms[:, 4:8], basis)
    profile = devaucouleurs_fourier_one_plus_squared(bulge_argument)
    disk_argument = torch.mm(terms[:, 0:4], basis)
    # The bulge's argument is no longer needed: its memory takes rsqrt(x), and x^(-3/2) = rsqrt(x) / x.
    return profile.addcdiv_(torch.rsqrt(disk_argument, out=bulge_argument), disk_argument)


def render_stamps_by_size(
    sources: RenderSources,
    psf: PointSpreadFunction,
    max_half_size: int = STAMP_HALF_SIZES[-1],
    fft_padding: float = 1.0,
    dtype: torch.dtype = torch.float32,
    max_chunk_bytes: int = 256 * 2**20,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Render every source on a stamp of its own size (`stamp_half_size`), in batches of one size.

    The same stamps as `render_stamps` on each size group, with the per-source
    work done once for all sources.

    Parameters
    ----------
    sources
        ``n`` sources.
    psf
        PSF batch indexed by ``sources.psf_index``.
    max_half_size
        Largest stamp half-size in pixels.
    fft_padding
        See `render_stamps`.
    dtype
        Real floating dtype of the computation.
    max_chunk_bytes
        Approximate memory bound of one batch.

    Yields
    ------
    members
        Indices of the batch's sources into ``sources``, shape (m,).
    stamps
        Their stamps, shape (m, S, S) with ``S = 2 h + 1`` for the batch's half-size ``h``.
    """
    if len(sources) > 0:
        half_sizes = stamp_half_size(sources, psf, max_half_size)
        yield from _stamps_by_size(sources, psf, half_sizes, fft_padding, dtype, max_chunk_bytes)


def _stamps_by_size(
    sources: RenderSources,
    psf: PointSpreadFunction,
    half_sizes: torch.Tensor,
    fft_padding: float,
    dtype: torch.dtype,
    max_chunk_bytes: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`render_stamps_by_size` with the sources' half-sizes, shape (n,), given."""
    order = torch.argsort(half_sizes, stable=True)
    sizes, counts = torch.unique_consecutive(half_sizes[order], return_counts=True)
    terms = _source_terms(sources, dtype)[order]
    fft_sizes = [_fft_size(half_size, fft_padding, psf) for half_size in sizes.tolist()]
    starts = [0, *itertools.accumulate(counts.tolist())]
    psf_index = sources.psf_index[order]
    # Galaxies among the first i sorted sources, counted once rather than tested in every batch.
    galaxies_before = [0, *torch.cumsum(sources.is_galaxy[order], 0).tolist()]
    # The knots of all galaxies at once (their positions take some hundred small operations).
    knot_rows: list[int] = []
    if sources.knot_count is not None:
        knot_index = sources.has_knots[order].nonzero().squeeze(1)
        knot_rows = knot_index.tolist()
        if knot_rows:
            knot_offsets, knot_fluxes = _knot_terms(sources.select(order[knot_index]), dtype)
    for half_size, fft_size, first, count in zip(
        sizes.tolist(), fft_sizes, starts[:-1], counts.tolist(), strict=True
    ):
        for chunk in _chunks(count, fft_size, max_chunk_bytes):
            batch = slice(first + chunk.start, first + chunk.stop)
            members = order[batch]
            knots = None
            low, high = bisect.bisect_left(knot_rows, batch.start), bisect.bisect_left(knot_rows, batch.stop)
            if high > low:
                knots = (knot_index[low:high] - batch.start, knot_offsets[low:high], knot_fluxes[low:high])
            any_galaxy = galaxies_before[batch.stop] > galaxies_before[batch.start]
            stamps = _render_terms(
                terms[batch],
                any_galaxy,
                psf_index[batch],
                knots,
                psf,
                half_size,
                fft_size,
            )
            yield members, stamps


def _chunks(count: int, fft_size: int, max_chunk_bytes: int) -> Iterator[slice]:
    # About eight complex64 temporaries of the half-spectrum live at once.
    per_source = 8 * 8 * fft_size * (fft_size // 2 + 1)
    step = max(1, max_chunk_bytes // per_source)
    for start in range(0, count, step):
        yield slice(start, min(start + step, count))


def paste_stamps(
    images: torch.Tensor, stamps: torch.Tensor, image_index: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> None:
    """Add stamps centred on ``round(x), round(y)`` to images, clipping at the edges.

    Parameters
    ----------
    images
        Shape (B, H, W), modified in place.
    stamps
        Shape (n, S, S) with odd ``S``.
    image_index
        Image of each stamp, shape (n,).
    x, y
        Centres in pixels, shape (n,).
    """
    n_images, height, width = images.shape
    half_size = stamps.shape[-1] // 2
    offsets = torch.arange(-half_size, half_size + 1, device=images.device)
    centre_rows, centre_cols = torch.round(y).long(), torch.round(x).long()
    rows = (centre_rows[:, None] + offsets)[:, :, None]
    cols = (centre_cols[:, None] + offsets)[:, None, :]
    flat = (image_index[:, None, None] * height + rows) * width + cols
    values = stamps.to(images.dtype)
    # Whether any stamp needs clipping, from the centres alone.
    lowest = torch.stack([centre_rows.min(), centre_cols.min()]) - half_size
    highest = torch.stack([centre_rows.max() - height, centre_cols.max() - width]) + half_size
    if bool((lowest < 0).any() | (highest >= 0).any()):
        # Pixels off the image add zero to a pixel on it (the same order of additions, so the same
        # sums), which costs less than selecting the others.
        inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
        values = torch.where(inside, values, 0.0)
        flat = flat.clamp(0, images.numel() - 1)
    images.view(-1).index_add_(0, flat.reshape(-1), values.reshape(-1))


def render_images(
    sources: RenderSources,
    psf: PointSpreadFunction,
    n_images: int,
    height: int,
    width: int,
    max_half_size: int = STAMP_HALF_SIZES[-1],
    fft_padding: float = 1.0,
    dtype: torch.dtype = torch.float32,
    max_chunk_bytes: int = 256 * 2**20,
) -> torch.Tensor:
    """Render sources into a batch of noiseless images.

    Sources are grouped by stamp size (`render_stamps_by_size`), rendered in
    chunks bounded by ``max_chunk_bytes`` and added to the images; stamps
    that extend beyond an image are clipped.

    Parameters
    ----------
    sources
        ``n`` sources; ``sources.image_index`` must be in ``[0, n_images)``.
    psf
        PSF batch indexed by ``sources.psf_index``.
    n_images, height, width
        Output shape (B, H, W).
    max_half_size
        Largest stamp half-size in pixels.
    fft_padding
        See `render_stamps`.
    dtype
        Real dtype of the images.
    max_chunk_bytes
        Approximate memory bound of one rendering chunk.

    Returns
    -------
    images
        Shape (B, H, W), in the units of ``sources.flux``.
    """
    device = sources.x.device
    if len(sources) == 0:
        return torch.zeros(n_images, height, width, device=device, dtype=dtype)
    half_sizes = stamp_half_size(sources, psf, max_half_size)
    # Stamps are added to a canvas with a margin, so that those within it need no clipping (see
    # `paste_stamps`); the margin holds the largest stamp but at most half the image, since a canvas
    # many times the image's area (small images, big stamps) costs more to clear than clipping the
    # few stamps beyond it.  It is even so that shifting a position by it does not change which
    # pixel it rounds to (torch rounds halves to even).
    margin = min(int(half_sizes.max()), max(height, width) // 2)
    margin += margin % 2
    canvas = torch.zeros(n_images, height + 2 * margin, width + 2 * margin, device=device, dtype=dtype)
    for members, stamps in _stamps_by_size(sources, psf, half_sizes, fft_padding, dtype, max_chunk_bytes):
        paste_stamps(
            canvas,
            stamps,
            sources.image_index[members],
            sources.x[members] + margin,
            sources.y[members] + margin,
        )
    return canvas[:, margin : margin + height, margin : margin + width].contiguous()


def catalog_to_render_sources(catalog: FullCatalog, pixel_scale_arcsec: float) -> RenderSources:
    """Flatten a full catalog into renderer input (image ``b`` uses PSF ``b``).

    Parameters
    ----------
    catalog
        Sources with sizes in arcsec; its `KNOT_FIELDS`, where it has them,
        give the galaxies' knots.
    pixel_scale_arcsec
        Arcsec per pixel.

    Returns
    -------
    sources
        The valid entries, in pixel units.
    """
    valid = catalog.is_valid
    image_index = torch.arange(catalog.batch_size, device=valid.device)[:, None].expand_as(valid)[valid]
    fields = {name: value[valid] for name, value in catalog.fields.items()}
    return RenderSources(
        x=catalog.x[valid],
        y=catalog.y[valid],
        flux=fields["flux_njy"],
        is_galaxy=fields["is_galaxy"],
        disk_frac=fields["disk_frac"],
        disk_hlr_pix=fields["disk_hlr_arcsec"] / pixel_scale_arcsec,
        disk_q=fields["disk_q"],
        bulge_hlr_pix=fields["bulge_hlr_arcsec"] / pixel_scale_arcsec,
        bulge_q=fields["bulge_q"],
        position_angle_rad=fields["position_angle_rad"],
        image_index=image_index,
        psf_index=image_index,
        **{name: fields.get(name) for name in KNOT_FIELDS},
    )
