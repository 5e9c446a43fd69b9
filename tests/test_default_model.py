"""The packaged default model loads with one call and finds bright sources."""

import dataclasses
import math

import numpy as np
import torch

from lsst.meas.extensions.bliss import (
    FrameConfig,
    FullCatalog,
    ImageSimulator,
    SimulatorConfig,
    default_model_path,
    estimate_catalog,
    infer_frame,
    load_default_model,
    match_sources,
    source_snr_and_blendedness,
)
from lsst.meas.extensions.bliss.catalog import empty_source_fields
from lsst.meas.extensions.bliss.io import default_training_recipe_path
from lsst.meas.extensions.bliss.training import TrainingRun, load_run_config
from lsst.meas.extensions.bliss.validate import tile_position_sweep


def test_default_model_is_small_and_describes_itself() -> None:
    path = default_model_path()
    assert path.is_file() and path.stat().st_size < 20 * 2**20
    model = load_default_model()
    assert (model.conditions.survey, model.conditions.band) == ("LSST", "r")
    assert model.trained_bands == ("u", "g", "r", "i", "z", "y")
    assert model.conditions.exposure_time_s == 30.0
    assert model.simulator.psf_fwhm_range_arcsec == (0.5, 1.5)
    assert model.simulator.exposure_time_range_s == (15.0, 30.0)
    assert model.encoder.config.input_noise == "background"
    # The package records the run that trained it: the packaged recipe's (under the file's earlier
    # name); only the time limit and the device may differ.
    assert model.training["command"].startswith("bliss-train config/")
    packaged = load_run_config(default_training_recipe_path())
    recorded = TrainingRun.from_dict(model.training["run"])
    for section in ("conditions", "prior", "simulator", "encoder"):
        assert getattr(recorded, section) == getattr(packaged, section), section
    assert dataclasses.replace(recorded.training, max_minutes=None, device="auto") == dataclasses.replace(
        packaged.training, max_minutes=None, device="auto"
    )
    # The training budget of the packaged model: at most 150 minutes on two CPU cores in all.
    autoencoder_s = model.training.get("autoencoder", {}).get("wall_time_s", 0.0)
    assert model.training["wall_time_s"] + autoencoder_s <= 150 * 60


def test_default_model_recovers_bright_sources() -> None:
    model = load_default_model()
    conditions = model.conditions
    simulator = ImageSimulator(
        conditions, model.prior, SimulatorConfig(image_height=64, image_width=64), device="cpu"
    )
    batch = simulator.sample(8, seed=424242)
    snr, _ = source_snr_and_blendedness(batch.truth, None, conditions, batch.noiseless)
    estimate = estimate_catalog(
        model.encoder,
        batch.image,
        batch.variance,
        batch.mask,
        batch.psf_fwhm_arcsec / conditions.pixel_scale_arcsec,
        conditions.pixel_scale_arcsec,
    )
    found, bright = 0, 0
    for index in range(8):
        n_true, n_est = int(batch.truth.n_sources[index]), int(estimate.n_sources[index])
        is_bright = snr[index, :n_true] >= 20
        match = match_sources(
            batch.truth.x[index, :n_true],
            batch.truth.y[index, :n_true],
            estimate.x[index, :n_est],
            estimate.y[index, :n_est],
            2.0,
        )
        found += int(np.isin(np.flatnonzero(is_bright), match.true_index).sum())
        bright += int(is_bright.sum())
    assert bright > 0 and found / bright >= 0.8
    assert torch.isfinite(estimate.fields["flux_njy"][estimate.is_valid]).all()


def test_checkerboard_removes_most_of_the_tile_boundary_dip() -> None:
    """The tile-position sweep of the science benchmark, with and without the checkerboard."""
    model = load_default_model()
    with_checkerboard = tile_position_sweep(model, n_trials=40, seed=777)
    without = tile_position_sweep(model, n_trials=40, seed=777, checkerboard=False)
    assert without["edge_dip"] > with_checkerboard["edge_dip"] + 0.05


def test_frame_posterior_samples_spread_as_the_reported_uncertainties() -> None:
    """Across posterior samples, fluxes and positions of bright isolated stars scatter as
    ``flux_err_njy`` and ``x_err``/``y_err`` of the point-estimate catalog say."""
    model = load_default_model()
    conditions = model.conditions
    size, n_stars = 192, 36
    simulator = ImageSimulator(
        conditions, model.prior, SimulatorConfig(image_height=size, image_width=size), device="cpu"
    )
    generator = torch.Generator().manual_seed(99)
    grid = torch.arange(6, dtype=torch.float32) * 30 + 18
    x = (grid[None, :] + torch.rand(6, 6, generator=generator) * 4).reshape(1, -1)
    y = (grid[:, None] + torch.rand(6, 6, generator=generator) * 4).reshape(1, -1)
    fields = empty_source_fields((1, n_stars), torch.device("cpu"), torch.float32)
    sigma_psf = conditions.psf_fwhm_pix / 2.3548
    snr = 15 + 25 * torch.rand(1, n_stars, generator=generator)
    fields["flux_njy"] = snr * conditions.background_noise_njy * math.sqrt(4 * math.pi * sigma_psf**2)
    truth = FullCatalog(size, size, torch.tensor([n_stars]), x, y, fields)
    batch = simulator.simulate_catalog(truth, generator, torch.tensor([conditions.psf_fwhm_arcsec]))
    result = infer_frame(
        model,
        batch.image[0],
        batch.variance[0],
        batch.mask[0],
        conditions.psf_fwhm_pix,
        FrameConfig(n_samples=48, seed=5, device="cpu"),
    )
    catalog = result.catalog
    n_found = int(catalog.n_sources[0])
    flux = np.full((48, n_found), np.nan)
    position = np.full((48, n_found, 2), np.nan)
    for k, sample in enumerate(result.samples):
        count = int(sample.n_sources[0])
        match = match_sources(
            catalog.x[0].numpy(),
            catalog.y[0].numpy(),
            sample.x[0, :count].numpy(),
            sample.y[0, :count].numpy(),
            2.0,
        )
        flux[k, match.true_index] = sample.fields["flux_njy"][0, match.est_index].numpy()
        position[k, match.true_index, 0] = sample.x[0, match.est_index].numpy()
        position[k, match.true_index, 1] = sample.y[0, match.est_index].numpy()
    always = np.isfinite(flux).mean(axis=0) > 0.9
    assert always.sum() >= 30
    flux_ratio = np.nanstd(flux, axis=0)[always] / catalog.fields["flux_err_njy"][0].numpy()[always]
    x_ratio = np.nanstd(position[..., 0], axis=0)[always] / catalog.fields["x_err"][0].numpy()[always]
    y_ratio = np.nanstd(position[..., 1], axis=0)[always] / catalog.fields["y_err"][0].numpy()[always]
    for name, ratio in (("flux", flux_ratio), ("x", x_ratio), ("y", y_ratio)):
        assert 0.75 < np.median(ratio) < 1.33, (name, np.median(ratio))
