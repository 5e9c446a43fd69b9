"""Survey conditions from surveycodex, derived quantities and validation."""

import json
import math

import numpy as np
import pytest
import surveycodex
import torch

from lsst.meas.extensions.bliss import SurveyConditions, flux_njy_to_mag, mag_to_flux_njy


def test_lsst_defaults_come_from_surveycodex() -> None:
    conditions = SurveyConditions.from_survey()
    codex = surveycodex.get_survey("LSST")
    band = codex.get_filter("r")
    assert conditions.survey == "LSST" and conditions.band == "r"
    assert conditions.exposure_time_s == 30.0
    assert conditions.pixel_scale_arcsec == pytest.approx(codex.pixel_scale.to_value("arcsec"))
    assert conditions.psf_fwhm_arcsec == pytest.approx(band.psf_fwhm.to_value("arcsec"))
    assert conditions.zero_point_mag == pytest.approx(band.zeropoint.value)
    assert conditions.sky_brightness_mag_per_arcsec2 == pytest.approx(band.sky_brightness.value)


def test_lsst_single_visit_depth_and_noise() -> None:
    conditions = SurveyConditions.from_survey()
    # Design figure: the ideal 5-sigma point-source depth of a 30 s r visit is about 24.5.
    assert conditions.point_source_depth_mag() == pytest.approx(24.5, abs=0.1)
    # 1 e-/s at the zero point, over 30 s.
    expected = 30.0 * 10 ** (-0.4 * (31.4 - conditions.zero_point_mag))
    assert conditions.njy_to_electrons == pytest.approx(expected)
    assert conditions.background_noise_njy == pytest.approx(
        math.sqrt(conditions.sky_level_electrons) / conditions.njy_to_electrons
    )
    assert conditions.psf_fwhm_pix == pytest.approx(conditions.psf_fwhm_arcsec / 0.2)


def test_other_surveys_by_name() -> None:
    hsc = SurveyConditions.from_survey("HSC", "i")
    assert hsc.pixel_scale_arcsec == pytest.approx(
        surveycodex.get_survey("HSC").pixel_scale.to_value("arcsec")
    )
    assert hsc.exposure_time_s > 30.0
    custom = SurveyConditions.from_survey("LSST", "g", exposure_time_s=15.0, psf_model="gaussian")
    assert custom.exposure_time_s == 15.0 and custom.psf_model == "gaussian"


def test_magnitude_conversions_round_trip() -> None:
    assert mag_to_flux_njy(31.4) == pytest.approx(1.0)
    assert flux_njy_to_mag(mag_to_flux_njy(24.0)) == pytest.approx(24.0)
    mags = torch.tensor([12.0, 24.0], dtype=torch.float64)
    fluxes = mag_to_flux_njy(mags)
    assert isinstance(fluxes, torch.Tensor) and fluxes.dtype == torch.float64
    np.testing.assert_allclose(fluxes.numpy(), mag_to_flux_njy(mags.numpy()), rtol=1e-15)


def test_json_round_trip() -> None:
    conditions = SurveyConditions.from_survey()
    assert SurveyConditions.from_dict(json.loads(json.dumps(conditions.to_dict()))) == conditions


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("psf_fwhm_arcsec", 0.0),
        ("psf_fwhm_arcsec", -0.7),
        ("pixel_scale_arcsec", 0.0),
        ("exposure_time_s", -1.0),
        ("exposure_time_s", math.nan),
        ("moffat_beta", 1.0),
        ("read_noise_e", -2.0),
    ],
)
def test_invalid_fields_name_field_and_range(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        SurveyConditions.from_survey(**{field: value})


def test_unknown_survey_band_model_or_field() -> None:
    with pytest.raises(ValueError, match="survey='Hubble'.*available|survey='Hubble'"):
        SurveyConditions.from_survey("Hubble")
    with pytest.raises(ValueError, match="band='q'"):
        SurveyConditions.from_survey("LSST", "q")
    with pytest.raises(ValueError, match="psf_model"):
        SurveyConditions.from_survey(psf_model="airy")
    with pytest.raises(ValueError, match="Unknown SurveyConditions field"):
        SurveyConditions.from_survey(seeing=0.7)
