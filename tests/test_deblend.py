"""Deblending from source models: conservation, clipping, measurements, bad models."""

import dataclasses
import math

import galsim
import numpy as np
import pytest
import torch

from lsst.meas.extensions.bliss import (
    SOURCE_FIELDS,
    AutoencoderConfig,
    FullCatalog,
    GalaxyAutoencoder,
    SurveyConditions,
    deblend_sources,
    measure_deblended,
    model_sources,
    psf_corrected_shapes,
    refine_galaxy_models,
    render_source_models,
    scene_model,
)

CONDITIONS = SurveyConditions.from_survey()
FWHM_PIX = CONDITIONS.psf_fwhm_pix


def catalog(rows: list[dict], height: int = 64, width: int = 64) -> FullCatalog:
    """One image's sources: x, y and any SOURCE_FIELDS (defaults: a star of 1e4 nJy)."""
    defaults = {name: 0.0 for name in SOURCE_FIELDS} | {"flux_njy": 1e4, "disk_q": 1.0, "bulge_q": 1.0}
    fields = {
        name: torch.tensor([[float(row.get(name, defaults[name])) for row in rows]]) for name in SOURCE_FIELDS
    }
    fields["is_galaxy"] = fields["is_galaxy"].bool()
    x = torch.tensor([[float(row["x"]) for row in rows]])
    y = torch.tensor([[float(row["y"]) for row in rows]])
    return FullCatalog(height, width, torch.tensor([len(rows)]), x, y, fields)


def galaxy(x: float, y: float, q: float, angle: float, flux: float = 5e4) -> dict:
    return dict(
        x=x,
        y=y,
        flux_njy=flux,
        is_galaxy=1,
        disk_frac=1.0,
        disk_hlr_arcsec=0.6,
        disk_q=q,
        position_angle_rad=angle,
    )


def test_deblended_images_add_up_to_the_image_and_models_to_their_flux() -> None:
    sources = catalog([dict(x=30.2, y=31.7), galaxy(34.0, 30.0, 0.6, 0.3), dict(x=5.0, y=60.0, flux_njy=3e3)])
    models = render_source_models(sources, torch.full((3,), FWHM_PIX), CONDITIONS, 64, 64)
    scene = scene_model(models, 64, 64)
    generator = torch.Generator().manual_seed(1)
    image = scene + 20.0 * torch.randn(64, 64, generator=generator)
    variance = torch.full((64, 64), 400.0)
    deblended = deblend_sources(image, variance, models)
    rebuilt = torch.zeros(64, 64)
    for index in range(len(models)):
        y0, x0 = int(models.y0[index]), int(models.x0[index])
        size = models.stamp_size
        for row in range(size):
            for col in range(size):
                if 0 <= y0 + row < 64 and 0 <= x0 + col < 64:
                    rebuilt[y0 + row, x0 + col] += deblended.images[index, row, col]
    covered = scene > 0
    torch.testing.assert_close(rebuilt[covered], image[covered], atol=1e-3, rtol=1e-4)
    # Unclipped models hold (nearly) all of their flux; the corner source is clipped and flagged.
    assert models.models[0].sum() == pytest.approx(1e4, rel=5e-3)
    assert models.clipped.tolist() == [False, False, True]


def test_isolated_star_and_galaxy_measurements() -> None:
    size = 160
    rows = [
        dict(x=40.0, y=40.0, flux_njy=2e5),
        galaxy(120.0, 120.0, 0.5, 0.0, 2e5),
        galaxy(40.0, 120.0, 0.5, math.pi / 4, 2e5),
    ]
    sources = catalog(rows, size, size)
    models = render_source_models(sources, torch.full((3,), FWHM_PIX), CONDITIONS, size, size)
    image = scene_model(models, size, size)
    deblended = deblend_sources(image, torch.full((size, size), 100.0), models)
    measured = measure_deblended(deblended, noise_njy=10.0)
    assert not measured["flag_moments_failed"].any() and not measured["flag_stamp_clipped"].any()
    np.testing.assert_allclose(measured["flux_njy"], 2e5, rtol=0.01)
    assert abs(measured["e1"][0]) < 0.01 and abs(measured["e2"][0]) < 0.01
    sigma = FWHM_PIX / (2 * math.sqrt(2 * math.log(2)))
    assert measured["sigma_pix"][0] == pytest.approx(sigma, rel=0.15)  # a Moffat is not a Gaussian
    assert measured["e1"][1] > 0.1 and abs(measured["e2"][1]) < 0.02  # major axis along x
    assert measured["e2"][2] > 0.1 and abs(measured["e1"][2]) < 0.02  # major axis at 45 degrees


