"""Prior sanity: counts, flux power law, star fraction, shapes, reproducibility, validation."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import optimize, spatial, stats

from lsst.meas.extensions.bliss import (
    PriorConfig,
    SourcePrior,
    SurveyConditions,
    mag_to_flux_njy,
    simulate_galaxy_stamps,
)

CONDITIONS = SurveyConditions.from_survey()


def occupied_values(catalog, name: str) -> torch.Tensor:
    return catalog.fields[name][catalog.is_valid]


def pareto_alpha_mle(flux: np.ndarray, minimum: float, maximum: float) -> float:
    """Maximum-likelihood index of a Pareto law truncated to [minimum, maximum]."""
    n, log_ratio = flux.size, math.log(minimum / maximum)
    mean_log = np.log(flux / minimum).mean()

    def score(alpha: float) -> float:
        ratio = math.exp(alpha * log_ratio)
        return 1.0 / alpha - mean_log + ratio * log_ratio / (1.0 - ratio)

    return optimize.brentq(score, 0.01, 10.0) if n else math.nan


def test_mean_count_per_tile_from_1e5_tiles() -> None:
    prior = SourcePrior(PriorConfig(), CONDITIONS)
    catalog = prior.sample(10, 100, 100, torch.Generator().manual_seed(1))
    rate = prior.mean_sources_per_tile
    # Default: 55 sources / arcmin^2 on 0.8" tiles.
    assert rate == pytest.approx(55.0 * (0.8 / 60) ** 2)
    expected = 1.0 - math.exp(-rate)  # E[min(Poisson(rate), 1)]
    observed = catalog.n_sources.double().mean().item()
    standard_error = math.sqrt(expected * (1 - expected) / 1e5)
    assert abs(observed - expected) < 5 * standard_error


def test_flux_slope_and_star_fraction_from_1e5_sources() -> None:
    config = PriorConfig(source_density_per_arcmin2=20000.0, star_fraction=0.3)
    prior = SourcePrior(config, CONDITIONS, max_sources_per_tile=4)
    catalog = prior.sample(4, 100, 100, torch.Generator().manual_seed(2), dtype=torch.float64)
    is_galaxy = occupied_values(catalog, "is_galaxy")
    flux = occupied_values(catalog, "flux_njy").numpy()
    n = is_galaxy.numel()
    assert n > 100_000
    star_fraction = 1.0 - is_galaxy.double().mean().item()
    assert abs(star_fraction - 0.3) < 5 * math.sqrt(0.3 * 0.7 / n)
    assert flux.min() >= prior.min_flux_njy and flux.max() <= prior.max_flux_njy
    for mask, alpha in (
        (is_galaxy.numpy(), config.galaxy_flux_alpha),
        (~is_galaxy.numpy(), config.star_flux_alpha),
    ):
        estimate = pareto_alpha_mle(flux[mask], prior.min_flux_njy, prior.max_flux_njy)
        assert abs(estimate - alpha) < 5 * alpha / math.sqrt(mask.sum())


def test_faint_limit_is_one_mag_below_depth() -> None:
    prior = SourcePrior(PriorConfig(), CONDITIONS)
    assert prior.faint_limit_mag == pytest.approx(CONDITIONS.point_source_depth_mag() + 1.0)


def test_galaxy_shapes_are_in_range_and_stars_are_neutral() -> None:
    config = PriorConfig(source_density_per_arcmin2=5000.0)
    catalog = SourcePrior(config, CONDITIONS).sample(2, 50, 50, torch.Generator().manual_seed(3))
    galaxy = catalog.is_valid & catalog.fields["is_galaxy"]
    star = catalog.is_valid & ~catalog.fields["is_galaxy"]
    hlr = catalog.fields["disk_hlr_arcsec"][galaxy]
    assert hlr.min() >= config.min_hlr_arcsec and hlr.max() <= config.max_hlr_arcsec
    assert (catalog.fields["bulge_hlr_arcsec"][galaxy] <= hlr + 1e-6).all()
    q = catalog.fields["disk_q"][galaxy]
    assert q.min() >= 0.2 and q.max() <= 1.0
    # Brighter galaxies are larger (size-magnitude relation).
    flux = catalog.fields["flux_njy"][galaxy]
    bright = flux > flux.median()
    assert hlr[bright].median() > hlr[~bright].median()
    assert (catalog.fields["disk_hlr_arcsec"][star] == 0).all()
    assert (catalog.fields["disk_q"][star] == 1).all()
    assert (catalog.locations[catalog.is_valid] >= 0).all() and (
        catalog.locations[catalog.is_valid] < 1
    ).all()


def test_same_seed_same_catalog() -> None:
    prior = SourcePrior(PriorConfig(source_density_per_arcmin2=2000.0), CONDITIONS)
    first = prior.sample(2, 16, 16, torch.Generator().manual_seed(11))
    second = prior.sample(2, 16, 16, torch.Generator().manual_seed(11))
    third = prior.sample(2, 16, 16, torch.Generator().manual_seed(12))
    assert torch.equal(first.n_sources, second.n_sources)
    for name in first.fields:
        assert torch.equal(first.fields[name], second.fields[name])
    assert not torch.equal(first.fields["flux_njy"], third.fields["flux_njy"])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("source_density_per_arcmin2", 0.0),
        ("source_density_per_arcmin2", -3.0),
        ("star_fraction", 1.5),
        ("galaxy_flux_alpha", 0.0),
        ("faint_limit_mag", 10.0),
        ("max_hlr_arcsec", 0.05),
        ("disk_q_range", (0.0, 1.0)),
        ("bulge_q_range", (0.9, 0.5)),
        ("companion_fraction", 1.5),
        ("companion_max_tiles", 0),
        ("companion_delta_mag_range", (2.0, 1.0)),
        ("companion_min_separation_pix", -1.0),
        ("bright_star_density_per_arcmin2", -1.0),
        ("bright_star_mag_range", (16.0, 12.0)),
        ("compact_fraction", -0.1),
        ("compact_max_hlr_arcsec", math.nan),
        ("disk_ellipticity_sigma", -0.2),
        ("knot_galaxy_fraction", 2.0),
        ("knot_flux_fraction_range", (0.5, 1.0)),
        ("knot_count_range", (0, 10)),
        ("knot_count_range", (5.5, 10)),
        ("knot_offset_fraction", math.inf),
        ("knot_offset_hlr_range", (1.0, 0.5)),
    ],
)
def test_invalid_prior_parameters_name_the_field(field: str, value) -> None:
    with pytest.raises(ValueError, match=field):
        PriorConfig(**{field: value})


def test_invalid_tiling_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="tile_size"):
        SourcePrior(PriorConfig(), CONDITIONS, tile_size=0)
    with pytest.raises(ValueError, match="max_sources_per_tile"):
        SourcePrior(PriorConfig(), CONDITIONS, max_sources_per_tile=0)


def test_companions_are_fainter_galaxies_near_their_host_added_to_the_same_field() -> None:
    reach = 2
    plain = SourcePrior(PriorConfig(), CONDITIONS).sample(8, 40, 40, torch.Generator().manual_seed(5))
    config = PriorConfig(companion_fraction=1.0, companion_max_tiles=reach)
    prior = SourcePrior(config, CONDITIONS)
    paired = prior.sample(8, 40, 40, torch.Generator().manual_seed(5))
    # The Poisson field is drawn first with the same numbers; companions only fill empty tiles.
    before = plain.n_sources > 0
    assert torch.equal(paired.n_sources[before], plain.n_sources[before])
    for name, value in plain.fields.items():
        assert torch.equal(paired.fields[name][before], value[before]), name
    added = (paired.n_sources > 0) & ~before
    assert int(added.sum()) > 0.2 * int((before & plain.fields["is_galaxy"][..., 0]).sum())
    flux = paired.fields["flux_njy"][..., 0]
    host_galaxy = before & plain.fields["is_galaxy"][..., 0]
    for image, row, col in torch.nonzero(added).tolist():
        assert bool(paired.fields["is_galaxy"][image, row, col, 0])
        assert flux[image, row, col] >= prior.min_flux_njy
        near = host_galaxy[
            image, max(0, row - reach) : row + reach + 1, max(0, col - reach) : col + reach + 1
        ]
        near_flux = flux[image, max(0, row - reach) : row + reach + 1, max(0, col - reach) : col + reach + 1]
        # Its host is a galaxy within reach, brighter by 0-2.5 mag.
        ratio = flux[image, row, col] / near_flux[near]
        assert bool(((ratio <= 1.0 + 1e-5) & (ratio >= 10 ** (-0.4 * 2.5) - 1e-5)).any())
    assert (paired.fields["disk_hlr_arcsec"][..., 0][added] > 0).all()
    assert PriorConfig.from_dict(config.to_dict()) == config


def test_companions_closer_than_the_minimum_separation_are_not_drawn() -> None:
    """With a minimum separation the companions are a subset of those drawn without it (the same random
    numbers, the same companions); each one left out lies closer than the minimum to a galaxy of the
    field at least as bright as it (its host)."""
    config = PriorConfig(companion_fraction=1.0, companion_delta_mag_range=(0.0, 1.0))
    generator = torch.Generator
    every = SourcePrior(config, CONDITIONS).sample(8, 40, 40, generator().manual_seed(5))
    distant = dataclasses.replace(config, companion_min_separation_pix=3.5)
    kept = SourcePrior(distant, CONDITIONS).sample(8, 40, 40, generator().manual_seed(5))
    plain = SourcePrior(PriorConfig(), CONDITIONS).sample(8, 40, 40, generator().manual_seed(5))
    field = plain.n_sources > 0
    added, added_kept = (every.n_sources > 0) & ~field, (kept.n_sources > 0) & ~field
    assert bool((added_kept <= added).all()) and 0 < int(added_kept.sum()) < int(added.sum())
    for name, value in every.fields.items():
        assert torch.equal(kept.fields[name][added_kept], value[added_kept]), name
    assert torch.equal(kept.locations[added_kept], every.locations[added_kept])

    def positions_pix(catalog, where):
        image, row, col = torch.nonzero(where, as_tuple=True)
        local = catalog.locations[image, row, col, 0]
        return image, (torch.stack([col, row], dim=1) + local) * 4

    # A dropped companion is closer than 3.5 px to a field galaxy at least as bright as it (its host).
    host_galaxy = field & plain.fields["is_galaxy"][..., 0]
    host_image, host_xy = positions_pix(plain, host_galaxy)
    host_flux = plain.fields["flux_njy"][..., 0][host_galaxy]
    dropped = added & ~added_kept
    image, xy = positions_pix(every, dropped)
    flux = every.fields["flux_njy"][..., 0][dropped]
    for index in range(len(image)):
        brighter = (host_image == image[index]) & (host_flux >= flux[index] * (1 - 1e-6))
        assert float((host_xy[brighter] - xy[index]).norm(dim=1).min()) < 3.5
    assert PriorConfig.from_dict(distant.to_dict()) == distant


def test_bright_stars_are_added_at_their_density_and_magnitudes() -> None:
    config = PriorConfig(bright_star_density_per_arcmin2=20.0, bright_star_mag_range=(12.0, 14.0))
    prior = SourcePrior(config, CONDITIONS)
    plain = SourcePrior(PriorConfig(), CONDITIONS).sample(16, 40, 40, torch.Generator().manual_seed(8))
    field = prior.sample(16, 40, 40, torch.Generator().manual_seed(8))
    flux = field.fields["flux_njy"][..., 0]
    bright = (field.n_sources > 0) & (flux > mag_to_flux_njy(14.0) * (1 - 1e-5))
    area_arcmin2 = 16 * (40 * 4 * CONDITIONS.pixel_scale_arcsec / 60) ** 2
    expected = 20.0 * area_arcmin2
    assert abs(int(bright.sum()) - expected) < 4 * math.sqrt(expected)
    assert (flux[bright] <= mag_to_flux_njy(12.0) * (1 + 1e-5)).all()
    assert not field.fields["is_galaxy"][..., 0][bright].any()
    for name in ("disk_hlr_arcsec", "bulge_hlr_arcsec", "disk_frac"):
        assert (field.fields[name][..., 0][bright] == 0).all(), name
    # Elsewhere the Poisson field is the one drawn without the option, number for number.
    for name, value in plain.fields.items():
        assert torch.equal(field.fields[name][~bright], value[~bright]), name
    assert torch.equal(field.n_sources[~bright], plain.n_sources[~bright])
    assert PriorConfig.from_dict(config.to_dict()) == config
    assert config.poisson_field() == PriorConfig()


def test_compact_galaxies_need_a_compact_radius_above_the_minimum() -> None:
    with pytest.raises(ValueError, match="compact_max_hlr_arcsec"):
        PriorConfig(compact_fraction=0.1, compact_max_hlr_arcsec=0.05)


def test_realistic_options_switched_off_keep_todays_random_numbers() -> None:
    # Ranges of switched-off options change nothing: the draws are those of the plain prior.
    other_ranges = PriorConfig(
        knot_count_range=(2, 3), knot_offset_hlr_range=(0.0, 2.0), compact_max_hlr_arcsec=0.4
    )
    first = SourcePrior(PriorConfig(), CONDITIONS).sample(2, 16, 16, torch.Generator().manual_seed(4))
    second = SourcePrior(other_ranges, CONDITIONS).sample(2, 16, 16, torch.Generator().manual_seed(4))
    assert set(first.fields) == set(second.fields)
    assert not any(name.startswith("knot_") for name in first.fields)
    for name in first.fields:
        assert torch.equal(first.fields[name], second.fields[name])
    realistic = PriorConfig().with_realistic_galaxies()
    assert PriorConfig.from_dict(realistic.to_dict()) == realistic


def realistic_shapes(n: int, magnitude: float, **overrides) -> dict[str, np.ndarray]:
    config = dataclasses.replace(PriorConfig().with_realistic_galaxies(), **overrides)
    prior = SourcePrior(config, CONDITIONS)
    flux = torch.full((n,), float(mag_to_flux_njy(magnitude)), dtype=torch.float64)
    shapes = prior.sample_galaxy_shapes(flux, torch.Generator().manual_seed(11))
    return {name: value.numpy() for name, value in shapes.items()}


def test_realistic_sizes_follow_the_relation_with_compact_galaxies_at_every_magnitude() -> None:
    config = PriorConfig().with_realistic_galaxies()
    for magnitude in (19.0, 24.0):
        radius = realistic_shapes(40_000, magnitude)["disk_hlr_arcsec"]
        median = config.size_median_arcsec * 10 ** (-config.size_mag_slope * (magnitude - 24.0))
        # A tenth are compact (0.1"-0.2"); the rest follow the log-normal relation (truncated at 0.1"-5").
        lognormal_compact = stats.norm.cdf(math.log(0.2 / median) / config.size_log_scatter)
        expected_compact = 0.1 + 0.9 * lognormal_compact
        assert np.mean(radius < 0.2) == pytest.approx(expected_compact, abs=0.01)
        assert np.median(radius[radius >= 0.2]) == pytest.approx(median, rel=0.05 if magnitude < 20 else 0.15)
        assert radius.min() >= 0.1 and radius.max() <= 5.0
    bright = realistic_shapes(40_000, 17.0)["disk_hlr_arcsec"]
    assert np.mean(bright < 0.2) >= 0.09 and np.mean(bright > 3.0) > 0.02


def test_disk_ellipticities_have_the_configured_dispersion() -> None:
    q = realistic_shapes(40_000, 23.0)["disk_q"]
    g = (1 - q) / (1 + q)
    # |g| of a 2-d Gaussian of dispersion sigma per component is Rayleigh, truncated at q = 0.2.
    sigma, g_max = 0.26, (1 - 0.2) / (1 + 0.2)
    cdf_max = 1 - math.exp(-(g_max**2) / (2 * sigma**2))
    truncated_median = sigma * math.sqrt(-2 * math.log(1 - 0.5 * cdf_max))
    assert np.median(g) == pytest.approx(truncated_median, rel=0.03)
    assert q.min() >= 0.2 and q.max() <= 1.0


def test_knots_are_drawn_at_their_rate_and_in_their_ranges() -> None:
    shapes = realistic_shapes(40_000, 22.0)
    has_knots = shapes["knot_count"] > 0
    disky = shapes["disk_frac"] > 0
    assert np.mean(has_knots[disky]) == pytest.approx(0.5, abs=0.01)
    fraction, count = shapes["knot_frac"][has_knots], shapes["knot_count"][has_knots]
    assert fraction.min() >= 0.05 and fraction.max() <= 0.5
    assert np.mean(fraction) == pytest.approx(0.275, abs=0.005)
    assert set(np.unique(count)) == set(range(5, 31))
    offset = shapes["knot_offset_hlr"][has_knots]
    assert np.mean(offset > 0) == pytest.approx(0.2, abs=0.01)
    assert offset[offset > 0].min() >= 0.25 and offset.max() <= 1.0
    seeds = shapes["knot_seed"][has_knots]
    assert np.all(seeds == np.round(seeds)) and len(np.unique(seeds)) > 0.99 * seeds.size
    assert np.all(shapes["knot_seed"][~has_knots] == 0)


def test_stars_and_padding_carry_no_knots() -> None:
    config = PriorConfig(knot_galaxy_fraction=1.0, star_fraction=0.5)
    catalog = SourcePrior(config, CONDITIONS).sample(2, 32, 32, torch.Generator().manual_seed(2))
    not_galaxy = ~(catalog.is_valid & catalog.fields["is_galaxy"])
    for name in ("knot_frac", "knot_count", "knot_seed", "knot_offset_hlr"):
        assert torch.all(catalog.fields[name][not_galaxy] == 0)
    assert torch.all(catalog.fields["knot_count"][~not_galaxy & (catalog.fields["disk_frac"] > 0)] > 0)


def test_companions_make_pairs_one_to_two_psf_fwhm_apart_common() -> None:
    fwhm_pix = CONDITIONS.psf_fwhm_arcsec / CONDITIONS.pixel_scale_arcsec

    def close_pair_fraction(companion_fraction: float) -> float:
        prior = SourcePrior(PriorConfig(companion_fraction=companion_fraction), CONDITIONS)
        catalog = prior.sample(20, 48, 48, torch.Generator().manual_seed(6)).to_full_catalog()
        close = total = 0
        for index in range(catalog.batch_size):
            count = int(catalog.n_sources[index])
            xy = torch.stack([catalog.x[index, :count], catalog.y[index, :count]], 1).numpy()
            galaxy = catalog.fields["is_galaxy"][index, :count].numpy()
            distance = spatial.cKDTree(xy).query(xy, k=2)[0][:, 1]
            inner = (xy.min(1) > 2 * fwhm_pix) & (xy.max(1) < 192 - 2 * fwhm_pix) & galaxy
            total += int(inner.sum())
            close += int((inner & (distance >= fwhm_pix) & (distance <= 2 * fwhm_pix)).sum())
        return close / total

    poisson, clustered = close_pair_fraction(0.0), close_pair_fraction(0.3)
    assert 0.05 < poisson < 0.2
    assert clustered > 1.6 * poisson


def test_galaxy_stamps_draw_the_knots_of_the_prior() -> None:
    def stamps(knot_flux_fraction: float) -> torch.Tensor:
        config = PriorConfig(knot_galaxy_fraction=1.0, knot_flux_fraction_range=(knot_flux_fraction,) * 2)
        prior = SourcePrior(config, CONDITIONS)
        batch = simulate_galaxy_stamps(prior, (0.7, 0.7), 31, 16, torch.Generator().manual_seed(3))
        return batch.noiseless, batch.flux_njy

    (smooth, flux), (knotty, same_flux) = stamps(0.0), stamps(0.5)
    # The same galaxies (same draws) with half their disk light moved into knots: the same flux on the
    # stamps that hold their galaxy, other light.
    assert torch.equal(flux, same_flux)
    held = smooth.sum((1, 2)) > 0.99 * flux
    assert held.sum() >= 8
    assert torch.allclose(knotty.sum((1, 2))[held], flux[held], rtol=0.01)
    difference = (knotty - smooth).abs().amax((1, 2)) / smooth.amax((1, 2))
    # Knots under the PSF of a compact galaxy change little; in large ones they stand out.
    assert float((difference > 0.01).float().mean()) >= 0.5 and float(difference.max()) > 0.2
