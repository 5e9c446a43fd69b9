"""The packaged default model loads with one call and finds bright sources."""

import numpy as np
import torch

from lsst.meas.extensions.bliss import (
    ImageSimulator,
    SimulatorConfig,
    default_model_path,
    estimate_catalog,
    load_default_model,
    match_sources,
    source_snr_and_blendedness,
)


def test_default_model_is_small_and_describes_itself() -> None:
    path = default_model_path()
    assert path.is_file() and path.stat().st_size < 20 * 2**20
    model = load_default_model()
    assert (model.conditions.survey, model.conditions.band) == ("LSST", "r")
    assert model.conditions.exposure_time_s == 30.0
    assert model.simulator.psf_fwhm_range_arcsec == (0.6, 1.2)
    assert model.training["command"].startswith("bliss-train config/train_default.yaml")
    assert model.training["wall_time_s"] <= 90 * 60


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