def test_flux_footprint_keeps_a_too_compact_model_from_biasing_the_flux() -> None:
    """The flux beyond the footprint comes from the model: a model a fifth too small in both
    half-light radii (the encoder's error for faint galaxies) misses less light with the 0.3-sigma
    footprint of the default than with a 1-sigma one."""
    size, noise = 64, 10.0
    true = galaxy(32.3, 31.6, 0.7, 0.4, 3e3) | dict(disk_frac=0.7, bulge_hlr_arcsec=0.3, bulge_q=0.8)
    compact = true | dict(disk_hlr_arcsec=0.8 * true["disk_hlr_arcsec"], bulge_hlr_arcsec=0.8 * 0.3)
    fwhm = torch.full((1,), FWHM_PIX)
    image = scene_model(render_source_models(catalog([true]), fwhm, CONDITIONS, size, size), size, size)
    models = render_source_models(catalog([compact]), fwhm, CONDITIONS, size, size)
    deblended = deblend_sources(image, torch.full((size, size), noise**2), models)
    default = measure_deblended(deblended, noise)["flux_njy"][0] / 3e3 - 1
    one_sigma = measure_deblended(deblended, noise, footprint_nsigma=1.0)["flux_njy"][0] / 3e3 - 1
    assert -0.06 < default < 0 and one_sigma < -0.08
    with pytest.raises(ValueError, match="footprint_nsigma=0.0 must be positive"):
        measure_deblended(deblended, noise, footprint_nsigma=0.0)


def test_flux_footprint_leaves_unmodelled_light_and_dominated_pixels_to_the_model() -> None:
    """Below the 1-sigma isophote the flux footprint keeps only pixels that the source dominates and
    that the scene model explains: a bright star that no model accounts for (a saturated star the
    encoder missed) and a brighter modelled neighbour do not hand their light to the galaxy."""
    size, noise = 64, 10.0
    target = galaxy(24.3, 31.6, 0.7, 0.4, 3e3)
    variance = torch.full((size, size), noise**2)
    fwhm = torch.full((2,), FWHM_PIX)
    # The star is in the image but not among the models.
    unmodelled_star = dict(x=38.0, y=31.0, flux_njy=4e5)
    truth = render_source_models(catalog([target, unmodelled_star]), fwhm, CONDITIONS, size, size)
    image = scene_model(truth, size, size)
    models = render_source_models(catalog([target]), fwhm[:1], CONDITIONS, size, size)
    deblended = deblend_sources(image, variance, models)
    guarded = measure_deblended(deblended, noise)["flux_njy"][0] / 3e3 - 1
    unguarded = measure_deblended(dataclasses.replace(deblended, shares=None), noise)["flux_njy"][0] / 3e3 - 1
    one_sigma = measure_deblended(deblended, noise, footprint_nsigma=1.0)["flux_njy"][0] / 3e3 - 1
    # The star's light inside the 1-sigma footprint stays (+46%); beyond it, the star's wings over
    # the whole 0.3-sigma isophote would have more than tripled the flux.
    assert abs(guarded - one_sigma) < 0.1 and unguarded > guarded + 1.0
    # A modelled neighbour five times brighter: the pixels it dominates are left to the galaxy's model.
    neighbour = galaxy(36.0, 31.0, 0.9, 0.0, 1.5e4)
    models = render_source_models(catalog([target, neighbour]), fwhm, CONDITIONS, size, size)
    deblended = deblend_sources(scene_model(models, size, size), variance, models)
    assert deblended.shares is not None and float(deblended.shares[0].max()) <= 1.0
    flux = measure_deblended(deblended, noise)["flux_njy"]
    assert flux == pytest.approx([3e3, 1.5e4], rel=1e-4)


