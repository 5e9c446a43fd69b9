"""Observing conditions of a survey visit: pixel scale, PSF, sky, photometric calibration."""

from __future__ import annotations

__all__ = ["AB_NJY_ZERO_POINT", "PSF_MODELS", "SurveyConditions", "flux_njy_to_mag", "mag_to_flux_njy"]

import dataclasses
import math
from typing import Any

import numpy as np
import surveycodex
import torch

from ..rendering import GaussianPsf, MoffatPsf, PointSpreadFunction

AB_NJY_ZERO_POINT: float = 31.4
"""AB magnitude of a 1 nJy source: ``m = 31.4 - 2.5 log10(flux_njy)``."""

PSF_MODELS: tuple[str, ...] = ("gaussian", "moffat")

LSST_VISIT_EXPOSURE_S: float = 30.0
"""Exposure time of an LSST single visit (one 30 s snap pair is counted as 30 s)."""


def mag_to_flux_njy(mag: float | np.ndarray | torch.Tensor) -> float | np.ndarray | torch.Tensor:
    """Convert AB magnitudes to fluxes in nJy; a torch tensor gives a tensor of its dtype and device."""
    if isinstance(mag, torch.Tensor):
        return 10.0 ** (-0.4 * (mag - AB_NJY_ZERO_POINT))
    return 10.0 ** (-0.4 * (np.asarray(mag) - AB_NJY_ZERO_POINT))


def flux_njy_to_mag(flux_njy: float | np.ndarray) -> float | np.ndarray:
    """Convert fluxes in nJy to AB magnitudes."""
    return AB_NJY_ZERO_POINT - 2.5 * np.log10(flux_njy)


def _check_positive(name: str, value: float, unit: str) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={value!r} is out of range; it must be a finite number > 0 ({unit}).")


