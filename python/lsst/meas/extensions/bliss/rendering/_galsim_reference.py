"""GalSim renderings of the renderer's source model, the reference for validation.

The profiles are built with GalSim's own classes (``Exponential``,
``DeVaucouleurs`` with the same truncation, ``Gaussian``, ``Moffat``, and
``DeltaFunction`` for star-forming knots, at the points `knot_offsets_pix`
places them) in pixel units (image scale 1), so a stamp drawn here is the
independent rendering that the torch renderer must reproduce.
"""

from __future__ import annotations

__all__ = ["galsim_galaxy", "galsim_psf", "render_galsim_images", "render_galsim_stamp"]

import galsim
import numpy as np
import torch

from ._knots import knot_fluxes, knot_offsets_pix
from ._profiles import DEVAUCOULEURS_TRUNCATION_HLR
from ._psf import GaussianPsf, MoffatPsf, PointSpreadFunction
from ._render import STAMP_HALF_SIZES, RenderSources, stamp_half_size

_REFERENCE_GSPARAMS = galsim.GSParams(folding_threshold=1e-3, maxk_threshold=1e-4, kvalue_accuracy=1e-6)


def galsim_psf(
    psf: PointSpreadFunction, index: int, gsparams: galsim.GSParams | None = _REFERENCE_GSPARAMS
) -> galsim.GSObject:
    """The GalSim equivalent of PSF ``index`` of an analytic PSF batch (pixel units).

    Raises
    ------
    TypeError
        For PSF types without a GalSim analytic equivalent (e.g. `ImagePsf`).
    """
    if isinstance(psf, GaussianPsf):
        return galsim.Gaussian(fwhm=float(psf.fwhm_pix[index]), gsparams=gsparams)
    if isinstance(psf, MoffatPsf):
        return galsim.Moffat(beta=psf.beta, fwhm=float(psf.fwhm_pix[index]), gsparams=gsparams)
    raise TypeError(f"No GalSim reference for PSF type {type(psf).__name__}.")


def galsim_galaxy(
    sources: RenderSources, index: int, gsparams: galsim.GSParams | None = _REFERENCE_GSPARAMS
) -> galsim.GSObject:
    """The GalSim profile of galaxy ``index`` of a source batch, centred on the origin (pixel units).

    Its disk, its bulge and, where it has knots, one ``DeltaFunction`` per
    knot at the position and flux the torch renderer uses.
    """

    def value(name: str) -> float:
        return float(getattr(sources, name)[index])

    flux = value("flux")
    angle = value("position_angle_rad") * galsim.radians
    disk_frac = value("disk_frac")
    has_knots = bool(sources.has_knots[index])
    knot_frac = value("knot_frac") if has_knots else 0.0
    components = []
    if disk_frac > 0 and knot_frac < 1:
        disk = galsim.Exponential(
            half_light_radius=value("disk_hlr_pix"),
            flux=flux * disk_frac * (1.0 - knot_frac),
            gsparams=gsparams,
        )
        components.append(disk.shear(q=value("disk_q"), beta=angle))
    if disk_frac < 1:
        bulge_hlr = value("bulge_hlr_pix")
        bulge = galsim.DeVaucouleurs(
            half_light_radius=bulge_hlr,
            trunc=DEVAUCOULEURS_TRUNCATION_HLR * bulge_hlr,
            flux=flux * (1.0 - disk_frac),
            gsparams=gsparams,
        )
        components.append(bulge.shear(q=value("bulge_q"), beta=angle))
    if has_knots:
        one = sources.select(torch.tensor([index], device=sources.x.device))
        assert one.knot_count is not None and one.knot_seed is not None and one.knot_offset_hlr is not None
        assert one.knot_frac is not None
        n_knots = round(float(one.knot_count[0]))
        offsets = knot_offsets_pix(
            one.knot_seed, n_knots, one.disk_hlr_pix, one.disk_q, one.position_angle_rad, one.knot_offset_hlr
        )[0]
        fluxes = knot_fluxes(one.flux, one.disk_frac, one.knot_frac, one.knot_count, n_knots)[0]
        for (dx, dy), knot_flux in zip(offsets.tolist(), fluxes.tolist(), strict=True):
            components.append(galsim.DeltaFunction(flux=knot_flux, gsparams=gsparams).shift(dx, dy))
    return galsim.Add(components, gsparams=gsparams)


