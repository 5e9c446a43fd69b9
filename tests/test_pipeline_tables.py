"""Pipeline-layer pieces that need no Butler: source IDs, output tables, compatibility checks, configs."""

import dataclasses
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from lsst.pex.config import FieldValidationError

from lsst.meas.extensions.bliss import (
    FrameConfig,
    ImageSimulator,
    SimulatorConfig,
    infer_frame,
    load_default_model,
)
from lsst.meas.extensions.bliss.io import default_training_recipe_path
from lsst.meas.extensions.bliss.pipeline import (
    SAMPLE_COLUMNS,
    SOURCE_COLUMNS,
    BlissDeblendMeasureConfig,
    BlissTrainConfig,
    ExposureConditions,
    SourceIdGenerator,
    conditions_from_exposures,
    samples_table,
    source_table,
)
from lsst.meas.extensions.bliss.training import load_run_config


def tangent_plane(x: np.ndarray, y: np.ndarray) -> SkyCoord:
    """A toy 0.2"/px projection near (150, 2) deg, standing in for an exposure's WCS."""
    scale = 0.2 / 3600.0
    return SkyCoord(ra=150.0 + np.asarray(x) * scale, dec=2.0 + np.asarray(y) * scale, unit=u.deg)


@pytest.fixture(scope="module")
def frame():
    model = load_default_model()
    simulator = ImageSimulator(
        model.conditions, model.prior, SimulatorConfig(image_height=96, image_width=96)
    )
    batch = simulator.sample(1, seed=11)
    config = FrameConfig(n_samples=3, seed=5, device="cpu")
    return infer_frame(
        model, batch.image[0], batch.variance[0], batch.mask[0], model.conditions.psf_fwhm_pix, config
    )


def test_source_ids_are_unique_across_data_ids() -> None:
    first = SourceIdGenerator(catalog_id=5, reserved_bits=10).arange(1000)
    second = SourceIdGenerator(catalog_id=6, reserved_bits=10).arange(1000)
    assert len(np.unique(np.concatenate([first, second]))) == 2000
    assert (first & 0x3FF == 5).all()
    with pytest.raises(ValueError, match="exceed"):
        SourceIdGenerator(catalog_id=1, reserved_bits=62).arange(2)
    with pytest.raises(ValueError, match="does not fit"):
        SourceIdGenerator(catalog_id=1024, reserved_bits=10)


def test_source_table_columns_have_units_descriptions_and_parent_positions(frame) -> None:
    n = int(frame.catalog.n_sources[0])
    assert n > 0
    table = source_table(frame, np.arange(1, n + 1), 1000, 2000, tangent_plane, visit=7, detector=3)
    assert len(table) == n
    assert table.colnames[:3] == ["sourceId", "coord_ra", "coord_dec"]
    for name in table.colnames:
        assert table[name].description, name
    for name, unit, _, _ in SOURCE_COLUMNS:
        assert table[name].unit == unit, name
    np.testing.assert_allclose(table["x"], frame.catalog.x[0, :n].double().numpy() + 1000)
    np.testing.assert_allclose(table["y"], frame.catalog.y[0, :n].double().numpy() + 2000)
    np.testing.assert_allclose(table["coord_ra"], 150.0 + table["x"] * 0.2 / 3600)
    assert table["coord_ra"].unit == u.deg and table["bliss_flux"].unit == u.nJy
    assert (table["visit"] == 7).all() and (table["detector"] == 3).all()
    assert table["bliss_masked_flag"].dtype == bool
    assert (
        (table["bliss_flux_q16"] <= table["bliss_flux"]) & (table["bliss_flux"] <= table["bliss_flux_q84"])
    ).all()
    with pytest.raises(ValueError, match="ids"):
        source_table(frame, np.arange(n + 1), 0, 0, tangent_plane, 0, 0)


def test_samples_table_stacks_every_sample(frame) -> None:
    table = samples_table(frame, 0, 0, tangent_plane, visit=1, detector=2)
    counts = [int(sample.n_sources[0]) for sample in frame.samples]
    assert len(table) == sum(counts)
    assert np.bincount(table["sample"], minlength=3).tolist() == counts
    for name, unit, _, _ in SAMPLE_COLUMNS:
        assert table[name].unit == unit and table[name].description, name
    no_samples = type(frame)(frame.status, frame.catalog, [], frame.tile_params, frame.flux_scale_njy, {})
    empty = samples_table(no_samples, 0, 0, tangent_plane, 1, 2)
    assert len(empty) == 0 and "bliss_flux" in empty.colnames


