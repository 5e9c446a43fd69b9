"""The joint fit of blended sources' parametric models: recovery, selection, flags, bad input."""

import dataclasses
import math

import pytest
import torch

from lsst.meas.extensions.bliss import (
    ModelFitConfig,
    blended_sources,
    deblend_sources,
    fit_source_models,
    measure_deblended,
    model_sources,
    render_source_models,
    scene_model,
)
from test_deblend import CONDITIONS, FWHM_PIX, catalog, galaxy

NOISE_NJY = 20.0


def observed(rows: list[dict], seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """A 64 x 64 image of the sources with Gaussian noise of NOISE_NJY, and its variance."""
    truth = catalog(rows)
    models = render_source_models(truth, torch.full((len(rows),), FWHM_PIX), CONDITIONS, 64, 64)
    generator = torch.Generator().manual_seed(seed)
    image = scene_model(models, 64, 64) + NOISE_NJY * torch.randn(64, 64, generator=generator)
    return image, torch.full((64, 64), NOISE_NJY**2)


def blend() -> list[dict]:
    first = galaxy(28.0, 31.0, 0.5, 0.4, flux=4e4) | {"disk_hlr_arcsec": 0.7}
    second = galaxy(35.0, 33.0, 0.8, 2.0, flux=2.5e4) | {"disk_hlr_arcsec": 0.4}
    return [first, second]


def perturbed(rows: list[dict]) -> list[dict]:
    """The encoder's estimates of a blend, as wrong as they tend to be: sizes, axis ratios, fluxes."""
    return [
        row
        | {
            "disk_hlr_arcsec": row["disk_hlr_arcsec"] * factor,
            "disk_q": min(0.95, row["disk_q"] + 0.2),
            "flux_njy": row["flux_njy"] * (2.0 - factor),
            "x": row["x"] + 0.4,
        }
        for row, factor in zip(rows, (1.3, 0.75), strict=True)
    ]


def test_the_fit_moves_blended_galaxies_towards_their_true_shapes_and_fluxes() -> None:
    truth = blend()
    image, variance = observed(truth)
    start = catalog(perturbed(truth))
    fitted, failed = fit_source_models(start, torch.full((2,), FWHM_PIX), CONDITIONS, image, variance)
    assert not failed.any()
    for name in ("disk_hlr_arcsec", "disk_q", "flux_njy"):
        true = torch.tensor([row[name] for row in truth])
        before = (start.fields[name][0].log() - true.log()).abs()
        after = (fitted.fields[name][0].log() - true.log()).abs()
        assert (after < 0.5 * before).all(), (name, before, after)
    assert torch.allclose(fitted.x[0], torch.tensor([28.0, 35.0]), atol=0.15)
    # And the deblended fluxes with them.
    fwhm = torch.full((2,), FWHM_PIX)
    true_flux = torch.tensor([row["flux_njy"] for row in truth], dtype=torch.float64)
    residuals = []
    for estimate in (start, fitted):
        models = render_source_models(estimate, fwhm, CONDITIONS, 64, 64)
        flux = measure_deblended(deblend_sources(image, variance, models), NOISE_NJY)["flux_njy"]
        residuals.append((torch.from_numpy(flux) / true_flux - 1).abs())
    assert residuals[1].max() < 0.03 < residuals[0].max(), residuals


def test_unselected_sources_and_the_shapes_of_stars_are_left_as_they_were() -> None:
    rows = [*perturbed(blend()), dict(x=12.0, y=50.0, flux_njy=3e4), dict(x=50.0, y=10.0, flux_njy=2e4)]
    image, variance = observed([*blend(), *rows[2:]])
    start = catalog(rows)
    selected = torch.tensor([True, True, True, False])
    fitted, failed = fit_source_models(
        start, torch.full((4,), FWHM_PIX), CONDITIONS, image, variance, selected=selected
    )
    assert not failed.any()
    for name, values in fitted.fields.items():
        assert torch.equal(values[0, 3], start.fields[name][0, 3]), name
        if name not in ("flux_njy",):
            assert torch.equal(values[0, 2], start.fields[name][0, 2]), name
    assert fitted.x[0, 3] == start.x[0, 3] and fitted.y[0, 3] == start.y[0, 3]
    assert fitted.x[0, 2] != start.x[0, 2]  # the selected star's position is fitted


def test_masked_pixels_do_not_pull_the_fit() -> None:
    truth = blend()
    image, variance = observed(truth)
    valid = torch.ones(64, 64, dtype=torch.bool)
    valid[28:34, 24:32] = False  # a corrupted patch over the first galaxy's core
    image[~valid] = 1e6
    start = catalog(perturbed(truth))
    fitted, failed = fit_source_models(start, torch.full((2,), FWHM_PIX), CONDITIONS, image, variance, valid)
    assert not failed.any()
    true_flux = torch.tensor([row["flux_njy"] for row in truth])
    assert torch.allclose(fitted.fields["flux_njy"][0], true_flux, rtol=0.1)


def test_non_finite_estimates_keep_their_values_and_are_flagged() -> None:
    truth = blend()
    image, variance = observed(truth)
    rows = perturbed(truth)
    rows[1]["disk_q"] = math.nan
    start = catalog(rows)
    fitted, failed = fit_source_models(start, torch.full((2,), FWHM_PIX), CONDITIONS, image, variance)
    assert failed.tolist() == [False, True]
    assert math.isnan(float(fitted.fields["disk_q"][0, 1]))
    assert fitted.fields["disk_hlr_arcsec"][0, 1] == start.fields["disk_hlr_arcsec"][0, 1]


def test_bad_input_is_named() -> None:
    truth = blend()
    image, variance = observed(truth)
    start = catalog(truth)
    fwhm = torch.full((2,), FWHM_PIX)
    with pytest.raises(ValueError, match="differ in shape"):
        fit_source_models(start, fwhm, CONDITIONS, image, variance[:32])
    with pytest.raises(ValueError, match="psf_fwhm_pix"):
        fit_source_models(start, torch.full((3,), FWHM_PIX), CONDITIONS, image, variance)
    with pytest.raises(ValueError, match="selected has shape"):
        fit_source_models(start, fwhm, CONDITIONS, image, variance, selected=torch.ones(3, dtype=torch.bool))
    two_images = dataclasses.replace(
        start,
        n_sources=start.n_sources.repeat(2),
        x=start.x.repeat(2, 1),
        y=start.y.repeat(2, 1),
        fields={name: value.repeat(2, 1) for name, value in start.fields.items()},
    )
    with pytest.raises(ValueError, match="one image"):
        fit_source_models(two_images, fwhm, CONDITIONS, image, variance)
    with pytest.raises(ValueError, match="max_iterations"):
        ModelFitConfig(max_iterations=0)
    with pytest.raises(ValueError, match="log_hlr_sigma"):
        ModelFitConfig(log_hlr_sigma=0.0)
    empty = catalog([])
    fitted, failed = fit_source_models(empty, torch.zeros(0), CONDITIONS, image, variance)
    assert fitted is empty and failed.numel() == 0


def test_blended_sources_are_those_whose_footprints_touch() -> None:
    rows = [*blend(), dict(x=8.0, y=56.0, flux_njy=2e4)]
    models = render_source_models(catalog(rows), torch.full((3,), FWHM_PIX), CONDITIONS, 64, 64)
    assert blended_sources(models, NOISE_NJY).tolist() == [True, True, False]
    # A faint enough isophote reaches the corner star too; a bright one separates the pair.
    assert blended_sources(models, NOISE_NJY, footprint_nsigma=1e-4).tolist() == [True, True, True]
    assert not blended_sources(models, NOISE_NJY, footprint_nsigma=40.0).any()


def test_model_sources_fits_the_blended_sources_and_flags_failures() -> None:
    truth = [*blend(), dict(x=8.0, y=56.0, flux_njy=2e4)]
    image, variance = observed(truth)
    rows = [*perturbed(blend()), dict(x=8.3, y=56.0, flux_njy=2e4)]
    fwhm = torch.full((3,), FWHM_PIX)
    plain, _ = model_sources(catalog(rows), fwhm, CONDITIONS, image, variance)
    fitted, _ = model_sources(catalog(rows), fwhm, CONDITIONS, image, variance, fit=ModelFitConfig())
    assert plain.fit_failed is None and fitted.fit_failed.tolist() == [False, False, False]

    # The isolated star's model is the encoder's; the pair's models changed.
    def own_stamp(models, index):
        centre, half = models.stamp_size // 2, int(models.half_size[index])
        return models.models[index, centre - half : centre + half + 1, centre - half : centre + half + 1]

    torch.testing.assert_close(own_stamp(fitted, 2), own_stamp(plain, 2))
    assert not torch.allclose(fitted.models[0].sum(), plain.models[0].sum(), rtol=1e-3)
    flags = measure_deblended(deblend_sources(image, variance, fitted), NOISE_NJY)
    assert flags["flag_fit_failed"].tolist() == [False, False, False]
    # A source without a finite estimate keeps it (flagged if it was to be fitted) and has no model;
    # its neighbour is still fitted.
    rows[0]["disk_frac"] = math.nan
    broken, _ = model_sources(catalog(rows), fwhm, CONDITIONS, image, variance, fit=ModelFitConfig())
    assert broken.fit_failed.tolist()[1:] == [False, False]
    flags = measure_deblended(deblend_sources(image, variance, broken), NOISE_NJY)
    assert flags["flag_no_model"].tolist() == [True, False, False]


def test_batched_lbfgs_solves_independent_groups_and_isolates_a_broken_one() -> None:
    from lsst.meas.extensions.bliss.deblend._model_fit import _batched_lbfgs

    # Three groups of coupled quadratics (of different scales and conditioning) and a fourth whose
    # objective is not finite.
    generator = torch.Generator().manual_seed(0)
    group = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    n_params = 4
    matrices = []
    for _ in range(len(group)):
        factor = torch.randn(n_params, n_params, generator=generator, dtype=torch.float64)
        matrices.append(factor @ factor.T + 0.1 * torch.eye(n_params, dtype=torch.float64))
    hessian = torch.stack(matrices)
    target = torch.randn(len(group), n_params, generator=generator, dtype=torch.float64)
    coupling = 0.3  # sources of a group pull each other towards their mean

    def per_group(variables: torch.Tensor) -> torch.Tensor:
        offset = variables - target
        own = 0.5 * torch.einsum("ni,nij,nj->n", offset, hessian, offset)
        mean = torch.zeros(4, n_params, dtype=torch.float64).index_add(0, group, variables)
        mean = mean / torch.bincount(group, minlength=4)[:, None]
        pull = 0.5 * coupling * (variables - mean[group]).square().sum(dim=1)
        value = torch.zeros(4, dtype=torch.float64).index_add(0, group, own + pull)
        return torch.where(torch.arange(4) == 3, torch.nan, value)

    def evaluate(variables: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        variables = variables.detach().requires_grad_(True)
        value = per_group(variables)
        (gradient,) = torch.autograd.grad(value.nan_to_num().sum(), variables)
        return value.detach(), gradient

    variables, failed = _batched_lbfgs(evaluate, (len(group), n_params), group, 4, 200)
    assert failed.tolist() == [False] * 6 + [True]
    assert torch.equal(variables[6], torch.zeros(n_params, dtype=torch.float64))
    # The exact minimum of the finite groups, from their (quadratic) objective's Newton step.
    padding = torch.zeros(1, n_params, dtype=torch.float64)

    def total(flat: torch.Tensor) -> torch.Tensor:
        return per_group(torch.cat([flat.reshape(6, n_params), padding]))[:3].sum()

    zero = torch.zeros(6 * n_params, dtype=torch.float64)
    newton = torch.autograd.functional.hessian(total, zero)
    slope = torch.autograd.functional.jacobian(total, zero)
    optimum = torch.cat([-torch.linalg.solve(newton, slope).reshape(6, n_params), padding])
    everything = torch.ones(4, dtype=torch.bool)
    best, _ = evaluate(optimum, everything)
    reached, _ = evaluate(variables, everything)
    assert ((reached - best)[:3] < 1e-5).all() and ((reached - best)[:3] > -1e-9).all(), (reached, best)