@dataclasses.dataclass(frozen=True)
class SurveyConditions:
    """Conditions of one visit (or the nominal conditions of a survey).

    Images are in nJy; `njy_to_electrons` converts them to detected
    photo-electrons, whose Poisson statistics set the noise.

    Attributes
    ----------
    survey
        Survey name (a `surveycodex` name, or free text for custom conditions).
    band
        Filter name.
    pixel_scale_arcsec
        Pixel scale, arcsec per pixel.
    psf_model
        ``"gaussian"`` or ``"moffat"``.
    psf_fwhm_arcsec
        PSF full width at half maximum, arcsec.
    moffat_beta
        Moffat index (used when ``psf_model == "moffat"``), > 1.1.
    sky_brightness_mag_per_arcsec2
        Sky surface brightness, AB mag per arcsec^2.
    zero_point_mag
        AB magnitude of a source giving 1 photo-electron per second.
    exposure_time_s
        Exposure time, seconds.
    gain_e_per_adu
        Electrons per ADU (kept for adapters to raw counts; images are nJy).
    read_noise_e
        Read noise per pixel, electrons (0 for sky-limited nominal conditions).
    full_well_e
        Electrons above which a pixel is flagged as saturated.
    """

    survey: str
    band: str
    pixel_scale_arcsec: float
    psf_model: str
    psf_fwhm_arcsec: float
    sky_brightness_mag_per_arcsec2: float
    zero_point_mag: float
    exposure_time_s: float
    moffat_beta: float = 3.5
    gain_e_per_adu: float = 1.0
    read_noise_e: float = 0.0
    full_well_e: float = 1.0e5

    def __post_init__(self) -> None:
        _check_positive("pixel_scale_arcsec", self.pixel_scale_arcsec, "arcsec per pixel")
        _check_positive("psf_fwhm_arcsec", self.psf_fwhm_arcsec, "arcsec")
        _check_positive("exposure_time_s", self.exposure_time_s, "seconds")
        _check_positive("gain_e_per_adu", self.gain_e_per_adu, "electrons per ADU")
        _check_positive("full_well_e", self.full_well_e, "electrons")
        if self.psf_model not in PSF_MODELS:
            raise ValueError(f"psf_model={self.psf_model!r} is not supported; choose one of {PSF_MODELS}.")
        if not (math.isfinite(self.moffat_beta) and self.moffat_beta > 1.1):
            raise ValueError(
                f"moffat_beta={self.moffat_beta!r} is out of range; it must be finite and > 1.1."
            )
        if not (math.isfinite(self.read_noise_e) and self.read_noise_e >= 0):
            raise ValueError(
                f"read_noise_e={self.read_noise_e!r} is out of range; it must be finite and >= 0."
            )
        for name in ("sky_brightness_mag_per_arcsec2", "zero_point_mag"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value)):
                raise ValueError(f"{name}={value!r} must be a finite AB magnitude.")

    @classmethod
    def from_survey(
        cls, survey: str = "LSST", band: str = "r", exposure_time_s: float | None = None, **overrides: Any
    ) -> SurveyConditions:
        """Nominal conditions of a survey and band from `surveycodex`.

        Parameters
        ----------
        survey
            A survey known to `surveycodex` (``surveycodex.available_surveys``).
        band
            One of the survey's filters.
        exposure_time_s
            Exposure time; default 30 s (a single visit) for LSST and the
            survey's full-depth exposure time otherwise.
        **overrides
            Any other field of `SurveyConditions` (e.g. ``psf_model``).

        Raises
        ------
        ValueError
            If the survey or band is unknown, or a field is out of range.
        """
        if survey not in surveycodex.available_surveys:
            raise ValueError(
                f"survey={survey!r} is unknown; choose one of {sorted(surveycodex.available_surveys)}."
            )
        codex = surveycodex.get_survey(survey)
        if band not in codex.available_filters:
            raise ValueError(
                f"band={band!r} is not a {survey} filter; choose one of {codex.available_filters}."
            )
        filt = codex.get_filter(band)
        if exposure_time_s is None:
            exposure_time_s = (
                LSST_VISIT_EXPOSURE_S if survey == "LSST" else float(filt.full_exposure_time.to_value("s"))
            )
        fields: dict[str, Any] = {
            "survey": survey,
            "band": band,
            "pixel_scale_arcsec": float(codex.pixel_scale.to_value("arcsec")),
            "psf_model": "moffat",
            "psf_fwhm_arcsec": float(filt.psf_fwhm.to_value("arcsec")),
            "sky_brightness_mag_per_arcsec2": float(filt.sky_brightness.value),
            "zero_point_mag": float(filt.zeropoint.value),
            "exposure_time_s": float(exposure_time_s),
            "gain_e_per_adu": float(codex.gain.value),
        }
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"Unknown SurveyConditions field(s) {sorted(unknown)}.")
        fields.update(overrides)
        return cls(**fields)

    def replace(self, **changes: Any) -> SurveyConditions:
        """Return a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable representation."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SurveyConditions:
        """Inverse of `to_dict`."""
        return cls(**data)

    @property
    def njy_to_electrons(self) -> float:
        """Photo-electrons detected per nJy of source flux over the exposure."""
        return self.exposure_time_s * 10.0 ** (0.4 * (self.zero_point_mag - AB_NJY_ZERO_POINT))

    @property
    def psf_fwhm_pix(self) -> float:
        """PSF FWHM in pixels."""
        return self.psf_fwhm_arcsec / self.pixel_scale_arcsec

    @property
    def pixel_area_arcsec2(self) -> float:
        """Solid angle of a pixel, arcsec^2."""
        return self.pixel_scale_arcsec**2

    @property
    def sky_level_njy(self) -> float:
        """Sky flux per pixel, nJy."""
        return float(mag_to_flux_njy(self.sky_brightness_mag_per_arcsec2)) * self.pixel_area_arcsec2

    @property
    def sky_level_electrons(self) -> float:
        """Sky photo-electrons per pixel over the exposure."""
        return self.sky_level_njy * self.njy_to_electrons

    @property
    def background_noise_njy(self) -> float:
        """Standard deviation of the sky + read noise per pixel, nJy."""
        return math.sqrt(self.sky_level_electrons + self.read_noise_e**2) / self.njy_to_electrons

    def psf(self, fwhm_arcsec: float | np.ndarray | None = None) -> PointSpreadFunction:
        """The PSF model as a renderer PSF batch.

        Parameters
        ----------
        fwhm_arcsec
            FWHM(s) in arcsec, scalar or shape (P,); default ``psf_fwhm_arcsec``.
        """
        fwhm = self.psf_fwhm_arcsec if fwhm_arcsec is None else fwhm_arcsec
        fwhm_pix = np.asarray(fwhm, dtype=np.float64) / self.pixel_scale_arcsec
        if self.psf_model == "gaussian":
            return GaussianPsf(fwhm_pix)
        return MoffatPsf(fwhm_pix, self.moffat_beta)

    def point_source_depth_mag(self, n_sigma: float = 5.0) -> float:
        """Background-limited ``n_sigma`` point-source depth (AB mag).

        Uses the Gaussian-PSF effective area ``N_eff = 4 pi sigma_psf^2``
        and the background noise only (the faint-source limit).
        """
        sigma_pix = self.psf_fwhm_pix / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        flux_njy = n_sigma * self.background_noise_njy * math.sqrt(4.0 * math.pi * sigma_pix**2)
        return float(flux_njy_to_mag(flux_njy))
