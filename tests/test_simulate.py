"""The image simulator: reproducibility, noise, truth, masks, validation."""

import math

import pytest
import torch

from lsst.meas.extensions.bliss import (
    MASK_PLANES,
    FullCatalog,
    ImageSimulator,
    PriorConfig,
    SimulatorConfig,
    SurveyConditions,
    saturated_pixels,
)

CONDITIONS = SurveyConditions.from_survey()


def simulator(**config) -> ImageSimulator:
    prior = PriorConfig(source_density_per_arcmin2=config.pop("density", 300.0))
    return ImageSimulator(CONDITIONS, prior, SimulatorConfig(**config), device="cpu")


def test_same_seed_gives_bit_identical_images_on_cpu() -> None:
    sim = simulator(image_height=48, image_width=64)
    first, second, other = sim.sample(3, seed=42), sim.sample(3, seed=42), sim.sample(3, seed=43)
    for name in ("image", "variance", "mask", "noiseless"):
        assert torch.equal(getattr(first, name), getattr(second, name))
    assert torch.equal(first.truth_tiles.n_sources, second.truth_tiles.n_sources)
    assert not torch.equal(first.image, other.image)
    assert first.image.shape == (3, 48, 64) and first.mask.dtype == torch.int32


@pytest.mark.parametrize("noise", ["poisson", "gaussian"])
def test_empty_sky_noise_matches_conditions(noise: str) -> None:
    batch = simulator(density=1e-6, noise=noise).sample(8, seed=1)
    sigma = CONDITIONS.background_noise_njy
    assert batch.image.mean().item() == pytest.approx(0.0, abs=5 * sigma / math.sqrt(batch.image.numel()))
    assert batch.image.std().item() == pytest.approx(sigma, rel=0.02)
    assert batch.variance.sqrt().mean().item() == pytest.approx(sigma, rel=1e-4)
    assert batch.background_njy[0].item() == pytest.approx(CONDITIONS.sky_level_njy)


def test_unsubtracted_images_keep_the_sky() -> None:
    batch = simulator(density=1e-6, subtract_background=False).sample(2, seed=1)
    assert batch.image.mean().item() == pytest.approx(CONDITIONS.sky_level_njy, rel=0.01)


def test_variance_includes_source_poisson_noise() -> None:
    batch = simulator(density=2000.0).sample(2, seed=3)
    expected = (batch.noiseless + CONDITIONS.sky_level_njy) / CONDITIONS.njy_to_electrons
    assert torch.allclose(
        batch.variance, expected.clamp(min=CONDITIONS.sky_level_njy / CONDITIONS.njy_to_electrons)
    )
    residual = (batch.image - batch.noiseless) / batch.variance.sqrt()
    assert residual.std().item() == pytest.approx(1.0, rel=0.03)


def test_truth_catalog_matches_the_light() -> None:
    sim = simulator(density=400.0, border_tiles=0, image_height=64, image_width=64)
    batch = sim.sample(4, seed=5)
    truth = batch.truth
    assert isinstance(truth, FullCatalog)
    assert truth.n_sources.tolist() == batch.truth_tiles.n_sources.sum(dim=(1, 2)).tolist()
    valid = truth.is_valid
    assert (truth.x[valid] >= -0.5).all() and (truth.x[valid] < 63.5).all()
    # Rendering the truth reproduces the noiseless image exactly (no border sources here).
    assert torch.allclose(
        sim.render(truth, CONDITIONS.psf(batch.psf_fwhm_arcsec.numpy())), batch.noiseless, atol=1e-3
    )


def test_border_sources_add_light_but_not_truth() -> None:
    sim = simulator(density=3000.0, border_tiles=3, image_height=32, image_width=32)
    batch = sim.sample(2, seed=9)
    rendered_truth = sim.render(batch.truth, CONDITIONS.psf(batch.psf_fwhm_arcsec.numpy()))
    assert (batch.noiseless - rendered_truth).sum().item() > 0
    assert batch.truth_tiles.n_sources.shape == (2, 8, 8)