def exposure(**changes) -> ExposureConditions:
    values = dict(pixel_scale_arcsec=0.2, band="r", psf_fwhm_arcsec=(0.7, 0.9), noise_njy=60.0, unit="nJy")
    return ExposureConditions(**{**values, **changes})


def test_training_conditions_from_exposures_reproduce_the_nominal_noise() -> None:
    model = load_default_model()
    nominal = model.conditions
    measured = [
        exposure(noise_njy=nominal.background_noise_njy),
        exposure(noise_njy=nominal.background_noise_njy),
    ]
    overrides = conditions_from_exposures(measured, nominal)
    assert overrides["pixel_scale_arcsec"] == pytest.approx(0.2)
    assert overrides["sky_brightness_mag_per_arcsec2"] == pytest.approx(
        nominal.sky_brightness_mag_per_arcsec2
    )
    with pytest.raises(ValueError, match="bands"):
        conditions_from_exposures([exposure(), exposure(band="i")], nominal)
    with pytest.raises(ValueError, match="flux densities"):
        conditions_from_exposures([exposure(unit="adu")], nominal)
    config = BlissTrainConfig()
    # The packaged recipe's six bands: r calexps train an r-band model.
    run = config.training_run([exposure(psf_fwhm_arcsec=(0.7, 0.8)), exposure(psf_fwhm_arcsec=(0.75, 0.95))])
    assert run.simulator.psf_fwhm_range_arcsec == pytest.approx((0.65, 1.0))
    assert run.conditions.band == "r" and run.band_conditions == ()
    config.conditions.band, config.conditions.bands = "g", []
    with pytest.raises(
        ValueError, match=r"calexps are in band\(s\) \['r'\] but the config's bands are \['g'\]"
    ):
        config.training_run([exposure()])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("inference.detection_threshold", 1.0),
        ("inference.n_samples", -1),
        ("inference.memory_budget_gb", 0.0),
        ("inference.chunk_pixels", 0),
        ("inference.device", "tpu"),
        ("inference.pixel_scale_rtol", -0.1),
        ("inference.out_of_range", "warn"),
        ("inference.invalid_mask_planes", ["BAD", "BAD"]),
        ("autoencoder_iterations", 0),
        ("flux_footprint_nsigma", 0.0),
        ("model_fit.position_sigma_pix", 0.0),
    ],
)
def test_deblend_config_validation_names_the_field(field: str, value) -> None:
    config = BlissDeblendMeasureConfig()
    *sections, name = field.split(".")
    target = config
    for section in sections:
        target = getattr(target, section)
    setattr(target, name, value)
    with pytest.raises(FieldValidationError, match=f"Field '{field}' failed validation"):
        config.validate()


def set_nested(config, field: str, value) -> None:
    """Set a dotted config field (``section.name``)."""
    *sections, name = field.split(".")
    for section in sections:
        config = getattr(config, section)
    setattr(config, name, value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("simulator.psf_fwhm_range_arcsec", [1.2, 0.6]),
        ("simulator.image_height", 66),
        ("training.n_steps", 0),
        ("encoder.checkerboard_groups", 3),
        ("encoder.downsample_kernel", 5),
        ("encoder.tile_size", 6),
        ("encoder.stem", "pixels"),
        (
            "encoder.pixel_channels",
            [16, 32, 64],
        ),  # the space-to-depth stem takes two widths for 4-pixel tiles
        ("prior.bright_star_density_per_arcmin2", -1.0),
        ("prior.bright_star_mag_range", [16.0, 12.0]),
        ("simulator.masked_regions_per_image", -0.5),
        ("training.detection_loss_weight", 0.0),
        ("training.detection_loss_weight", float("nan")),
        ("training.device", "tpu"),
        ("autoencoder_training.n_steps", 0),
        ("autoencoder.stamp_size", 16),
        ("autoencoder.latent_dim", 0),
        ("conditions.band", "q"),
        ("conditions.pixel_scale_arcsec", -1.0),
        ("psf_fwhm_padding_arcsec", -0.1),
    ],
)
def test_train_config_validation_names_the_field(field: str, value) -> None:
    """The nested sections are validated by the core's own checks, reported on the nested field."""
    config = BlissTrainConfig()
    set_nested(config, field, value)
    with pytest.raises(FieldValidationError, match=f"Field '{field}' failed validation"):
        config.validate()


