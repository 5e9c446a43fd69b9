"""Real skies on the inputs side: fluxes independent of the variance plane's convention (the
``background`` input noise), per-image exposure times and variance conventions in training, and one
model trained across several bands (recorded in the model file, checked per band)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from conftest import TINY_ENCODER
from lsst.meas.extensions.bliss import (
    BlissEncoder,
    BlissModel,
    EncoderConfig,
    FrameConfig,
    ImageSimulator,
    InputConditions,
    ModelFormatError,
    OutOfTrainedRangeError,
    PriorConfig,
    SimulatorConfig,
    SurveyConditions,
    TrainingRun,
    infer_frame,
    out_of_range_problems,
    prepare_inputs,
    train,
    trained_noise_range_njy,
    variance_convention,
)
from test_model_io import rewrite_document
from test_training import TINY

TOLERANCES = {"pixel_scale_rtol": 0.02, "psf_fwhm_margin_arcsec": 0.05, "depth_margin_mag": 1.0}


def small_simulator(
    config: SimulatorConfig | None = None, bands: tuple[str, ...] = (), density: float = 55.0
) -> ImageSimulator:
    conditions = SurveyConditions.from_survey()
    return ImageSimulator(
        conditions,
        PriorConfig(source_density_per_arcmin2=density),
        config or SimulatorConfig(image_height=64, image_width=64),
        device="cpu",
        band_conditions=[SurveyConditions.from_survey("LSST", band) for band in bands],
    )


def expected_variance(batch, index: int, conditions: SurveyConditions) -> torch.Tensor:
    """The full variance of image ``index``: sky plus the sources' own Poisson noise (no read noise)."""
    return (batch.noiseless[index].clamp(min=0) + conditions.sky_level_njy) / conditions.njy_to_electrons


def tiny_model(input_noise: str = "pixel_variance", bands: tuple[str, ...] = ()) -> BlissModel:
    torch.manual_seed(0)
    band_conditions = tuple(SurveyConditions.from_survey("LSST", band) for band in bands)
    return BlissModel(
        BlissEncoder(dataclasses.replace(TINY_ENCODER, input_noise=input_noise)).eval(),
        SurveyConditions.from_survey(),
        PriorConfig(),
        SimulatorConfig(psf_fwhm_range_arcsec=(0.6, 1.2)),
        {"seed": 0, "steps": 0},
        band_conditions=band_conditions,
    )


def test_background_inputs_do_not_depend_on_the_variance_source_term() -> None:
    batch = small_simulator().sample(2, seed=3)
    conditions = SurveyConditions.from_survey()
    sky_only = variance_convention(batch.variance, conditions, "sky_only")
    assert not torch.equal(sky_only, batch.variance)
    fwhm = batch.psf_fwhm_arcsec / conditions.pixel_scale_arcsec
    background = prepare_inputs(batch.image, batch.variance, batch.mask, fwhm, input_noise="background")
    # The unit is the median noise: the sky's, up to the faint wings of sources under the median pixel.
    torch.testing.assert_close(
        background.flux_scale_njy, torch.full((2,), conditions.background_noise_njy), rtol=2e-3, atol=0
    )
    unit = background.flux_scale_njy
    same_unit = prepare_inputs(batch.image, sky_only, batch.mask, fwhm, None, unit, input_noise="background")
    assert torch.equal(background.tensor, same_unit.tensor)
    # The data channels are the image in units of its median noise, softened.
    torch.testing.assert_close(background.tensor[:, 0], torch.asinh(batch.image / unit[:, None, None]))
    # Today's per-pixel normalization is the default, and it does see the source term.
    pixel = prepare_inputs(batch.image, batch.variance, batch.mask, fwhm)
    explicit = prepare_inputs(batch.image, batch.variance, batch.mask, fwhm, input_noise="pixel_variance")
    assert torch.equal(pixel.tensor, explicit.tensor)
    per_pixel_sky = prepare_inputs(batch.image, sky_only, batch.mask, fwhm, None, unit)
    assert float((pixel.tensor - per_pixel_sky.tensor).abs().max()) > 0.1
    # The torch path (non-CPU dtypes) computes the same channels as numpy's.
    half = prepare_inputs(
        batch.image.bfloat16(), batch.variance.bfloat16(), batch.mask, fwhm, input_noise="background"
    )
    torch.testing.assert_close(half.tensor.float(), background.tensor, atol=0.05, rtol=0.02)


