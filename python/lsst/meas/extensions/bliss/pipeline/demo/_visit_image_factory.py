"""Build `lsst.images.VisitImage` objects from arrays, without afw (for simulated repos and tests)."""

from __future__ import annotations

__all__ = ["DEMO_MASK_PLANES", "LinearPsfField", "make_detector", "make_visit_image"]

import dataclasses
from collections.abc import Mapping

import astropy.units as u
import galsim
import numpy as np
from astro_metadata_translator import ObservationInfo
from astropy.wcs import WCS

from lsst.images import Box, DetectorFrame, Image, Mask, MaskPlane, MaskSchema, SkyProjection, VisitImage
from lsst.images.cameras import CameraFrameSet, Detector, DetectorAttributes, DetectorType, Orientation
from lsst.images.fields import ChebyshevField
from lsst.images.psfs import PiffWrapper

DEMO_MASK_PLANES: dict[str, str] = {
    "NO_DATA": "No data was recorded (outside the illuminated area).",
    "BAD": "Known bad pixel or column.",
    "SAT": "Saturated pixel.",
    "EDGE": "Pixel too close to the detector edge for reliable processing.",
    "CR": "Cosmic-ray hit.",
    "INTRP": "Interpolated pixel.",
    "SUSPECT": "Pixel value above the reliable linearity range.",
    "DETECTED": "Pixel in the footprint of a detected source.",
}
"""Mask planes of the simulated calexps (the Science Pipelines' names)."""

_PIXEL_SIZE_MM = 0.01
"""Nominal pixel size of the simulated camera (LSSTCam: 10 microns)."""


@dataclasses.dataclass(frozen=True)
class LinearPsfField:
    """A PSF whose FWHM changes linearly across a detector.

    Attributes
    ----------
    fwhm_origin_arcsec
        FWHM at pixel (0, 0), arcsec.
    gradient_x, gradient_y
        Change of the FWHM per pixel along x (columns) and y (rows), arcsec.
    """

    fwhm_origin_arcsec: float
    gradient_x: float
    gradient_y: float

    def fwhm_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """FWHM in arcsec at pixel positions ``x, y`` (any matching shapes)."""
        return self.fwhm_origin_arcsec + self.gradient_x * np.asarray(x) + self.gradient_y * np.asarray(y)

    def to_piff(
        self, bbox: Box, pixel_scale_arcsec: float, psf_model: str, moffat_beta: float, stamp_size: int = 25
    ) -> PiffWrapper:
        """The same PSF as a Piff model (what Rubin's calexps carry), wrapped for lsst.images.

        Parameters
        ----------
        bbox
            Pixel region where the model is valid.
        pixel_scale_arcsec
            Pixel scale of the detector.
        psf_model
            ``"moffat"`` or ``"gaussian"``, the profile family.
        moffat_beta
            Moffat index (for ``"moffat"``).
        stamp_size
            Side of the kernel images, pixels (odd).

        Notes
        -----
        Piff's polynomial interpolation (order 1 in the focal-plane
        coordinates ``u = x s``, ``v = y s`` of a pixel-scale WCS ``s``)
        carries the profile's size; its coefficients are set directly instead
        of being fitted to stars.
        """
        import piff  # imported here: it pulls in scikit-learn (slow to import), needless for reading calexps

        # Piff's profiles have unit size: a Moffat of half-light radius 1, a Gaussian of sigma 1.
        if psf_model == "moffat":
            model = piff.Moffat(beta=moffat_beta)
            unit_fwhm = galsim.Moffat(beta=moffat_beta, half_light_radius=1.0).fwhm
        else:
            model = piff.Gaussian()
            unit_fwhm = galsim.Gaussian(sigma=1.0).fwhm
        interp = piff.BasisPolynomial(order=1, keys=("u", "v"))
        # Basis terms are ordered (1, v, u); parameters are (size, g1, g2) of the profile.
        size = np.array(
            [
                self.fwhm_origin_arcsec,
                self.gradient_y / pixel_scale_arcsec,
                self.gradient_x / pixel_scale_arcsec,
            ]
        )
        interp.q = np.zeros((3, 3))
        interp.q[0] = size / unit_fwhm
        impl = piff.SimplePSF(model, interp)
        impl.wcs = {0: galsim.PixelScale(pixel_scale_arcsec)}
        impl.pointing = None
        impl.stars = []
        return PiffWrapper(impl, bbox, stamp_size)


