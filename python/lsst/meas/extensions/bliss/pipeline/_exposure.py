"""Adapters from an `lsst.images.VisitImage` to the arrays and callables of the core."""

from __future__ import annotations

__all__ = [
    "ExposurePixels",
    "calibrated_exposure",
    "exposure_pixels",
    "local_pixel_scale_arcsec",
    "psf_kernel_function",
]

import dataclasses
from collections.abc import Callable, Sequence

import astropy.units as u
import numpy as np

from lsst.images import VisitImage


@dataclasses.dataclass
class ExposurePixels:
    """Pixels of one exposure as the core wants them.

    Attributes
    ----------
    image
        Image in nJy, shape (H, W), float32.
    variance
        Variance in nJy^2, shape (H, W), float32.
    invalid
        True where a pixel is flagged in one of the requested mask planes,
        shape (H, W).
    x0, y0
        Parent-pixel coordinates of array element (0, 0).
    missing_planes
        Requested mask planes that the exposure's mask schema lacks.
    """

    image: np.ndarray
    variance: np.ndarray
    invalid: np.ndarray
    x0: int
    y0: int
    missing_planes: list[str]


def calibrated_exposure(exposure: VisitImage) -> VisitImage:
    """The exposure with image and variance in nJy.

    Pixels already in a spectral flux density unit are rescaled; pixels in
    instrumental units (counts, electrons) are calibrated with the exposure's
    photometric scaling (`lsst.images.VisitImage.convert_unit`), pixel by pixel
    where the scaling varies across the detector.  The variance follows the
    image (the square of the same factor).  The input is not modified.

    Raises
    ------
    ValueError
        If the pixels cannot be brought to nJy (no photometric scaling, or one
        in other units), or the variance unit is not the square of the image
        unit; the message names the units and what is missing.
    """
    unit = exposure.unit
    variance_unit = exposure.variance.unit
    if unit is not None and variance_unit is not None and not variance_unit.is_equivalent(unit**2):
        raise ValueError(f"The variance unit {variance_unit} is not the square of the image unit {unit}.")
    try:
        return exposure.convert_unit(u.nJy, copy="as-needed")
    except (u.UnitConversionError, u.UnitsError, TypeError) as err:
        raise ValueError(
            f"The image unit is {unit}, and the exposure has no photometric calibration that converts it "
            f"to nJy ({err}). BLISS needs calibrated flux densities: run it on calibrated exposures "
            "(calexp, visit_image) or attach their photometric scaling."
        ) from err


def exposure_pixels(exposure: VisitImage, invalid_mask_planes: Sequence[str]) -> ExposurePixels:
    """Image, variance and invalid-pixel map of an exposure, in nJy.

    Parameters
    ----------
    exposure
        Single-visit image in nJy, or in instrumental units with its
        photometric scaling (see `calibrated_exposure`).
    invalid_mask_planes
        Mask planes whose pixels the network must not trust.

    Raises
    ------
    ValueError
        See `calibrated_exposure`.
    """
    exposure = calibrated_exposure(exposure)
    image = np.asarray(exposure.image.array, dtype=np.float32)
    variance = np.asarray(exposure.variance.array, dtype=np.float32)
    mask = exposure.mask
    invalid = np.zeros(image.shape, dtype=bool)
    missing = []
    for plane in invalid_mask_planes:
        if plane in mask.schema.names:
            invalid |= mask.get(plane)
        else:
            missing.append(plane)
    bbox = exposure.bbox
    return ExposurePixels(image, variance, invalid, int(bbox.x.start), int(bbox.y.start), missing)


def psf_kernel_function(exposure: VisitImage) -> Callable[[float, float], np.ndarray]:
    """The exposure's PSF kernel as the core's PSF callable.

    Returns
    -------
    kernel_at
        ``(x, y) -> kernel image`` with ``x, y`` in array (local) pixel
        coordinates, as `infer_frame` evaluates it; the PSF model itself is
        evaluated at the matching parent-pixel position.
    """
    psf = exposure.psf
    x0, y0 = int(exposure.bbox.x.start), int(exposure.bbox.y.start)

    def kernel_at(x: float, y: float) -> np.ndarray:
        return np.asarray(psf.compute_kernel_image(x=float(x) + x0, y=float(y) + y0).array, dtype=np.float64)

    return kernel_at


def local_pixel_scale_arcsec(exposure: VisitImage, x: float | None = None, y: float | None = None) -> float:
    """Pixel scale (arcsec per pixel, square root of the pixel's sky area) at a point.

    Parameters
    ----------
    exposure
        Image with a sky projection.
    x, y
        Parent-pixel position; default the centre of the image.

    Raises
    ------
    ValueError
        If the exposure has no sky projection.
    """
    projection = exposure.sky_projection
    if projection is None:
        raise ValueError("The exposure has no sky projection (WCS); cannot measure its pixel scale.")
    bbox = exposure.bbox
    x = float(bbox.x.center) if x is None else x
    y = float(bbox.y.center) if y is None else y
    sky = projection.pixel_to_sky(x=np.array([x, x + 1.0, x]), y=np.array([y, y, y + 1.0]))
    step_x = sky[0].separation(sky[1]).to_value(u.arcsec)
    step_y = sky[0].separation(sky[2]).to_value(u.arcsec)
    return float(np.sqrt(step_x * step_y))