def test_bad_models_are_flagged_and_empty_catalogs_work() -> None:
    sources = catalog([dict(x=20.0, y=20.0), dict(x=40.0, y=40.0)])
    models = render_source_models(sources, torch.full((2,), FWHM_PIX), CONDITIONS, 64, 64)
    models.models[1] = float("nan")
    deblended = deblend_sources(torch.zeros(64, 64), torch.ones(64, 64), models)
    measured = measure_deblended(deblended, noise_njy=1.0)
    assert measured["flag_no_model"].tolist() == [False, True]
    assert measured["flag_moments_failed"][1] and math.isnan(measured["flux_njy"][1])
    with pytest.raises(ValueError, match="one finite positive FWHM"):
        render_source_models(sources, torch.tensor([FWHM_PIX, float("nan")]), CONDITIONS, 64, 64)
    empty = render_source_models(catalog([]), torch.zeros(0), CONDITIONS, 64, 64)
    assert len(empty) == 0 and scene_model(empty, 64, 64).abs().sum() == 0
    assert all(
        len(value) == 0
        for value in measure_deblended(
            deblend_sources(torch.zeros(64, 64), torch.ones(64, 64), empty), 1.0
        ).values()
    )


def galsim_psf_images(n_sources: int, fwhm_pix: float = FWHM_PIX, side: int = 25) -> np.ndarray:
    """The survey's Moffat PSF through the pixel, centred on a ``side``-pixel stamp, shape (N, side, side)."""
    psf = galsim.Moffat(beta=CONDITIONS.moffat_beta, fwhm=fwhm_pix)
    return np.stack([psf.drawImage(nx=side, ny=side, scale=1.0).array] * n_sources)


def test_psf_corrected_shapes_recover_the_pre_psf_distortion_of_galsim_galaxies() -> None:
    # Exponential disks drawn by GalSim (not by the package's renderer) through the Moffat PSF
    # and the pixel, alone and without noise.  HSM's e1, e2 are distortions (1 - q^2)/(1 + q^2),
    # not shears (1 - q)/(1 + q): for q = 0.4 they differ by 40%.
    shapes = [(0.6, 0.4, 0.3), (0.6, 0.7, 1.2), (1.0, 0.4, 2.0), (1.0, 0.7, -0.6), (0.12, 0.5, 0.0)]
    rows = [galaxy(40.0 + 80.0 * index + 0.3, 40.6, q, angle) for index, (_, q, angle) in enumerate(shapes)]
    for row, (hlr_arcsec, _, _) in zip(rows, shapes, strict=True):
        row["disk_hlr_arcsec"] = hlr_arcsec
    height, width = 80, 80 * len(rows)
    image = galsim.ImageD(width, height, scale=1.0, xmin=0, ymin=0)
    for row in rows:
        disk = galsim.Exponential(
            half_light_radius=row["disk_hlr_arcsec"] / CONDITIONS.pixel_scale_arcsec, flux=row["flux_njy"]
        ).shear(q=row["disk_q"], beta=row["position_angle_rad"] * galsim.radians)
        psf = galsim.Moffat(beta=CONDITIONS.moffat_beta, fwhm=FWHM_PIX)
        galsim.Convolve(disk, psf).drawImage(
            image, center=galsim.PositionD(row["x"], row["y"]), add_to_image=True
        )
    models = render_source_models(
        catalog(rows, height, width), torch.full((len(rows),), FWHM_PIX), CONDITIONS, height, width
    )
    pixels = torch.from_numpy(image.array.copy()).float()
    deblended = deblend_sources(pixels, torch.ones(height, width), models)
    measured = psf_corrected_shapes(deblended, galsim_psf_images(len(rows)), 1.0)
    assert not measured["flag"].any()
    distortion = np.array([(1 - q**2) / (1 + q**2) for _, q, _ in shapes])
    angle = np.array([angle for _, _, angle in shapes])
    resolved = measured["resolution"] >= 0.3
    assert resolved.tolist() == [True, True, True, True, False]
    np.testing.assert_allclose(
        np.hypot(measured["e1"], measured["e2"])[resolved], distortion[resolved], rtol=0.03
    )
    measured_angle = 0.5 * np.arctan2(measured["e2"], measured["e1"])
    wrapped = (measured_angle - angle + math.pi / 2) % math.pi - math.pi / 2
    np.testing.assert_allclose(wrapped[resolved], 0.0, atol=0.02)
    # The resolution factor grows with the galaxy's size, within [0, 1].
    assert ((measured["resolution"] > 0) & (measured["resolution"] < 1)).all()
    assert measured["resolution"][2] > measured["resolution"][0] > measured["resolution"][4]
    assert (measured["sigma"] > 0).all()


