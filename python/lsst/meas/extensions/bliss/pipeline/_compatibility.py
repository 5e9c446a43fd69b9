"""Whether an exposure looks like the data a model was trained on."""

from __future__ import annotations

__all__ = [
    "ExposureConditions",
    "compatibility_problems",
    "measure_exposure_conditions",
    "model_psf_fwhm_range_arcsec",
]

import dataclasses

import numpy as np

from lsst.images import VisitImage

from ..inference import psf_kernel_fwhm_pix
from ..io import BlissModel
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


def model_psf_fwhm_range_arcsec(model: BlissModel) -> tuple[float, float]:
    """PSF FWHM range of a model's training simulations, arcsec."""
    fwhm_range = model.simulator.psf_fwhm_range_arcsec
    if fwhm_range is None:
        return (model.conditions.psf_fwhm_arcsec, model.conditions.psf_fwhm_arcsec)
    return (float(fwhm_range[0]), float(fwhm_range[1]))


def compatibility_problems(
    model: BlissModel,
    exposure: ExposureConditions,
    pixel_scale_rtol: float,
    psf_fwhm_margin_arcsec: float,
    extra_bands: tuple[str, ...] = (),
) -> list[str]:
    """Differences between an exposure and the conditions a model was trained for.

    Parameters
    ----------
    model
        The model and its recorded training conditions.
    exposure
        Conditions measured on the exposure.
    pixel_scale_rtol
        Accepted relative difference of the pixel scales.
    psf_fwhm_margin_arcsec
        Accepted excursion of the exposure's PSF FWHM beyond the trained range.
    extra_bands
        Bands accepted besides the model's own.

    Returns
    -------
    problems
        One sentence per difference, naming the config field that accepts
        it; empty when the exposure is compatible.
    """
    problems = []
    trained = model.conditions
    relative = abs(exposure.pixel_scale_arcsec / trained.pixel_scale_arcsec - 1.0)
    if relative > pixel_scale_rtol:
        problems.append(
            f"pixel scale {exposure.pixel_scale_arcsec:.4f}\"/px differs from the model's "
            f'{trained.pixel_scale_arcsec:.4f}"/px by {relative:.1%} (config.pixel_scale_rtol='
            f"{pixel_scale_rtol})"
        )
    if exposure.band is not None and exposure.band != trained.band and exposure.band not in extra_bands:
        problems.append(
            f"band {exposure.band!r} differs from the model's {trained.band!r} (config.extra_bands="
            f"{list(extra_bands)})"
        )
    low, high = model_psf_fwhm_range_arcsec(model)
    seen_low, seen_high = exposure.psf_fwhm_arcsec
    if seen_low < low - psf_fwhm_margin_arcsec or seen_high > high + psf_fwhm_margin_arcsec:
        problems.append(
            f'PSF FWHM {seen_low:.3f}"-{seen_high:.3f}" leaves the model\'s trained range '
            f'{low:.3f}"-{high:.3f}" by more than config.psf_fwhm_margin_arcsec={psf_fwhm_margin_arcsec}'
        )
    return problems