def make_detector(instrument: str, detector_id: int, bbox: Box, pixel_scale_arcsec: float) -> Detector:
    """A minimal single-detector camera geometry.

    Notes
    -----
    lsst.images builds a `Detector` from a camera `CameraFrameSet`, whose
    constructor is private API (it takes an AST FrameSet, normally made by
    afw's cameraGeom).  This is the one place that touches it: a FrameSet
    with FOCAL_PLANE (mm), FIELD_ANGLE (rad) and DETECTOR_nnn frames related
    by zooms.
    """
    from lsst.images._transforms import _ast

    plate_scale_rad_per_mm = (pixel_scale_arcsec * u.arcsec).to_value(u.rad) / _PIXEL_SIZE_MM
    frames = _ast.FrameSet(_ast.Frame(2, "Ident=FOCAL_PLANE,Domain=FOCAL_PLANE,Unit(1)=mm,Unit(2)=mm"))
    frames.addFrame(
        1,
        _ast.ZoomMap(2, plate_scale_rad_per_mm),
        _ast.Frame(2, "Ident=FIELD_ANGLE,Domain=FIELD_ANGLE,Unit(1)=rad,Unit(2)=rad"),
    )
    frames.addFrame(
        1,
        _ast.ZoomMap(2, 1.0 / _PIXEL_SIZE_MM),
        _ast.Frame(
            2,
            f"Ident=DETECTOR_{detector_id:03d},Domain=DETECTOR,Bottom(1)={bbox.x.start},Top(1)={bbox.x.stop},"
            f"Bottom(2)={bbox.y.start},Top(2)={bbox.y.stop}",
        ),
    )
    attributes = DetectorAttributes(
        name=f"S{detector_id:02d}",
        id=detector_id,
        type=next(iter(DetectorType)),
        serial=f"{instrument}-{detector_id}",
        bbox=bbox,
        orientation=Orientation(focal_plane_x=0.0, focal_plane_y=0.0, focal_plane_z=0.0),
        pixel_size=_PIXEL_SIZE_MM,
        physical_type="simulated",
    )
    return Detector(attributes, [], CameraFrameSet(instrument, frames))


def make_visit_image(
    image: np.ndarray,
    variance: np.ndarray,
    mask_planes: Mapping[str, np.ndarray],
    psf_field: LinearPsfField,
    *,
    instrument: str,
    visit: int,
    detector: int,
    physical_filter: str,
    band: str,
    pointing_deg: tuple[float, float],
    pixel_scale_arcsec: float,
    psf_model: str = "moffat",
    moffat_beta: float = 3.5,
    counts_per_njy: float | None = None,
) -> VisitImage:
    """A calibrated single-visit image from arrays.

    Parameters
    ----------
    image
        Background-subtracted image, nJy, shape (H, W).
    variance
        Variance, nJy^2, shape (H, W).
    mask_planes
        Plane name (one of `DEMO_MASK_PLANES`) -> boolean array of shape (H, W).
    psf_field
        The PSF across the detector (stored as a Piff model).
    instrument, visit, detector, physical_filter, band
        Identity of the exposure.
    pointing_deg
        (RA, Dec) of the detector centre, degrees; the WCS is a TAN projection
        with north up and east left.
    pixel_scale_arcsec
        Pixel scale.
    psf_model, moffat_beta
        PSF profile family (see `LinearPsfField.to_piff`).
    counts_per_njy
        When given, the pixels are stored in instrumental counts (``image x
        counts_per_njy``, the variance with its square) with the photometric
        scaling that calibrates them back to nJy, as DC2 and DP0.2 calexps
        are; default nJy.

    Raises
    ------
    ValueError
        If array shapes differ or a mask plane is unknown.
    """
    height, width = image.shape
    if variance.shape != image.shape:
        raise ValueError(f"image {image.shape} and variance {variance.shape} differ in shape.")
    unknown = set(mask_planes) - set(DEMO_MASK_PLANES)
    if unknown:
        raise ValueError(f"Unknown mask plane(s) {sorted(unknown)}; known: {sorted(DEMO_MASK_PLANES)}.")
    bbox = Box.factory[0:height, 0:width]
    schema = MaskSchema([MaskPlane(name, description) for name, description in DEMO_MASK_PLANES.items()])
    mask = Mask(0, schema=schema, bbox=bbox)
    for name, selected in mask_planes.items():
        if selected.shape != image.shape:
            raise ValueError(f"mask plane {name} has shape {selected.shape}; expected {image.shape}.")
        mask.set(name, selected)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = list(pointing_deg)
    wcs.wcs.crpix = [(width - 1) / 2 + 1, (height - 1) / 2 + 1]  # FITS pixels are 1-indexed
    scale_deg = pixel_scale_arcsec / 3600.0
    wcs.wcs.cd = [[-scale_deg, 0.0], [0.0, scale_deg]]
    frame = DetectorFrame(instrument=instrument, detector=detector, visit=visit, bbox=bbox)
    unit, factor, photometric_scaling = u.nJy, 1.0, None
    if counts_per_njy is not None:
        if not (np.isfinite(counts_per_njy) and counts_per_njy > 0):
            raise ValueError(f"counts_per_njy={counts_per_njy} must be a positive number.")
        unit, factor = u.count, counts_per_njy
        photometric_scaling = ChebyshevField(bbox, np.array([[1.0 / counts_per_njy]]), unit=u.nJy / u.count)
    return VisitImage(
        Image(np.asarray(image * factor, dtype=np.float32), bbox=bbox, unit=unit),
        mask=mask,
        variance=Image(np.asarray(variance * factor**2, dtype=np.float32), bbox=bbox, unit=unit**2),
        photometric_scaling=photometric_scaling,
        sky_projection=SkyProjection.from_fits_wcs(wcs, frame, pixel_bounds=bbox),
        obs_info=ObservationInfo(instrument=instrument, physical_filter=physical_filter),
        psf=psf_field.to_piff(bbox, pixel_scale_arcsec, psf_model, moffat_beta),
        detector=make_detector(instrument, detector, bbox, pixel_scale_arcsec),
        band=band,
    )