def test_failed_psf_corrected_shapes_are_flagged_with_null_values() -> None:
    sources = catalog([dict(x=20.0, y=20.0), galaxy(44.0, 44.0, 0.5, 0.3)])
    models = render_source_models(sources, torch.full((2,), FWHM_PIX), CONDITIONS, 64, 64)
    deblended = deblend_sources(scene_model(models, 64, 64), torch.ones(64, 64), models)
    deblended.images[1] = 0.0  # a source with no light left
    # Measured with a PSF twice as wide as the star's, the star is "smaller than the PSF".
    measured = psf_corrected_shapes(deblended, galsim_psf_images(2, 2.0 * FWHM_PIX), 1.0)
    assert measured["flag"].tolist() == [True, True]
    for name in ("e1", "e2", "sigma", "resolution"):
        assert np.isnan(measured[name]).all(), name
    # A source whose every stamp pixel is masked is flagged too (GalSim refuses such an input).
    deblended = deblend_sources(scene_model(models, 64, 64), torch.ones(64, 64), models)
    deblended.valid[1] = False
    measured = psf_corrected_shapes(deblended, galsim_psf_images(2), 1.0)
    assert bool(measured["flag"][1]) and np.isnan(measured["e1"][1])
    with pytest.raises(ValueError, match="1 PSF images for 2 sources"):
        psf_corrected_shapes(deblended, galsim_psf_images(1), 1.0)


def test_masked_pixels_do_not_bias_psf_corrected_shapes() -> None:
    # A bad column two pixels from an elongated galaxy's centre: HSM's mask alone would leave a
    # hole of zero light there and bias the shape; the model fills it.
    size = 64
    sources = catalog([galaxy(32.0, 32.0, 0.5, 0.3)], size, size)
    models = render_source_models(sources, torch.full((1,), FWHM_PIX), CONDITIONS, size, size)
    image = scene_model(models, size, size)
    whole = psf_corrected_shapes(
        deblend_sources(image, torch.ones(size, size), models), galsim_psf_images(1), 1.0
    )
    valid = torch.ones(size, size, dtype=torch.bool)
    valid[:, 34] = False
    image[~valid] = 1e9  # whatever a masked pixel holds must not reach the measurement
    masked = psf_corrected_shapes(
        deblend_sources(image, torch.ones(size, size), models, valid), galsim_psf_images(1), 1.0
    )
    assert not whole["flag"][0] and not masked["flag"][0]
    for name in ("e1", "e2", "resolution"):
        assert masked[name][0] == pytest.approx(whole[name][0], abs=1e-4), name