def test_train_config_sections_must_agree() -> None:
    config = BlissTrainConfig()
    config.simulator.tile_size = 8
    with pytest.raises(FieldValidationError, match="simulator.tile_size=8 differs from encoder.tile_size"):
        config.validate()


def test_train_task_builds_the_space_to_depth_encoder_on_a_field_with_bright_stars() -> None:
    config = BlissTrainConfig()
    config.encoder.stem, config.encoder.pixel_channels, config.encoder.head_channels = (
        "space_to_depth",
        [16, 32],
        32,
    )
    config.prior.bright_star_density_per_arcmin2, config.prior.bright_star_mag_range = 5.0, [12.0, 15.0]
    config.simulator.masked_regions_per_image = 1.0
    config.conditions.psf_fwhm_arcsec = 0.9
    config.train_autoencoder = False
    config.validate()
    run = config.training_run()
    assert run.simulator.masked_regions_per_image == 1.0
    encoder = run.encoder
    assert (encoder.stem, encoder.pixel_channels, encoder.head_channels) == ("space_to_depth", (16, 32), 32)
    assert run.prior.bright_star_density_per_arcmin2 == 5.0
    assert run.prior.bright_star_mag_range == (12.0, 15.0)
    assert run.conditions.psf_fwhm_arcsec == 0.9 and run.autoencoder_training is None


def test_train_task_defaults_are_the_packaged_recipe() -> None:
    """`BlissTrainTask`'s default config is the packaged model's recipe, section for section."""
    packaged = load_run_config(default_training_recipe_path())
    assert BlissTrainConfig().training_run() == packaged


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).resolve().parents[1] / "config" / "experiments").glob("*.yaml")),
    ids=lambda p: p.name,
)
def test_training_files_map_one_to_one_onto_the_task_config(path: Path) -> None:
    """Any bliss-train file loads into the task config and gives back the same run."""
    config = BlissTrainConfig()
    config.load_training_file(path)
    config.validate()
    assert config.training_run() == load_run_config(path)


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).resolve().parents[1] / "config").glob("bliss*.py")), ids=lambda p: p.name
)
def test_example_config_overrides_load_and_validate(path: Path) -> None:
    config = BlissTrainConfig() if path.name.startswith("blissTrain") else BlissDeblendMeasureConfig()
    config.load(str(path))
    config.validate()
    assert config.compare(type(config)(), shortcut=True) is False  # the file changes something


def test_core_config_mirrors_keep_the_core_defaults_and_documentation() -> None:
    """Every nested section has the dataclass's fields, defaults and descriptions; a field the
    dataclass does not document cannot be mirrored."""
    import lsst.meas.extensions.bliss.pipeline._core_config as core_config

    for mirror in (
        core_config.FramePexConfig,
        core_config.ModelFitPexConfig,
        core_config.PriorPexConfig,
        core_config.SimulatorPexConfig,
        core_config.EncoderPexConfig,
        core_config.TrainingPexConfig,
        core_config.AutoencoderPexConfig,
        core_config.AutoencoderTrainingPexConfig,
    ):
        core = mirror.core_class
        assert mirror().to_core() == core(), mirror.__name__
        assert set(mirror._fields) == {field.name for field in dataclasses.fields(core)}
        docs = core_config.attribute_docs(core)
        assert all(mirror._fields[name].doc == docs[name] for name in mirror._fields)

    @dataclasses.dataclass(frozen=True)
    class Undocumented:
        """Attributes
        ----------
        known
            A documented field.
        """

        known: int = 1
        unknown: float = 2.0

    with pytest.raises(ValueError, match="Undocumented.unknown has no description"):
        core_config.core_config_class(Undocumented, "UndocumentedPexConfig", core_config.__name__)