def test_psf_fwhm_range_draws_per_image_psfs() -> None:
    batch = simulator(psf_fwhm_range_arcsec=(0.6, 1.2)).sample(16, seed=2)
    fwhm = batch.psf_fwhm_arcsec
    assert fwhm.min() >= 0.6 and fwhm.max() <= 1.2 and fwhm.std() > 0.05


def test_saturated_pixels_are_masked_and_clipped_with_their_bleed_trails() -> None:
    conditions = CONDITIONS.replace(full_well_e=2000.0)
    prior = PriorConfig(source_density_per_arcmin2=3000.0, bright_limit_mag=16.0)
    batch = ImageSimulator(conditions, prior, SimulatorConfig(), device="cpu").sample(2, seed=4)
    saturated = (batch.mask >> MASK_PLANES["SAT"]) & 1 == 1
    charge = (batch.noiseless + conditions.sky_level_njy) * conditions.njy_to_electrons
    over = charge > 2000.0
    assert over.any() and torch.equal(saturated, saturated_pixels(charge, 2000.0))
    # Every pixel over the full well is masked, the trails run only along columns that saturate,
    # and the image holds the full well (less the subtracted sky) there.
    assert saturated[over].all() and saturated.sum() > over.sum()
    assert not (saturated & ~over.any(dim=-2, keepdim=True)).any()
    full_well_njy = 2000.0 / conditions.njy_to_electrons - conditions.sky_level_njy
    assert torch.allclose(batch.image[saturated], torch.tensor(full_well_njy))


def test_excess_charge_bleeds_up_and_down_its_column() -> None:
    charge = torch.zeros(2, 20, 3)
    charge[0, 9:11, 1] = 300.0  # 2 x 200 electrons above a full well of 100: 2 pixels each way
    charge[1, 0, 2] = 450.0  # 350 above: 2 pixels each way, clipped at the top edge
    saturated = saturated_pixels(charge, 100.0)
    expected = torch.zeros_like(saturated)
    expected[0, 7:13, 1] = True
    expected[1, 0:3, 2] = True
    assert torch.equal(saturated, expected)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("image_height", 30),
        ("image_width", 0),
        ("tile_size", 0),
        ("noise", "uniform"),
        ("border_tiles", -1),
        ("psf_fwhm_range_arcsec", (0.0, 1.0)),
        ("max_sources_per_tile", 0),
        ("masked_regions_per_image", -1.0),
    ],
)
def test_invalid_simulator_config_names_the_field(field: str, value) -> None:
    with pytest.raises(ValueError, match=field):
        SimulatorConfig(**{field: value})


def test_invalid_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        simulator().sample(0)


def test_masked_regions_hide_columns_and_squares_and_leave_the_rest_as_before() -> None:
    plain = simulator(density=55.0).sample(64, seed=6)
    masked = simulator(density=55.0, masked_regions_per_image=2.0).sample(64, seed=6)
    assert torch.equal(plain.image, masked.image) and torch.equal(plain.truth.x, masked.truth.x)
    bad = (masked.mask >> MASK_PLANES["BAD"]) & 1 == 1
    no_data = (masked.mask >> MASK_PLANES["NO_DATA"]) & 1 == 1
    # A BAD region is a whole column; NO_DATA regions are squares of side 8-48 pixels.
    assert bad.any() and torch.equal(bad.any(dim=1, keepdim=True).expand_as(bad), bad)
    assert no_data.any() and not torch.equal(no_data.any(dim=1, keepdim=True).expand_as(no_data), no_data)
    regions_per_image = (bad.any(dim=1).sum(dim=1) + no_data.any(dim=(1, 2))).float().mean()
    assert 0.8 < float(regions_per_image) <= 2.0
    assert torch.equal(plain.mask, masked.mask & ~((1 << MASK_PLANES["BAD"]) | (1 << MASK_PLANES["NO_DATA"])))
