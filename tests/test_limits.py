"""The model's trained ranges and the check of an image against them, in the core and in
`infer_frame` (refused with the quantity, its value and the range named, or flagged on request)."""

from __future__ import annotations

import math

import pytest
import torch

from lsst.meas.extensions.bliss import (
    BlissModel,
    FrameConfig,
    ImageSimulator,
    InputConditions,
    OutOfTrainedRangeError,
    SimulatorConfig,
    infer_frame,
    out_of_range_problems,
    trained_ranges,
)

TOLERANCES = {"pixel_scale_rtol": 0.02, "psf_fwhm_margin_arcsec": 0.05, "depth_margin_mag": 1.0}


def problems(model: BlissModel, conditions: InputConditions, fwhm_arcsec: float, noise_njy: float) -> list:
    scale = conditions.pixel_scale_arcsec or model.conditions.pixel_scale_arcsec
    fwhm_pix = (fwhm_arcsec / scale, fwhm_arcsec / scale)
    return out_of_range_problems(model, conditions, fwhm_pix, noise_njy, **TOLERANCES)


def test_out_of_range_cases_are_refused_and_in_range_ones_are_not(default_model: BlissModel) -> None:
    nominal = default_model.conditions
    noise = nominal.background_noise_njy
    deepest = trained_ranges(default_model, **TOLERANCES)["noise_njy"].low
    out_of_range = {
        "pixel scale 0.168": (InputConditions(0.168, "r"), 0.8, noise, "pixel_scale"),
        "pixel scale 0.26": (InputConditions(0.26, "r"), 0.8, noise, "pixel_scale"),
        "PSF FWHM 2.5 arcsec": (InputConditions(0.2, "r"), 2.5, noise, "psf_fwhm"),
        "4 mag deeper": (InputConditions(0.2, "r"), 0.8, deepest * 10 ** (-0.4 * 4), "noise"),
        "unknown band": (InputConditions(0.2, "q"), 0.8, noise, "band"),
    }
    for name, (conditions, fwhm, noise_njy, quantity) in out_of_range.items():
        (problem,) = problems(default_model, conditions, fwhm, noise_njy)
        assert problem.quantity == quantity, name
    in_range = [
        (InputConditions(), 0.8, noise),  # nothing known beyond the pixels: the model's pixel scale
        (InputConditions(0.2, "r"), 0.6, noise),
        (InputConditions(0.2, "r"), 1.2, noise),
        (InputConditions(0.201, None), 0.9, noise * 2.0),
        (InputConditions(0.2, "r"), 0.8, noise / 2.0),
    ]
    for conditions, fwhm, noise_njy in in_range:
        assert problems(default_model, conditions, fwhm, noise_njy) == [], conditions


def test_messages_name_the_quantity_its_value_the_range_and_the_tolerance(default_model: BlissModel) -> None:
    (problem,) = problems(
        default_model, InputConditions(0.26, "r"), 0.8, default_model.conditions.background_noise_njy
    )
    assert problem.message.startswith(
        "pixel scale 0.26 arcsec/px is outside the model's trained range 0.196-0.204"
    )
    assert "(pixel_scale_rtol)" in problem.message and problem.model_mismatch
    (problem,) = problems(
        default_model, InputConditions(0.2, "r"), 2.5, default_model.conditions.background_noise_njy
    )
    low, high = default_model.simulator.psf_fwhm_range_arcsec
    margin = TOLERANCES["psf_fwhm_margin_arcsec"]
    assert "PSF FWHM 2.5 arcsec" in problem.message
    assert f"{low - margin:.2f}-{high + margin:.2f} arcsec" in problem.message
    assert "(psf_fwhm_margin_arcsec)" in problem.message and not problem.model_mismatch
    (problem,) = problems(
        default_model, InputConditions(0.2, "N921"), 0.8, default_model.conditions.background_noise_njy
    )
    assert problem.message == (
        "band 'N921' is not among the model's trained bands ['u', 'g', 'r', 'i', 'z', 'y']: use a model "
        "trained for band 'N921' (extra_bands=[])"
    )
    accepted = out_of_range_problems(
        default_model,
        InputConditions(0.2, "N921"),
        (4.0, 4.0),
        default_model.conditions.background_noise_njy,
        **TOLERANCES,
        extra_bands=("N921",),
    )
    assert accepted == []


def test_bad_conditions_and_tolerances_are_refused() -> None:
    with pytest.raises(ValueError, match="pixel_scale_arcsec=-0.2"):
        InputConditions(-0.2)
    with pytest.raises(ValueError, match="pixel_scale_arcsec=nan"):
        InputConditions(math.nan)
    with pytest.raises(ValueError, match="out_of_range='warn'"):
        FrameConfig(out_of_range="warn")
    with pytest.raises(ValueError, match="depth_margin_mag=-1"):
        FrameConfig(depth_margin_mag=-1.0)


@pytest.fixture(scope="module")
def scene(default_model: BlissModel) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    simulator = ImageSimulator(
        default_model.conditions,
        default_model.prior,
        SimulatorConfig(image_height=64, image_width=64),
        device="cpu",
    )
    batch = simulator.sample(1, seed=11)
    return batch.image[0], batch.variance[0], batch.mask[0]


def test_infer_frame_refuses_out_of_range_images_unless_flagged(default_model: BlissModel, scene) -> None:
    image, variance, mask = scene
    fwhm = default_model.conditions.psf_fwhm_pix
    config = FrameConfig(n_samples=0, device="cpu")
    plain = infer_frame(
        default_model, image, variance, mask, fwhm, config, conditions=InputConditions(0.2, "r")
    )
    assert plain.out_of_range == [] and not plain.catalog.fields["flag_out_of_range"].any()
    assert int(plain.catalog.n_sources[0]) > 0
    with pytest.raises(
        OutOfTrainedRangeError, match=r"band 'N921' is not among the model's trained bands"
    ) as refused:
        infer_frame(
            default_model, image, variance, mask, fwhm, config, conditions=InputConditions(0.2, "N921")
        )
    assert [problem.quantity for problem in refused.value.problems] == ["band"]
    with pytest.raises(OutOfTrainedRangeError, match=r"PSF FWHM 2\.5 arcsec"):
        infer_frame(default_model, image, variance, mask, 12.5, config)
    # 4 magnitudes deeper: the same pixels with a variance 40 times smaller in noise.
    deep = variance * 10 ** (-0.8 * 4)
    with pytest.raises(OutOfTrainedRangeError, match="median pixel noise"):
        infer_frame(default_model, image * 10 ** (-0.4 * 4), deep, mask, fwhm, config)
    flagged_config = FrameConfig(n_samples=0, device="cpu", out_of_range="flag")
    flagged = infer_frame(
        default_model, image, variance, mask, fwhm, flagged_config, conditions=InputConditions(0.2, "N921")
    )
    assert flagged.out_of_range == [
        "band 'N921' is not among the model's trained bands ['u', 'g', 'r', 'i', 'z', 'y']: use a model "
        "trained for band 'N921' (extra_bands=[])"
    ]
    flags = flagged.catalog.fields["flag_out_of_range"]
    assert flags.shape == flagged.catalog.x.shape and bool(flags.all())
    # The flag changes nothing else.
    assert torch.equal(flagged.catalog.x, plain.catalog.x)
    assert torch.equal(flagged.catalog.fields["flux_njy"], plain.catalog.fields["flux_njy"])