def test_a_background_model_gives_the_same_fluxes_for_any_variance_convention(
    default_model: BlissModel,
) -> None:
    batch = small_simulator(density=200.0).sample(1, seed=5)
    conditions = SurveyConditions.from_survey()
    fwhm = float(batch.psf_fwhm_arcsec[0]) / conditions.pixel_scale_arcsec
    config = FrameConfig(n_samples=0, device="cpu", detection_threshold=0.2)
    differences = {}
    # The packaged model (background inputs) against an untrained one with per-pixel inputs: the
    # invariance is in the inputs, whatever the weights.
    assert default_model.encoder.config.input_noise == "background"
    for input_noise, model in (("background", default_model), ("pixel_variance", tiny_model())):
        frames = [
            infer_frame(
                model,
                batch.image[0],
                variance_convention(batch.variance, conditions, name)[0],
                None,
                fwhm,
                config,
            )
            for name in ("full", "sky_only")
        ]
        # The log-flux posterior means (nJy) of the tiles the full-variance image detects.
        detected = torch.sigmoid(frames[0].tile_params["detection"][..., 0]) > 0.2
        log_flux = [
            frame.tile_params["flux"][..., 0][detected] + math.log(frame.flux_scale_njy) for frame in frames
        ]
        assert log_flux[0].numel() > 0
        differences[input_noise] = float((log_flux[1] - log_flux[0]).abs().max())
    # Only the unit (the median noise) moves, by the sources' share of the median pixel's variance;
    # per-pixel inputs change wherever a source's own noise enters the variance.
    assert differences["background"] < 2e-3
    assert differences["pixel_variance"] > differences["background"]


def test_input_noise_is_recorded_and_old_files_read_as_per_pixel(tmp_path, default_model: BlissModel) -> None:
    assert default_model.encoder.config.input_noise == "background"
    model = tiny_model("background")
    loaded = BlissModel.load(model.save(tmp_path / "model.safetensors"))
    assert loaded.encoder.config.input_noise == "background"
    # A file written before the option has no such field: it loads as the per-pixel normalization.
    path = tiny_model().save(tmp_path / "old.safetensors")
    rewrite_document(path, lambda document: document["encoder"].pop("input_noise"))
    assert BlissModel.load(path).encoder.config.input_noise == "pixel_variance"
    with pytest.raises(ValueError, match="input_noise='sky' is not a noise unit .* 'background'"):
        EncoderConfig(input_noise="sky")
    with pytest.raises(ValueError, match="input_noise='sky'"):
        prepare_inputs(torch.zeros(1, 8, 8), torch.ones(1, 8, 8), None, 4.0, input_noise="sky")


def test_exposure_times_and_variance_conventions_are_drawn_per_image() -> None:
    nominal = small_simulator().sample(4, seed=1)
    assert nominal.bands == ("r",) * 4 and nominal.variance_conventions == ("full",) * 4
    assert torch.equal(nominal.exposure_time_s, torch.full((4,), 30.0))
    config = SimulatorConfig(
        image_height=32,
        image_width=32,
        exposure_time_range_s=(10.0, 40.0),
        variance_conventions=("full", "sky_only", "gain_x0.5", "gain_x2"),
    )
    batch = small_simulator(config).sample(24, seed=1)
    times = batch.exposure_time_s
    assert bool(((times >= 10.0) & (times <= 40.0)).all()) and float(times.std()) > 3.0
    assert set(batch.variance_conventions) == {"full", "sky_only", "gain_x0.5", "gain_x2"}
    conditions = SurveyConditions.from_survey()
    for index, (time, convention) in enumerate(zip(times.tolist(), batch.variance_conventions, strict=True)):
        exposed = conditions.replace(exposure_time_s=time)
        full = expected_variance(batch, index, exposed)
        expected = {
            "full": full,
            "sky_only": torch.full_like(full, exposed.background_noise_njy**2),
            "gain_x0.5": 2.0 * full,
            "gain_x2": 0.5 * full,
        }[convention]
        torch.testing.assert_close(batch.variance[index], expected, rtol=1e-5, atol=0)
    # The same seed draws the same images.
    again = small_simulator(config).sample(24, seed=1)
    assert torch.equal(again.image, batch.image) and again.variance_conventions == batch.variance_conventions