def test_masked_pixels_do_not_bias_adaptive_moments() -> None:
    # The same bad column for the unweighted adaptive moments of the deblended images (bliss_e1, ixx,
    # ...): without the model in the masked pixels they see a hole of zero light.
    size = 64
    sources = catalog([galaxy(32.0, 32.0, 0.5, 0.3)], size, size)
    models = render_source_models(sources, torch.full((1,), FWHM_PIX), CONDITIONS, size, size)
    image = scene_model(models, size, size)
    whole = measure_deblended(deblend_sources(image, torch.ones(size, size), models), 1.0)
    valid = torch.ones(size, size, dtype=torch.bool)
    valid[:, 34] = False
    image[~valid] = 1e9
    masked = measure_deblended(deblend_sources(image, torch.ones(size, size), models, valid), 1.0)
    assert not whole["flag_moments_failed"][0] and not masked["flag_moments_failed"][0]
    for name in ("e1", "e2", "sigma_pix", "ixx", "iyy", "ixy"):
        assert masked[name][0] == pytest.approx(whole[name][0], rel=1e-4, abs=1e-6), name


def test_masked_pixels_get_no_share_and_the_model_corrects_the_flux() -> None:
    size = 96
    sources = catalog([dict(x=48.0, y=48.0, flux_njy=1e5)], size, size)
    models = render_source_models(sources, torch.full((1,), FWHM_PIX), CONDITIONS, size, size)
    image = scene_model(models, size, size)
    valid = torch.ones(size, size, dtype=torch.bool)
    valid[46:51, 47:50] = False  # a masked core (e.g. saturated)
    image[~valid] = 1e9  # whatever a masked pixel holds must not leak into the measurement
    deblended = deblend_sources(image, torch.full((size, size), 1.0), models, valid)
    assert not deblended.valid[0, models.stamp_size // 2, models.stamp_size // 2]
    measured = measure_deblended(deblended, noise_njy=1.0)
    assert measured["flux_njy"][0] == pytest.approx(1e5, rel=0.01)


def small_autoencoder() -> GalaxyAutoencoder:
    torch.manual_seed(0)
    config = AutoencoderConfig(stamp_size=15, latent_dim=4, channels=8, hidden_features=32)
    return GalaxyAutoencoder(config).eval()


def test_the_autoencoder_models_galaxies_and_leaves_stars_alone() -> None:
    compact = {"disk_hlr_arcsec": 0.25}
    rows = [
        dict(x=20.0, y=20.0),
        galaxy(40.3, 30.6, 0.6, 0.3) | compact,
        galaxy(2.0, 50.0, 0.8, 1.0) | compact,
    ]
    sources = catalog(rows)
    fwhm = torch.full((3,), FWHM_PIX)
    parametric = render_source_models(sources, fwhm, CONDITIONS, 64, 64)
    image = scene_model(parametric, 64, 64) + 20.0 * torch.randn(
        64, 64, generator=torch.Generator().manual_seed(2)
    )
    variance = torch.full((64, 64), 400.0)
    models, latents = model_sources(
        sources, fwhm, CONDITIONS, image, variance, autoencoder=small_autoencoder()
    )
    assert latents is not None and latents.modelled.tolist() == [False, True, True]
    assert not latents.invalid.any() and bool(torch.isnan(latents.latent_mean[0]).all())
    assert bool(torch.isfinite(latents.latent_mean[1:]).all()) and bool((latents.latent_std[1:] > 0).all())
    # The star keeps its parametric stamp; the galaxies get the autoencoder's 15-pixel stamps.
    centre = models.stamp_size // 2
    pad = centre - parametric.stamp_size // 2
    torch.testing.assert_close(
        models.models[0, pad : pad + parametric.stamp_size, pad : pad + parametric.stamp_size],
        parametric.models[0],
    )
    assert models.half_size[1:].tolist() == [7, 7]
    outside = models.models[1].clone()
    outside[centre - 7 : centre + 8, centre - 7 : centre + 8] = 0
    assert float(outside.abs().sum()) == 0 and float(models.models[1].sum()) > 0
    # The galaxy at the left edge is clipped; its stamp is zero off the image.
    assert models.clipped.tolist() == [False, False, True]
    columns = models.x0[2] + torch.arange(models.stamp_size)
    assert float(models.models[2][:, columns < 0].abs().sum()) == 0
    deblended = deblend_sources(image, variance, models)
    assert bool(torch.isfinite(deblended.images).all())
    assert model_sources(sources, fwhm, CONDITIONS, image, variance)[1] is None


def test_non_finite_latents_keep_the_parametric_model_and_are_flagged() -> None:
    sources = catalog([galaxy(30.0, 30.0, 0.6, 0.3) | {"disk_hlr_arcsec": 0.25}])
    fwhm = torch.full((1,), FWHM_PIX)
    parametric = render_source_models(sources, fwhm, CONDITIONS, 64, 64)
    autoencoder = small_autoencoder()
    with torch.no_grad():
        autoencoder.decoder_grid.weight.fill_(float("nan"))
    image = scene_model(parametric, 64, 64)
    models, latents = refine_galaxy_models(parametric, sources, fwhm, image, torch.ones(64, 64), autoencoder)
    assert latents.invalid.tolist() == [True] and latents.modelled.tolist() == [False]
    assert bool(torch.isnan(latents.latent_mean).all()) and math.isnan(float(latents.flux_njy[0]))
    assert bool(torch.isfinite(models.models).all())
    assert float(models.models.sum()) == pytest.approx(float(parametric.models.sum()), rel=1e-6)
    with pytest.raises(ValueError, match="n_iterations"):
        refine_galaxy_models(
            parametric, sources, fwhm, image, torch.ones(64, 64), autoencoder, n_iterations=0
        )


def test_galaxies_larger_than_the_autoencoder_stamp_keep_their_parametric_model() -> None:
    large = galaxy(32.0, 32.0, 0.8, 0.0) | {"disk_hlr_arcsec": 1.5}
    sources = catalog([large, galaxy(10.0, 10.0, 0.8, 0.0) | {"disk_hlr_arcsec": 0.2}])
    fwhm = torch.full((2,), FWHM_PIX)
    parametric = render_source_models(sources, fwhm, CONDITIONS, 64, 64)
    image = scene_model(parametric, 64, 64)
    _, latents = refine_galaxy_models(
        parametric, sources, fwhm, image, torch.ones(64, 64), small_autoencoder()
    )
    assert latents.modelled.tolist() == [False, True] and not latents.invalid.any()


def test_stars_that_lose_light_to_masked_pixels_get_the_flux_their_valid_pixels_fit() -> None:
    truth = catalog([dict(x=30.3, y=31.6, flux_njy=2e6), dict(x=8.0, y=8.0, flux_njy=5e4)])
    fwhm = torch.full((2,), FWHM_PIX)
    true_models = render_source_models(truth, fwhm, CONDITIONS, 64, 64)
    image = scene_model(true_models, 64, 64)
    generator = torch.Generator().manual_seed(3)
    variance = image.clamp(min=0) / CONDITIONS.njy_to_electrons + 400.0
    image = image + variance.sqrt() * torch.randn(64, 64, generator=generator)
    valid = torch.ones(64, 64, dtype=torch.bool)
    valid[26:38, 28:33] = False  # the bright star's saturated core and bleed trail
    estimate = catalog([dict(x=30.3, y=31.6, flux_njy=1.2e6), dict(x=8.0, y=8.0, flux_njy=3e4)])
    models, _ = model_sources(estimate, fwhm, CONDITIONS, image, variance, valid)
    totals = models.models.sum(dim=(1, 2))
    assert totals[0] == pytest.approx(float(true_models.models[0].sum()), rel=0.01)
    # The star with no masked pixel keeps the encoder's flux (its stamp is clipped at the corner).
    unfitted = render_source_models(estimate, fwhm, CONDITIONS, 64, 64).models.sum(dim=(1, 2))
    assert totals[1] == pytest.approx(float(unfitted[1]), rel=1e-5)
    # A fit that cannot be made (no valid pixel) leaves the model as it was.
    models, _ = model_sources(
        estimate, fwhm, CONDITIONS, image, variance, torch.zeros(64, 64, dtype=torch.bool)
    )
    assert models.models.sum(dim=(1, 2))[0] == pytest.approx(float(unfitted[0]), rel=1e-5)
