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
    "stamp_half_size",
]

import dataclasses
import math
from collections.abc import Callable, Iterator

import torch

from ..catalog import FullCatalog
from ._knots import KNOT_EXTENT_HLR, KNOT_FIELDS, knot_fluxes, knot_offsets_pix
from ._profiles import EXPONENTIAL_HLR_OVER_SCALE, devaucouleurs_fourier_squared, exponential_fourier_squared
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


def _galaxy_fourier(sources: RenderSources, ky: torch.Tensor, kx: torch.Tensor) -> torch.Tensor:
    """Bulge+disk transforms scaled by flux, shape (n, N, N // 2 + 1).

    An area-preserving shear to axis ratio q along angle theta maps the
    round transform's squared argument to ``k_major^2 / q + k_minor^2 q``;
    with the profile scale r folded in, ``(r^2 / q) k_major^2 + (r^2 q) k_minor^2``.
    """

    def column(values: torch.Tensor) -> torch.Tensor:
        return values.to(kx.dtype)[:, None, None]

    cos_angle = column(torch.cos(sources.position_angle_rad))
    sin_angle = column(torch.sin(sources.position_angle_rad))
    k_major_sq = torch.add(kx * cos_angle, ky * sin_angle).square_()
    k_minor_sq = torch.sub(ky * cos_angle, kx * sin_angle).square_()

    def sheared_squared(scale: torch.Tensor, axis_ratio: torch.Tensor) -> torch.Tensor:
        scale_sq, q = column(scale.square()), column(axis_ratio)
        return torch.addcmul(k_minor_sq * (scale_sq * q), k_major_sq, scale_sq / q)

    disk_arg_sq = sheared_squared(sources.disk_hlr_pix / EXPONENTIAL_HLR_OVER_SCALE, sources.disk_q)
    disk = exponential_fourier_squared(disk_arg_sq)
    bulge = devaucouleurs_fourier_squared(sheared_squared(sources.bulge_hlr_pix, sources.bulge_q))
    disk_flux = sources.flux * sources.disk_frac
    if sources.knot_frac is not None:
        # The knots' share of the disk light is drawn as points (`_knot_fourier`).
        disk_flux = disk_flux * torch.where(sources.has_knots, 1.0 - sources.knot_frac, 1.0)
    disk_flux = column(disk_flux)
    bulge_flux = column(sources.flux * (1.0 - sources.disk_frac))
    return disk.mul_(disk_flux).addcmul_(bulge, bulge_flux)


def _knot_fourier(sources: RenderSources, ky: torch.Tensor, kx: torch.Tensor) -> torch.Tensor:
    """Transforms of the galaxies' knots, ``sum_j f_j exp(-i k . d_j)``, shape (n, N, N // 2 + 1).

    The phase factor of a point is separable in ``ky`` and ``kx``, so the sum
    over knots is one batched complex matrix product of (n, N, J) by (n, J, N // 2 + 1).
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
    ).to(kx.dtype)
    fluxes = knot_fluxes(sources.flux, sources.disk_frac, sources.knot_frac, sources.knot_count, n_knots).to(
        kx.dtype
    )
    phase_y = torch.polar(fluxes[..., None], -ky[:, 0] * offsets[..., 1:2])
    phase_x = torch.polar(torch.ones_like(fluxes[..., None]), -kx[0] * offsets[..., 0:1])
    return torch.bmm(phase_y.transpose(1, 2), phase_x)


def render_stamps(
    sources: RenderSources,
    psf: PointSpreadFunction,
    half_size: int,
    fft_padding: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Render each source on a stamp centred on its nearest pixel.

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
    stamp_size = 2 * half_size + 1
    fft_size = _next_fft_size(max(math.ceil(fft_padding * stamp_size), psf.min_fft_size))
    device = sources.x.device
    ky, kx = rfft_wavenumbers(fft_size, device, dtype)
    n_sources = len(sources)
    is_galaxy = sources.is_galaxy
    if bool(is_galaxy.all()):
        profile = _galaxy_fourier(sources, ky, kx)
    else:
        profile = sources.flux.to(dtype)[:, None, None].expand(n_sources, fft_size, kx.shape[-1]).clone()
        galaxies = is_galaxy.nonzero().squeeze(1)
        if galaxies.numel() > 0:
            profile[galaxies] = _galaxy_fourier(sources.select(galaxies), ky, kx)
    knotty = sources.has_knots.nonzero().squeeze(1)
    if knotty.numel() > 0:
        profile = torch.complex(profile, torch.zeros_like(profile))
        profile[knotty] += _knot_fourier(sources.select(knotty), ky, kx)
    psf_transform = psf.fourier_grid(fft_size, device, dtype)
    if psf.n_psf > 1:
        psf_transform = psf_transform[sources.psf_index]
    # The sub-pixel shift is separable: exp(-i ky y) exp(-i kx x), placing the
    # source at the grid centre plus its offset from its nearest pixel.
    centre = fft_size // 2
    shift_x = (sources.x - torch.round(sources.x)).to(dtype)[:, None, None] + centre
    shift_y = (sources.y - torch.round(sources.y)).to(dtype)[:, None, None] + centre
    phase_x = torch.polar(torch.ones_like(kx * shift_x), -(kx * shift_x))
    phase_y = torch.polar(torch.ones_like(ky * shift_y), -(ky * shift_y))
    if psf_transform.is_complex():
        transform = (profile * phase_y).mul_(psf_transform * phase_x)
    else:
        transform = (profile.mul_(psf_transform) * phase_y).mul_(phase_x)
    images = torch.fft.irfft2(transform, s=(fft_size, fft_size))
    return images[:, centre - half_size : centre + half_size + 1, centre - half_size : centre + half_size + 1]


def _chunks(count: int, half_size: int, fft_padding: float, max_chunk_bytes: int) -> Iterator[slice]:
    fft_size = _next_fft_size(math.ceil(fft_padding * (2 * half_size + 1)))
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
    rows = (torch.round(y).long()[:, None] + offsets)[:, :, None]
    cols = (torch.round(x).long()[:, None] + offsets)[:, None, :]
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    flat = (image_index[:, None, None] * height + rows) * width + cols
    if bool(inside.all()):  # nothing to clip: no boolean indexing, which costs more than the sum
        images.view(-1).index_add_(0, flat.reshape(-1), stamps.reshape(-1).to(images.dtype))
    else:
        images.view(-1).index_add_(0, flat[inside], stamps[inside].to(images.dtype))


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

    Sources are grouped by stamp size (`stamp_half_size`), rendered in
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
    # Stamps are added to a canvas with a margin that holds the largest, so that none is clipped (see
    # `paste_stamps`); the margin is even so that shifting a position by it does not change which
    # pixel it rounds to (torch rounds halves to even).
    margin = int(half_sizes.max()) + int(half_sizes.max()) % 2
    canvas = torch.zeros(n_images, height + 2 * margin, width + 2 * margin, device=device, dtype=dtype)
    for half_size in torch.unique(half_sizes).tolist():
        group = sources.select((half_sizes == half_size).nonzero().squeeze(1))
        for chunk in _chunks(len(group), half_size, fft_padding, max_chunk_bytes):
            whole = chunk.start == 0 and chunk.stop == len(group)
            part = group if whole else group.select(torch.arange(chunk.start, chunk.stop, device=device))
            stamps = render_stamps(part, psf, half_size, fft_padding, dtype)
            paste_stamps(canvas, stamps, part.image_index, part.x + margin, part.y + margin)
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
