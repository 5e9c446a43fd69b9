"""The SEP (Source Extractor as a library) detection and photometry baseline.

BLISS is compared with a classical pipeline run on the same images:
SEP's thresholded detection with multi-threshold deblending, and Kron
("AUTO") aperture fluxes, as SExtractor's ``FLUX_AUTO``.

SEP places the centre of array element ``[0, 0]`` at ``(x, y) = (0, 0)``,
``x`` along the second (fast) axis: the LSST convention for an image whose
origin is at pixel ``(0, 0)``, so its positions are used as they are.

`sep` is an optional dependency (the ``test`` and ``validation`` extras); it is
imported when first used.
"""

from __future__ import annotations

__all__ = ["BaselineCatalog", "SepCatalog", "run_sep", "run_sep_batch"]

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar, Self

import numpy as np
import torch

KRON_FACTOR: float = 2.5
"""Kron aperture in units of the Kron radius (SExtractor ``PHOT_AUTOPARAMS`` first value)."""

MIN_KRON_RADIUS: float = 3.5
"""Smallest Kron aperture in units of the isophotal ``a, b`` (SExtractor ``PHOT_AUTOPARAMS`` second value)."""

KRON_MOMENT_RADIUS: float = 6.0
"""Ellipse (in isophotal radii) over which the Kron radius is measured, as in SExtractor."""

_MAX_PIXSTACK: int = 2**26
_MAX_SUB_OBJECTS: int = 2**16


def _import_sep() -> Any:
    try:
        import sep
    except ImportError as error:
        raise ImportError(
            "The SEP baseline needs the 'sep' package; install it with the 'test' or 'validation' extras."
        ) from error
    return sep


class BaselineCatalog:
    """Columns of equal length, one per dataclass field: the shared behaviour of the baselines'
    catalogs.  ``_COLUMN_DTYPES`` names the columns that are not float64 (for `empty`)."""

    _COLUMN_DTYPES: ClassVar[dict[str, type]] = {}
    x: np.ndarray

    def __len__(self) -> int:
        return int(self.x.size)

    def select(self, index: np.ndarray) -> Self:
        """The sources at ``index`` (boolean mask or integer indices)."""
        columns = dataclasses.fields(self)  # type: ignore[arg-type]
        return type(self)(**{column.name: getattr(self, column.name)[index] for column in columns})

    @classmethod
    def empty(cls) -> Self:
        """A catalog without sources."""
        columns = dataclasses.fields(cls)  # type: ignore[arg-type]
        return cls(
            **{
                column.name: np.zeros(0, dtype=cls._COLUMN_DTYPES.get(column.name, np.float64))
                for column in columns
            }
        )


@dataclasses.dataclass
class SepCatalog(BaselineCatalog):
    """Sources found by SEP in one image; every array has shape (n,).

    Attributes
    ----------
    x, y
        Position in pixels (x column, y row, pixel centres at integer
        coordinates): the windowed centroid (SExtractor's ``XWIN_IMAGE``, a
        Gaussian-weighted centroid of width set by the half-light radius),
        or the isophotal barycentre where the windowed centroid fails or
        wanders more than a window width away, or when windowed positions
        were not asked for.
    x_isophotal, y_isophotal
        Isophotal barycentre in pixels (SExtractor's ``X_IMAGE``); biased by
        the noise at the isophote edge and by truncation at image edges.
    flux_njy
        Kron (AUTO) aperture flux in nJy, or a circular-aperture flux where
        the Kron radius could not be measured (``used_circular``).  Like
        SExtractor's ``FLUX_AUTO`` it misses part of the light: 2-4% of a
        star's for the LSST Moffat PSF (more for fainter stars).
    flux_err_njy
        Its error in nJy, from the variance plane (which includes the
        sources' Poisson noise), > 0.
    snr
        ``flux_njy / flux_err_njy``.
    a, b, theta
        Isophotal semi-axes (pixels) and major-axis angle (radians,
        counter-clockwise from +x), from second moments.
    kron_radius
        Kron radius in units of ``a, b`` (0 where it could not be measured).
    npix
        Pixels above the threshold.
    extract_flag
        SEP's extraction flags (``sep.OBJ_MERGED``, ``sep.OBJ_TRUNC``, ...).
    aperture_flag
        SEP's aperture flags (``sep.APER_TRUNC``, ``sep.APER_HASMASKED``, ...),
        including those of the Kron radius.
    used_circular
        True where the circular fallback aperture was used.
    """

    x: np.ndarray
    y: np.ndarray
    x_isophotal: np.ndarray
    y_isophotal: np.ndarray
    flux_njy: np.ndarray
    flux_err_njy: np.ndarray
    snr: np.ndarray
    a: np.ndarray
    b: np.ndarray
    theta: np.ndarray
    kron_radius: np.ndarray
    npix: np.ndarray
    extract_flag: np.ndarray
    aperture_flag: np.ndarray
    used_circular: np.ndarray

    _COLUMN_DTYPES: ClassVar[dict[str, type]] = {
        "npix": np.int64,
        "extract_flag": np.int64,
        "aperture_flag": np.int64,
        "used_circular": np.bool_,
    }