def test_bad_simulator_options_are_refused() -> None:
    with pytest.raises(ValueError, match=r"exposure_time_range_s=\(0.0, 10.0\) is out of range"):
        SimulatorConfig(exposure_time_range_s=(0.0, 10.0))
    with pytest.raises(ValueError, match=r"variance_conventions=\['gain'\] must list distinct"):
        SimulatorConfig(variance_conventions=("gain",))
    with pytest.raises(ValueError, match="variance convention 'x' is unknown"):
        variance_convention(torch.ones(1), SurveyConditions.from_survey(), "x")
    wide = SurveyConditions.from_survey("LSST", "g", pixel_scale_arcsec=0.26)
    with pytest.raises(ValueError, match=r"band 'g' differs .* \['pixel_scale_arcsec'\]"):
        ImageSimulator(SurveyConditions.from_survey(), band_conditions=[wide], device="cpu")


def test_each_image_draws_its_band() -> None:
    batch = small_simulator(bands=("g", "r", "z")).sample(16, seed=2)
    assert set(batch.bands) == {"g", "r", "z"}
    for index, band in enumerate(batch.bands):
        conditions = SurveyConditions.from_survey("LSST", band)
        assert float(batch.background_njy[index]) == pytest.approx(conditions.sky_level_njy, rel=1e-6)
        torch.testing.assert_close(
            batch.variance[index], expected_variance(batch, index, conditions), rtol=1e-5, atol=0
        )
    assert batch.truth_tiles.batch_size == 16


def test_training_run_bands_and_the_single_band_key() -> None:
    run = TrainingRun.from_dict({"conditions": {"survey": "LSST", "bands": ["u", "g", "r", "i", "z", "y"]}})
    assert [item.band for item in run.band_conditions] == list("ugrizy") and run.conditions.band == "r"
    assert run.band_conditions[0] == SurveyConditions.from_survey("LSST", "u")
    assert TrainingRun.from_dict(run.to_dict()) == run
    first = TrainingRun.from_dict({"conditions": {"bands": ["g", "i"], "psf_model": "gaussian"}})
    assert first.conditions.band == "g" and all(
        item.psf_model == "gaussian" for item in first.band_conditions
    )
    single = TrainingRun.from_dict({"conditions": {"survey": "LSST", "band": "i"}})
    assert single.conditions.band == "i" and single.band_conditions == ()
    assert "band_conditions" not in single.to_dict()
    with pytest.raises(ValueError, match=r"conditions.band='r' is not among conditions.bands \['g', 'i'\]"):
        TrainingRun.from_dict({"conditions": {"band": "r", "bands": ["g", "i"]}})
    with pytest.raises(ValueError, match="conditions.bands='gri' must be a list of distinct LSST bands"):
        TrainingRun.from_dict({"conditions": {"bands": "gri"}})
    with pytest.raises(ValueError, match="band='q' is not a LSST filter"):
        TrainingRun.from_dict({"conditions": {"bands": ["g", "q"]}})


def test_model_file_records_every_band(tmp_path) -> None:
    model = tiny_model(bands=("g", "r", "i"))
    assert model.trained_bands == ("g", "r", "i")
    loaded = BlissModel.load(model.save(tmp_path / "model.safetensors"))
    assert loaded.band_conditions == model.band_conditions and loaded.trained_bands == ("g", "r", "i")
    assert loaded.conditions_for_band("g") == SurveyConditions.from_survey("LSST", "g")
    single = BlissModel.load(tiny_model().save(tmp_path / "single.safetensors"))
    assert single.trained_bands == ("r",) and single.band_conditions == ()
    path = tmp_path / "edited.safetensors"
    model.save(path)
    rewrite_document(path, lambda document: document["bands"].pop(1))
    with pytest.raises(ModelFormatError, match=r"'bands' \(bands \['g', 'i'\]\) must .* include the nominal"):
        BlissModel.load(path)
    rewrite_document(path, lambda document: document.update(bands={"g": 1}))
    with pytest.raises(ModelFormatError, match="'bands' must be a JSON list"):
        BlissModel.load(path)
    with pytest.raises(ValueError, match="band_conditions .* must include the model's nominal"):
        dataclasses.replace(model, band_conditions=model.band_conditions[:1])


