"""The photutils detection, deblending and photometry baseline.

The second classical method BLISS is compared with (after SEP): photutils'
image segmentation, as Astropy users run it.  The image is smoothed with a
Gaussian of the PSF's FWHM, pixels whose smoothed value exceeds ``nsigma``
times the smoothed image's own noise are segmented into sources of at least
``n_pixels`` connected pixels, the segments are deblended by multi-threshold
splitting plus watershed (`photutils.segmentation.deblend_sources`, the
SExtractor algorithm), and `photutils.segmentation.SourceCatalog` measures
each deblended segment: its centroid and its Kron flux.

Positions follow the LSST convention that the centre of array element
``[0, 0]`` is at ``(x, y) = (0, 0)``, as photutils' are.

`photutils` is an optional dependency (the ``test`` and ``validation``
extras); it is imported when first used.
"""

from __future__ import annotations

__all__ = ["PhotutilsCatalog", "run_photutils"]

import dataclasses
import math
import warnings
from typing import Any, ClassVar

import numpy as np
import torch

from ._sep import BaselineCatalog, as_float_image


def _import_photutils() -> Any:
    try:
        import photutils.segmentation as segmentation
    except ImportError as error:
        raise ImportError(
            "The photutils baseline needs the 'photutils' package; install it with the 'test' or "
            "'validation' extras."
        ) from error
    return segmentation


@dataclasses.dataclass
class PhotutilsCatalog(BaselineCatalog):
    """Sources found by photutils in one image; every array has shape (n,).

    Attributes
    ----------
    x, y
        Centroid of the deblended segment in pixels (x column, y row, pixel
        centres at integer coordinates).
    flux_njy
        Kron flux in nJy (aperture 2.5 Kron radii, at least 1.4 pixels'
        worth of radius), or the segment flux where the Kron aperture could
        not be measured.
    flux_err_njy
        Its error in nJy from the variance plane, > 0.
    snr
        ``flux_njy / flux_err_njy``.
    n_pixels
        Pixels in the source's segment.
    """

    x: np.ndarray
    y: np.ndarray
    flux_njy: np.ndarray
    flux_err_njy: np.ndarray
    snr: np.ndarray
    n_pixels: np.ndarray

    _COLUMN_DTYPES: ClassVar[dict[str, type]] = {"n_pixels": np.int64}


def run_photutils(
    image: np.ndarray | torch.Tensor,
    variance: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor | None,
    psf_fwhm_pix: float,
    nsigma: float = 4.0,
    n_pixels: int = 5,
    n_levels: int = 32,
    contrast: float = 0.005,
) -> PhotutilsCatalog:
    """Detect, deblend and measure sources with photutils.

    The detection threshold is in units of the *smoothed* image's noise,
    ``sqrt(variance * kernel^2)`` (convolution), so that ``nsigma=4`` is the
    same significance as SEP's default threshold of 1.5 per-pixel sigma with
    its 3x3 kernel; the deblending levels and contrast are those of the SEP
    baseline.

    Parameters
    ----------
    image
        Background-subtracted image in nJy, shape (H, W).
    variance
        Its variance in nJy^2, shape (H, W).
    mask
        Pixels to ignore where non-zero, shape (H, W), or `None`.
    psf_fwhm_pix
        PSF FWHM in pixels: the FWHM of the Gaussian smoothing kernel.
    nsigma
        Detection threshold in units of the smoothed image's noise.
    n_pixels
        Minimum number of connected pixels of a source (and of a deblended child).
    n_levels, contrast
        Multi-threshold deblending levels and minimum flux fraction of a child.

    Returns
    -------
    catalog
        The detections; every value is finite.  Masked pixels, non-finite
        values and non-positive variances are excluded from detection and
        photometry.

    Raises
    ------
    ValueError
        On mismatched shapes, a non-2D image, or a non-positive ``psf_fwhm_pix``.
    """
    from astropy.convolution import convolve

    segmentation = _import_photutils()
    data, var = as_float_image(image), as_float_image(variance)
    if data.ndim != 2:
        raise ValueError(f"image must have shape (H, W); got {data.shape}.")
    if var.shape != data.shape:
        raise ValueError(f"variance has shape {var.shape}; expected the image's shape {data.shape}.")
    if not (math.isfinite(psf_fwhm_pix) and psf_fwhm_pix > 0):
        raise ValueError(f"psf_fwhm_pix={psf_fwhm_pix!r} must be finite and > 0.")
    invalid = ~np.isfinite(data) | ~np.isfinite(var) | (var <= 0)
    if mask is not None:
        mask_array = as_float_image(mask)
        if mask_array.shape != data.shape:
            raise ValueError(f"mask has shape {mask_array.shape}; expected the image's shape {data.shape}.")
        invalid |= mask_array != 0
    if invalid.all():
        return PhotutilsCatalog.empty()
    data = np.where(invalid, 0.0, data)
    var = np.where(invalid, 0.0, var)

    size = 2 * int(math.ceil(1.5 * psf_fwhm_pix)) + 1
    kernel = segmentation.make_2dgaussian_kernel(psf_fwhm_pix, size=size)
    kernel_array = np.asarray(kernel.array, dtype=np.float64)
    smoothed = convolve(data, kernel_array, normalize_kernel=False, boundary="fill", fill_value=0.0)
    smoothed_noise = np.sqrt(
        convolve(var, kernel_array**2, normalize_kernel=False, boundary="fill", fill_value=0.0)
    )
    threshold = np.where(invalid, np.inf, nsigma * np.maximum(smoothed_noise, 1e-30))
    with warnings.catch_warnings():
        # photutils warns when nothing is detected or a segment cannot be split; both are outcomes here.
        warnings.simplefilter("ignore")
        segments = segmentation.detect_sources(smoothed, threshold, n_pixels, mask=invalid)
        if segments is None:
            return PhotutilsCatalog.empty()
        segments = segmentation.deblend_sources(
            smoothed, segments, n_pixels, n_levels=n_levels, contrast=contrast, progress_bar=False
        )
        catalog = segmentation.SourceCatalog(
            data, segments, convolved_data=smoothed, error=np.sqrt(var), mask=invalid
        )
        x, y = np.asarray(catalog.xcentroid, float), np.asarray(catalog.ycentroid, float)
        kron_flux = np.asarray(catalog.kron_flux, float)
        kron_err = np.asarray(catalog.kron_fluxerr, float)
        segment_flux = np.asarray(catalog.segment_flux, float)
        segment_err = np.asarray(catalog.segment_fluxerr, float)
    use_kron = np.isfinite(kron_flux) & np.isfinite(kron_err) & (kron_err > 0)
    flux = np.where(use_kron, kron_flux, segment_flux)
    flux_err = np.where(use_kron, kron_err, segment_err)
    result = PhotutilsCatalog(
        x=x,
        y=y,
        flux_njy=flux,
        flux_err_njy=flux_err,
        snr=flux / np.where(flux_err > 0, flux_err, np.nan),
        n_pixels=np.asarray(catalog.area.value, dtype=np.int64),
    )
    finite = np.isfinite(x) & np.isfinite(y) & np.isfinite(flux) & np.isfinite(flux_err) & (flux_err > 0)
    return result if finite.all() else result.select(finite)