def as_float_image(values: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    # SEP needs native byte order; C-contiguous float64 is the safe common form.
    return np.ascontiguousarray(values, dtype=np.float64)


def _extract_with_growing_buffers(sep: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """``sep.extract``, enlarging SEP's global buffers when a crowded image overflows them.

    SEP keeps these limits as process-wide settings and raises a plain
    `Exception` when one is reached; large LSST-depth frames at a low
    threshold reach the defaults.
    """
    while True:
        try:
            return sep.extract(**kwargs)
        except Exception as error:
            message = str(error)
            pixstack = sep.get_extract_pixstack()
            sub_objects = sep.get_sub_object_limit()
            if "pixel buffer full" in message and pixstack < _MAX_PIXSTACK:
                sep.set_extract_pixstack(min(4 * pixstack, _MAX_PIXSTACK))
            elif "deblending overflow" in message and sub_objects < _MAX_SUB_OBJECTS:
                sep.set_sub_object_limit(min(4 * sub_objects, _MAX_SUB_OBJECTS))
            else:
                raise


def _windowed_positions(
    sep: Any,
    data: np.ndarray,
    mask: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    a: np.ndarray,
    flux: np.ndarray,
    shape_ok: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Windowed centroids, falling back to ``x, y`` where they fail or run off.

    The window is SExtractor's: a Gaussian of sigma ``2 r_half / 2.35``, with
    ``r_half`` the radius holding half the (aperture) flux.
    """
    usable = shape_ok & np.isfinite(flux) & (flux > 0)
    x_win, y_win = x.copy(), y.copy()
    if not usable.any():
        return x_win, y_win
    half_light_radius, _ = sep.flux_radius(
        data, x[usable], y[usable], KRON_MOMENT_RADIUS * a[usable], 0.5, normflux=flux[usable], mask=mask
    )
    sigma = 2.0 / 2.35 * np.where(np.isfinite(half_light_radius), half_light_radius, 1.0)
    sigma = np.clip(sigma, 0.5 * 2.0 / 2.35, None)
    new_x, new_y, _ = sep.winpos(data, x[usable], y[usable], sigma, mask=mask)
    # The iteration can be dragged onto a neighbour in crowded fields; a move of
    # more than a window width (or 1 px) means it left the source.
    shift = np.hypot(new_x - x[usable], new_y - y[usable])
    accept = np.isfinite(new_x) & np.isfinite(new_y) & (shift <= np.maximum(sigma, 1.0))
    index = np.flatnonzero(usable)[accept]
    x_win[index], y_win[index] = new_x[accept], new_y[accept]
    return x_win, y_win


def run_sep(
    image: np.ndarray | torch.Tensor,
    variance: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor | None = None,
    thresh: float = 1.5,
    minarea: int = 5,
    deblend_nthresh: int = 32,
    deblend_cont: float = 0.005,
    fallback_radius_pix: float = 5.0,
    windowed_positions: bool = True,
    filter_type: str = "conv",
) -> SepCatalog:
    """Detect, deblend and measure sources with SEP.

    Detection smooths the image with SEP's default 3x3 kernel and keeps
    pixels of the smoothed image above ``thresh`` times the per-pixel noise
    of the *unsmoothed* image, as SExtractor's ``DETECT_THRESH`` does (the
    smoothing lowers the noise by a factor 0.375, so 1.5 is 4 sigma of the
    smoothed image; no noise peak was found in 4 x 512 x 512 pixels of
    simulated LSST noise).  Fluxes are Kron (AUTO) aperture sums: the Kron
    radius is measured within 6 isophotal radii, the aperture is
    ``max(2.5 r_kron, 3.5)`` isophotal radii, other detections'
    pixels are masked out of each aperture (SEP then scales the sum for the
    masked area), and where the Kron radius cannot be measured a circle of
    ``fallback_radius_pix`` is used instead.

    Parameters
    ----------
    image
        Background-subtracted image in nJy, shape (H, W).
    variance
        Its variance in nJy^2, shape (H, W).
    mask
        Pixels to ignore where non-zero (any integer or bool array), shape (H, W).
    thresh
        Detection threshold in units of the per-pixel noise.
    minarea
        Minimum number of pixels above the threshold.
    deblend_nthresh
        Number of deblending levels.
    deblend_cont
        Minimum contrast of a deblended child.
    fallback_radius_pix
        Radius of the circular aperture used where the Kron radius fails.
    windowed_positions
        Report windowed centroids (SExtractor's ``XWIN_IMAGE``) instead of
        the isophotal barycentres (see `SepCatalog`).
    filter_type
        ``"conv"`` (SExtractor's convention, above) or ``"matched"`` (SEP's
        matched filter, whose threshold is in units of the smoothed noise:
        at ``thresh=1.5`` it finds about 5 noise peaks per 64 x 64 pixels).

    Returns
    -------
    catalog
        The detections; every value is finite.  Pixels that are masked, not
        finite, or have a non-positive or non-finite variance are excluded
        from detection and photometry.

    Raises
    ------
    ValueError
        If the arrays are not 2-d of one shape, the parameters are out of
        range, or no pixel is usable.
    ImportError
        If `sep` is not installed.
    """
    data = as_float_image(image)
    var = as_float_image(variance)
    if data.ndim != 2:
        raise ValueError(f"image must have shape (H, W); got {data.shape}.")
    if var.shape != data.shape:
        raise ValueError(f"variance has shape {var.shape}; expected the image shape {data.shape}.")
    bad = ~np.isfinite(data) | ~np.isfinite(var) | ~(var > 0)
    if mask is not None:
        mask_array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        if mask_array.shape != data.shape:
            raise ValueError(f"mask has shape {mask_array.shape}; expected the image shape {data.shape}.")
        bad |= mask_array != 0
    if not (thresh > 0 and minarea >= 1 and deblend_nthresh >= 1 and 0 <= deblend_cont <= 1):
        raise ValueError(
            f"Out-of-range SEP parameters: thresh={thresh} (> 0), minarea={minarea} (>= 1), "
            f"deblend_nthresh={deblend_nthresh} (>= 1), deblend_cont={deblend_cont} (in [0, 1])."
        )
    if filter_type not in ("conv", "matched"):
        raise ValueError(f"filter_type={filter_type!r} is not supported; choose 'conv' or 'matched'.")
    if not fallback_radius_pix > 0:
        raise ValueError(f"fallback_radius_pix={fallback_radius_pix} must be > 0.")
    if bad.all():
        raise ValueError("No usable pixel: every pixel is masked, non-finite, or has variance <= 0.")
    sep = _import_sep()

    # Bad pixels get harmless values (zero signal, typical noise) and are masked,
    # so that neither detection nor any aperture sum can pick up a NaN.
    data = np.where(bad, 0.0, data)
    var = np.where(bad, np.median(var[~bad]), var)
    sep_mask = np.ascontiguousarray(bad, dtype=np.float64)
    err = np.sqrt(var)

    objects, segmap = _extract_with_growing_buffers(
        sep,
        data=data,
        thresh=thresh,
        err=err,
        mask=sep_mask,
        minarea=minarea,
        deblend_nthresh=deblend_nthresh,
        deblend_cont=deblend_cont,
        filter_type=filter_type,
        segmentation_map=True,
    )
    if len(objects) == 0:
        return SepCatalog.empty()

    x = objects["x"].astype(np.float64)
    y = objects["y"].astype(np.float64)
    a = objects["a"].astype(np.float64)
    b = objects["b"].astype(np.float64)
    theta = objects["theta"].astype(np.float64)
    # Positive ids mask the pixels of other detections in each aperture.
    seg_id = np.arange(1, len(objects) + 1, dtype=np.int32)
    shape_ok = np.isfinite(a) & np.isfinite(b) & np.isfinite(theta) & (a > 0) & (b > 0)
    safe_a, safe_b = np.where(shape_ok, a, 1.0), np.where(shape_ok, b, 1.0)
    # SEP rejects apertures with b > a or |theta| > pi/2, which float32 rounding of its own output
    # can produce (theta = pi/2 rounds up to 1.5707964); such an error would end the whole image.
    safe_b = np.minimum(safe_b, safe_a)
    safe_theta = np.clip(np.where(shape_ok, theta, 0.0), -np.pi / 2, np.pi / 2)

    kron_radius, kron_flag = sep.kron_radius(
        data,
        x,
        y,
        safe_a,
        safe_b,
        safe_theta,
        KRON_MOMENT_RADIUS,
        mask=sep_mask,
        segmap=segmap,
        seg_id=seg_id,
    )
    use_kron = shape_ok & np.isfinite(kron_radius) & (kron_radius > 0)
    aperture_scale = np.maximum(KRON_FACTOR * np.where(use_kron, kron_radius, 0.0), MIN_KRON_RADIUS)
    flux, flux_err, aperture_flag = sep.sum_ellipse(
        data,
        x,
        y,
        safe_a,
        safe_b,
        safe_theta,
        aperture_scale,
        var=var,
        mask=sep_mask,
        segmap=segmap,
        seg_id=seg_id,
        subpix=1,
    )
    aperture_flag = aperture_flag.astype(np.int64) | kron_flag.astype(np.int64)
    kron_ok = use_kron & np.isfinite(flux) & np.isfinite(flux_err) & (flux_err > 0)
    if not kron_ok.all():
        fallback = ~kron_ok
        circle_flux, circle_err, circle_flag = sep.sum_circle(
            data,
            x[fallback],
            y[fallback],
            fallback_radius_pix,
            var=var,
            mask=sep_mask,
            segmap=segmap,
            seg_id=seg_id[fallback],
            subpix=5,
        )
        flux = flux.copy()
        flux_err = flux_err.copy()
        flux[fallback] = circle_flux
        flux_err[fallback] = circle_err
        aperture_flag[fallback] = circle_flag
    # An aperture whose every unmasked pixel belongs to other detections has no
    # measurable flux; such (rare) detections are dropped rather than reported as NaN.
    if windowed_positions:
        x_out, y_out = _windowed_positions(sep, data, sep_mask, x, y, a, flux, shape_ok)
    else:
        x_out, y_out = x, y
    finite = np.isfinite(flux) & np.isfinite(flux_err) & (flux_err > 0) & np.isfinite(x) & np.isfinite(y)
    catalog = SepCatalog(
        x=x_out,
        y=y_out,
        x_isophotal=x,
        y_isophotal=y,
        flux_njy=np.asarray(flux, dtype=np.float64),
        flux_err_njy=np.asarray(flux_err, dtype=np.float64),
        snr=np.asarray(flux / np.where(flux_err > 0, flux_err, 1.0), dtype=np.float64),
        a=np.where(shape_ok, a, 0.0),
        b=np.where(shape_ok, b, 0.0),
        theta=safe_theta,
        kron_radius=np.where(use_kron, kron_radius, 0.0),
        npix=objects["npix"].astype(np.int64),
        extract_flag=objects["flag"].astype(np.int64),
        aperture_flag=aperture_flag,
        used_circular=~kron_ok,
    )
    return catalog if finite.all() else catalog.select(finite)


def run_sep_batch(
    images: np.ndarray | torch.Tensor,
    variances: np.ndarray | torch.Tensor,
    masks: np.ndarray | torch.Tensor | Sequence[np.ndarray | None] | None = None,
    **kwargs: Any,
) -> list[SepCatalog]:
    """`run_sep` on each image of a batch.

    Parameters
    ----------
    images
        Background-subtracted images in nJy, shape (B, H, W), numpy or torch
        (any device).
    variances
        Variances in nJy^2, shape (B, H, W).
    masks
        Pixels to ignore where non-zero, shape (B, H, W), or `None`.
    **kwargs
        Passed to `run_sep`.

    Returns
    -------
    catalogs
        One catalog per image.

    Raises
    ------
    ValueError
        If the shapes do not match or are not (B, H, W).
    """
    image_array = as_float_image(images)
    variance_array = as_float_image(variances)
    if image_array.ndim != 3:
        raise ValueError(f"images must have shape (B, H, W); got {image_array.shape}.")
    if variance_array.shape != image_array.shape:
        raise ValueError(
            f"variances have shape {variance_array.shape}; expected the images' shape {image_array.shape}."
        )
    if masks is None:
        mask_list: list[Any] = [None] * image_array.shape[0]
    else:
        if isinstance(masks, torch.Tensor):
            masks = masks.detach().cpu().numpy()
        if isinstance(masks, np.ndarray) and masks.shape != image_array.shape:
            raise ValueError(
                f"masks have shape {masks.shape}; expected the images' shape {image_array.shape}."
            )
        mask_list = list(masks)
        if len(mask_list) != image_array.shape[0]:
            raise ValueError(f"masks has {len(mask_list)} images; expected {image_array.shape[0]}.")
    return [
        run_sep(image, variance, mask, **kwargs)
        for image, variance, mask in zip(image_array, variance_array, mask_list, strict=True)
    ]