def render_galsim_stamp(
    sources: RenderSources, index: int, psf: PointSpreadFunction, half_size: int, accurate: bool = True
) -> np.ndarray:
    """Draw source ``index`` with GalSim on the stamp `render_stamps` would use.

    Parameters
    ----------
    sources
        Source batch (pixel units).
    index
        Which source to draw.
    psf
        Analytic PSF batch indexed by ``sources.psf_index``.
    half_size
        Stamp half-size; the stamp is centred on the source's nearest pixel.
    accurate
        Use tightened GalSim accuracy parameters (for validation); False uses
        GalSim's defaults, i.e. what a simulation pipeline would run (for timing).

    Returns
    -------
    stamp
        Shape (2 h + 1, 2 h + 1), float64, in the units of ``sources.flux``.
    """

    def value(name: str) -> float:
        return float(getattr(sources, name)[index])

    gsparams = _REFERENCE_GSPARAMS if accurate else None
    flux = value("flux")
    profile = galsim_psf(psf, int(sources.psf_index[index]), gsparams)
    if bool(sources.is_galaxy[index]):
        profile = galsim.Convolve(galsim_galaxy(sources, index, gsparams), profile, gsparams=gsparams)
    else:
        profile = profile.withFlux(flux)
    x, y = value("x"), value("y")
    size = 2 * half_size + 1
    image = galsim.ImageD(size, size, scale=1.0)
    profile.drawImage(image, offset=(x - round(x), y - round(y)))
    return image.array


def render_galsim_images(
    sources: RenderSources,
    psf: PointSpreadFunction,
    n_images: int,
    height: int,
    width: int,
    max_half_size: int = STAMP_HALF_SIZES[-1],
) -> np.ndarray:
    """Draw whole scenes with GalSim (default accuracy): an independent rendering of a catalog.

    Each source is drawn on the stamp `stamp_half_size` gives it (as the torch
    renderer would), centred on its nearest pixel, and added to its image
    where the stamp overlaps it.

    Parameters
    ----------
    sources
        ``n`` sources (pixel units); ``sources.image_index`` in ``[0, n_images)``.
    psf
        Analytic PSF batch indexed by ``sources.psf_index``.
    n_images, height, width
        Output shape.
    max_half_size
        Largest stamp half-size, pixels.

    Returns
    -------
    images
        Shape (n_images, height, width), float64, in the units of ``sources.flux``.
    """
    images = [galsim.ImageD(width, height, xmin=0, ymin=0, scale=1.0) for _ in range(n_images)]
    if len(sources) == 0:
        return np.zeros((n_images, height, width))
    half_sizes = stamp_half_size(sources, psf, max_half_size).tolist()
    psfs: dict[int, galsim.GSObject] = {}
    for index, half_size in enumerate(half_sizes):
        psf_index = int(sources.psf_index[index])
        if psf_index not in psfs:
            psfs[psf_index] = galsim_psf(psf, psf_index, gsparams=None)
        flux = float(sources.flux[index])
        if bool(sources.is_galaxy[index]):
            profile = galsim.Convolve(galsim_galaxy(sources, index, gsparams=None), psfs[psf_index])
        else:
            profile = psfs[psf_index].withFlux(flux)
        x, y = float(sources.x[index]), float(sources.y[index])
        size = 2 * half_size + 1
        stamp = galsim.ImageD(size, size, scale=1.0)
        stamp.setCenter(round(x), round(y))
        profile.drawImage(stamp, offset=(x - round(x), y - round(y)))
        image = images[int(sources.image_index[index])]
        overlap = stamp.bounds & image.bounds
        if overlap.isDefined():
            image[overlap] += stamp[overlap]
    return np.stack([image.array for image in images])