def test_limits_hold_each_band_to_its_own_depth(default_model: BlissModel) -> None:
    model = tiny_model(bands=("g", "r", "y"))
    g, y = (SurveyConditions.from_survey("LSST", band) for band in "gy")

    def problems(band: str | None, noise: float) -> list[str]:
        found = out_of_range_problems(model, InputConditions(0.2, band), (4.0, 4.0), noise, **TOLERANCES)
        return [problem.quantity for problem in found]

    assert problems("g", g.background_noise_njy) == [] and problems("y", y.background_noise_njy) == []
    assert problems("g", y.background_noise_njy) == ["noise"]
    assert problems(None, y.background_noise_njy) == [] and problems(None, g.background_noise_njy) == []
    (refused,) = out_of_range_problems(
        model, InputConditions(0.2, "z"), (4.0, 4.0), y.background_noise_njy, **TOLERANCES
    )
    assert refused.message.startswith("band 'z' is not among the model's trained bands ['g', 'r', 'y']")
    # The simulator's exposure times and gain conventions widen each band's trained depth.
    widened = dataclasses.replace(
        model,
        simulator=SimulatorConfig(exposure_time_range_s=(15.0, 30.0), variance_conventions=("gain_x0.5",)),
    )
    low, high = trained_noise_range_njy(widened, "g")
    assert low == pytest.approx(g.background_noise_njy * 2**0.5)
    assert high == pytest.approx(g.replace(exposure_time_s=15.0).background_noise_njy * 2**0.5)
    # A single-band model serves its band and refuses the others; the packaged model has all six.
    assert default_model.trained_bands == ("u", "g", "r", "i", "z", "y")
    single = tiny_model()
    assert single.trained_bands == ("r",)
    image = torch.zeros(32, 32)
    variance = torch.full_like(image, single.conditions.background_noise_njy**2)
    config = FrameConfig(n_samples=0, device="cpu")
    with pytest.raises(
        OutOfTrainedRangeError, match=r"band 'g' is not among the model's trained bands \['r'\]"
    ):
        infer_frame(single, image, variance, None, 4.0, config, conditions=InputConditions(0.2, "g"))


def test_pipeline_refusal_of_an_untrained_band_says_how_to_get_a_model() -> None:
    from lsst.meas.extensions.bliss.pipeline import BlissDeblendMeasureTask, IncompatibleModelError

    model = tiny_model(bands=("g", "r"))
    problems = out_of_range_problems(
        model, InputConditions(0.2, "u"), (4.0, 4.0), model.conditions.background_noise_njy, **TOLERANCES
    )
    refusal = BlissDeblendMeasureTask._refusal(OutOfTrainedRangeError(problems))
    assert isinstance(refusal, IncompatibleModelError)
    assert "band 'u' is not among the model's trained bands ['g', 'r']" in str(refusal)
    assert "butler bliss-ingest-model" in str(refusal)


def test_a_multi_band_background_model_trains_and_round_trips(tmp_path) -> None:
    config = {
        **TINY,
        "conditions": {"survey": "LSST", "bands": ["g", "r", "i"]},
        "simulator": {
            **TINY["simulator"],
            "psf_fwhm_range_arcsec": [0.5, 1.5],
            "exposure_time_range_s": [15.0, 30.0],
            "variance_conventions": ["full", "sky_only", "gain_x0.5", "gain_x2"],
        },
        "encoder": {**TINY["encoder"], "input_noise": "background"},
        "training": {**TINY["training"], "n_steps": 2, "validation_every": 2, "checkpoint_every": 2},
    }
    model = train(TrainingRun.from_dict(config), tmp_path, log=lambda _: None)
    loaded = BlissModel.load(tmp_path / "model.safetensors")
    assert loaded.trained_bands == ("g", "r", "i") and loaded.encoder.config.input_noise == "background"
    assert loaded.simulator.exposure_time_range_s == (15.0, 30.0)
    assert TrainingRun.from_dict(model.training["run"]).band_conditions == loaded.band_conditions


def test_train_task_config_mirrors_the_bands() -> None:
    from lsst.pex.config import FieldValidationError

    from lsst.meas.extensions.bliss.pipeline import BlissTrainConfig

    config = BlissTrainConfig()  # the packaged recipe's: six bands, background inputs
    bands = tuple(conditions.band for conditions in config.training_run().band_conditions)
    assert bands == ("u", "g", "r", "i", "z", "y") and config.encoder.input_noise == "background"
    config.conditions.bands = ["g", "r", "i"]
    config.encoder.input_noise = "background"
    config.simulator.exposure_time_range_s = [15.0, 30.0]
    config.validate()
    run = config.training_run()
    assert [item.band for item in run.band_conditions] == ["g", "r", "i"] and run.conditions.band == "r"
    again = BlissTrainConfig()
    again.from_training_run(run)
    assert again.training_run() == run
    config.conditions.band = "z"
    with pytest.raises(FieldValidationError, match=r"band='z' \(the nominal band\) is not among bands"):
        config.conditions.validate()
    config.conditions.band, config.conditions.bands = "g", ["g", "q"]
    with pytest.raises(FieldValidationError, match="band='q' is not a LSST filter"):
        config.conditions.validate()
