"""The observing conditions of an exposure, measured for the check against a model's trained ranges
(the core's `out_of_range_problems`) and for training on conditions like the exposures'."""

from __future__ import annotations

__all__ = ["ExposureConditions", "measure_exposure_conditions"]

import dataclasses

import numpy as np

from lsst.images import VisitImage

from ..inference import psf_kernel_fwhm_pix
from ..survey import SurveyConditions
from ._exposure import local_pixel_scale_arcsec


@dataclasses.dataclass(frozen=True)
class ExposureConditions:
    """Observing conditions measured on one exposure.

    Attributes
    ----------
    pixel_scale_arcsec
        Pixel scale at the image centre, arcsec per pixel.
    band
        Filter band, or None when the exposure does not say.
    psf_fwhm_arcsec
        Smallest and largest PSF FWHM on a grid over the image, arcsec (the
        FWHM of the model's PSF family with the same effective area).
    noise_njy
        Median per-pixel noise (square root of the variance) of valid pixels, nJy.
    unit
        Unit of the image pixels.
    """

    pixel_scale_arcsec: float
    band: str | None
    psf_fwhm_arcsec: tuple[float, float]
    noise_njy: float
    unit: str


def measure_exposure_conditions(
    exposure: VisitImage, reference: SurveyConditions, grid_points: int = 3
) -> ExposureConditions:
    """Measure pixel scale, band, PSF size range and noise of an exposure.

    Parameters
    ----------
    exposure
        Calibrated image with PSF and sky projection.
    reference
        Conditions whose PSF family (Gaussian or Moffat) defines the FWHM of a
        PSF kernel (see `psf_kernel_fwhm_pix`).
    grid_points
        The PSF is evaluated on a ``grid_points x grid_points`` grid.

    Raises
    ------
    ValueError
        If the exposure lacks a sky projection or its PSF cannot be evaluated.
    """
    pixel_scale = local_pixel_scale_arcsec(exposure)
    bbox = exposure.bbox
    xs = np.linspace(bbox.x.start, bbox.x.stop - 1, grid_points)
    ys = np.linspace(bbox.y.start, bbox.y.stop - 1, grid_points)
    # The FWHM of a kernel is defined in the model's PSF family at the exposure's own pixel scale.
    family = reference.replace(pixel_scale_arcsec=pixel_scale)
    fwhm = []
    for y in ys:
        for x in xs:
            try:
                kernel = np.asarray(exposure.psf.compute_kernel_image(x=float(x), y=float(y)).array)
            except Exception as err:
                raise ValueError(
                    f"The exposure's PSF cannot be evaluated at x={x:.0f}, y={y:.0f}: {err}"
                ) from err
            fwhm.append(psf_kernel_fwhm_pix(kernel, family) * pixel_scale)
    variance = np.asarray(exposure.variance.array)
    usable = np.isfinite(variance) & (variance > 0)
    noise = float(np.sqrt(np.median(variance[usable]))) if usable.any() else float("nan")
    try:
        band: str | None = exposure.band
    except (AttributeError, KeyError, ValueError):
        band = None
    return ExposureConditions(
        pixel_scale_arcsec=pixel_scale,
        band=band or None,
        psf_fwhm_arcsec=(float(min(fwhm)), float(max(fwhm))),
        noise_njy=noise,
        unit=str(exposure.unit),
    )
