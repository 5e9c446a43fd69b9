"""Adapters from an `lsst.images.VisitImage` to the arrays and callables of the core."""

from __future__ import annotations

__all__ = ["ExposurePixels", "exposure_pixels", "local_pixel_scale_arcsec", "psf_kernel_function"]

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


def exposure_pixels(exposure: VisitImage, invalid_mask_planes: Sequence[str]) -> ExposurePixels:
    """Image, variance and invalid-pixel map of an exposure, in nJy.

    Parameters
    ----------
    exposure
        Calibrated single-visit image.
    invalid_mask_planes
        Mask planes whose pixels the network must not trust.

    Raises
    ------
    ValueError
        If the image is not in units convertible to nJy (e.g. uncalibrated
        counts), or the variance unit is not the square of the image unit.
    """
    unit = exposure.unit
    if unit is None or not unit.is_equivalent(u.nJy):
        raise ValueError(
            f"The image unit is {unit}; BLISS needs calibrated flux densities (nJy or another "
            "spectral flux density unit). Run it on calibrated exposures (calexp / visit_image)."
        )
    scale = float(unit.to(u.nJy))
    variance_unit = exposure.variance.unit
    if variance_unit is not None and not variance_unit.is_equivalent(unit**2):
        raise ValueError(f"The variance unit {variance_unit} is not the square of the image unit {unit}.")
    variance_scale = scale**2 if variance_unit is None else float(variance_unit.to(u.nJy**2))
    image = np.asarray(exposure.image.array, dtype=np.float32) * np.float32(scale)
    variance = np.asarray(exposure.variance.array, dtype=np.float32) * np.float32(variance_scale)
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
