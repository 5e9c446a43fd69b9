"""Galaxy autoencoder: simulation of stamps, shifts, encoding/decoding, training, the model package."""

import dataclasses
import json

import pytest
import torch
import yaml
from safetensors.torch import save as save_safetensors_bytes

from lsst.meas.extensions.bliss import (
    AutoencoderConfig,
    AutoencoderTrainingConfig,
    BlissEncoder,
    BlissModel,
    EncoderConfig,
    GalaxyAutoencoder,
    MissingAutoencoderError,
    ModelFormatError,
    PriorConfig,
    SimulatorConfig,
    SourcePrior,
    SurveyConditions,
    TrainingRun,
    add_autoencoder,
    copy_autoencoder,
    fourier_shift,
    galaxy_stamp_snr,
    model_variance,
    reconstruction_chi2,
    simulate_galaxy_stamps,
    train_autoencoder,
)
from lsst.meas.extensions.bliss.cli import train_main

CONDITIONS = SurveyConditions.from_survey()
SMALL = AutoencoderConfig(stamp_size=15, latent_dim=4, channels=8, hidden_features=32)
QUICK = AutoencoderTrainingConfig(
    n_steps=4, batch_size=8, validation_stamps=16, validation_every=2, log_every=2, device="cpu"
)
TINY_ENCODER = EncoderConfig(pixel_channels=(8, 8, 16), tile_blocks=1, head_channels=16)


def stamps(n: int = 16, seed: int = 3, size: int = 15, mask_fraction: float = 0.0):
    prior = SourcePrior(PriorConfig(), CONDITIONS)
    generator = torch.Generator().manual_seed(seed)
    return simulate_galaxy_stamps(prior, (0.6, 1.2), size, n, generator, mask_fraction)


def test_config_validation_and_round_trip() -> None:
    assert AutoencoderConfig.from_dict(SMALL.to_dict()) == SMALL and SMALL.half_size == 7
    with pytest.raises(ValueError, match="stamp_size"):
        AutoencoderConfig(stamp_size=16)
    with pytest.raises(ValueError, match="latent_dim"):
        AutoencoderConfig(latent_dim=0)
    with pytest.raises(ValueError, match="held out"):
        AutoencoderTrainingConfig(seed=5, validation_seed=5)
    with pytest.raises(ValueError, match="mask_fraction"):
        AutoencoderTrainingConfig(mask_fraction=1.5)


def test_simulated_stamps_are_reproducible_and_consistent() -> None:
    batch, again = stamps(seed=7), stamps(seed=7)
    assert torch.equal(batch.images, again.images) and len(batch) == 16
    assert batch.images.shape == (16, 15, 15) and bool((batch.variances > 0).all())
    # The expected variance is the variance model of the noiseless galaxy.
    torch.testing.assert_close(model_variance(batch.noiseless, CONDITIONS), batch.variances)
    assert bool((batch.offsets.abs() <= 0.5).all())
    fwhm_pix = batch.psf_fwhm_pix * CONDITIONS.pixel_scale_arcsec
    assert bool(((fwhm_pix >= 0.6 - 1e-6) & (fwhm_pix <= 1.2 + 1e-6)).all())
    # Stamps hold most of the light, never more than all of it.
    fraction = batch.noiseless.sum(dim=(1, 2)) / batch.flux_njy
    assert bool((fraction < 1.01).all()) and float(fraction.median()) > 0.5
    assert bool((galaxy_stamp_snr(batch) > 0).all())
    masked = stamps(n=64, mask_fraction=0.5)
    assert 0 < int((~masked.valid).flatten(1).any(dim=1).sum()) < 64


def test_fourier_shift_moves_a_band_limited_image() -> None:
    batch = stamps(n=4, size=31)
    # Shifting the galaxies back to the central pixel moves their first moments by the offsets.
    shifted = fourier_shift(batch.noiseless.double(), -batch.offsets.double())
    pixels = torch.arange(31, dtype=torch.float64) - 15

    def centroid(images: torch.Tensor) -> torch.Tensor:
        total = images.sum(dim=(1, 2))
        x = (images.sum(dim=1) * pixels).sum(dim=1) / total
        y = (images.sum(dim=2) * pixels).sum(dim=1) / total
        return torch.stack([x, y], dim=1)

    moved = centroid(batch.noiseless.double()) - centroid(shifted)
    torch.testing.assert_close(moved, batch.offsets.double(), atol=0.03, rtol=0)
    torch.testing.assert_close(
        shifted.sum(dim=(1, 2)), batch.noiseless.double().sum(dim=(1, 2)), rtol=0.01, atol=0
    )


def test_encode_and_decode_shapes_masks_and_flux() -> None:
    torch.manual_seed(0)
    autoencoder = GalaxyAutoencoder(SMALL).eval()
    batch = stamps(n=6)
    images = batch.images.clone()
    images[0, 3, 3] = float("nan")  # a masked pixel's value never reaches the network
    valid = batch.valid.clone()
    valid[0, 3, 3] = False
    posterior = autoencoder.encode(images, batch.variances, valid, batch.psf_fwhm_pix, batch.offsets)
    assert posterior.latent_mean.shape == (6, 4) and bool(posterior.finite().all())
    assert bool((posterior.latent_std > 0).all()) and bool((posterior.log_flux_std > 0).all())
    decoded = autoencoder.decode(posterior.latent_mean, batch.psf_fwhm_pix, batch.offsets)
    assert decoded.shape == (6, 15, 15)
    total = decoded.sum(dim=(1, 2))
    assert bool((total <= 1 + 1e-4).all()) and bool((total > 0).all())
    models, _ = autoencoder.reconstruct(
        batch.images, batch.variances, batch.valid, batch.psf_fwhm_pix, batch.offsets
    )
    torch.testing.assert_close(models.sum(dim=(1, 2)), total * posterior.flux_njy, rtol=1e-4, atol=1e-3)
    assert reconstruction_chi2(autoencoder, batch, CONDITIONS).shape == (6,)


def test_training_lowers_the_loss_and_reports_its_validation() -> None:
    lines: list[str] = []
    config = dataclasses.replace(QUICK, n_steps=40, validation_every=20, log_every=20, learning_rate=3e-3)
    autoencoder, summary = train_autoencoder(
        CONDITIONS, PriorConfig(), (0.6, 1.2), SMALL, config, lines.append
    )
    assert not autoencoder.training and summary["steps"] == 40 and len(summary["history"]) == 2
    first, last = summary["history"][0]["validation_loss"], summary["history"][-1]["validation_loss"]
    assert last < first
    assert summary["final_chi2_median_snr10"] > 0 and any("validation loss" in line for line in lines)


def make_model(autoencoder: GalaxyAutoencoder | None) -> BlissModel:
    torch.manual_seed(0)
    return BlissModel(
        BlissEncoder(TINY_ENCODER).eval(),
        CONDITIONS,
        PriorConfig(),
        SimulatorConfig(psf_fwhm_range_arcsec=(0.6, 1.2)),
        {"seed": 0},
        autoencoder=autoencoder,
    )


def test_model_package_round_trip_with_and_without_autoencoder(tmp_path) -> None:
    torch.manual_seed(1)
    model = make_model(GalaxyAutoencoder(SMALL).eval())
    loaded = BlissModel.load(model.save(tmp_path / "model.safetensors"))
    assert loaded.autoencoder is not None and loaded.autoencoder.config == SMALL
    for name, value in model.autoencoder.state_dict().items():
        assert torch.equal(value, loaded.autoencoder.state_dict()[name])
    for name, value in model.encoder.state_dict().items():
        assert torch.equal(value, loaded.encoder.state_dict()[name])
    bare = BlissModel.load(make_model(None).save(tmp_path / "bare.safetensors"))
    assert bare.autoencoder is None
    with pytest.raises(MissingAutoencoderError, match="Deblending needs a galaxy autoencoder"):
        bare.require_autoencoder("Deblending")


def test_format_version_2_files_are_refused_and_migrate(tmp_path) -> None:
    model = make_model(None)
    data = model.to_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    document = json.loads(header["__metadata__"]["bliss_model"])
    tensors = {name: value.contiguous() for name, value in model.encoder.state_dict().items()}
    from lsst.meas.extensions.bliss.io import migrate_model_file
    from lsst.meas.extensions.bliss.io._model_io import _weights_digest

    document.update(format_version=2, weights_sha256=_weights_digest(tensors))
    del document["autoencoder"], document["file_sha256"]
    path = tmp_path / "v2.safetensors"
    path.write_bytes(save_safetensors_bytes(tensors, metadata={"bliss_model": json.dumps(document)}))
    with pytest.raises(ModelFormatError, match="format version 2.*bliss-migrate-model"):
        BlissModel.load(path)
    loaded = BlissModel.load(migrate_model_file(path))
    assert loaded.autoencoder is None
    assert loaded.training["format_migrations"][0]["from_format_version"] == 2
    for name, value in tensors.items():
        assert torch.equal(value, loaded.encoder.state_dict()[name])


def test_add_autoencoder_needs_the_models_own_run() -> None:
    model = make_model(None)
    run = TrainingRun(CONDITIONS, simulator=model.simulator, autoencoder=SMALL, autoencoder_training=QUICK)
    with_autoencoder = add_autoencoder(model, run, log=lambda _: None, command="test")
    assert with_autoencoder.autoencoder is not None
    assert with_autoencoder.training["autoencoder"]["command"] == "test"
    assert with_autoencoder.training["seed"] == 0
    other = dataclasses.replace(run, conditions=CONDITIONS.replace(sky_brightness_mag_per_arcsec2=20.0))
    with pytest.raises(ValueError, match="conditions differ"):
        add_autoencoder(model, other, log=lambda _: None)
    with pytest.raises(ValueError, match="no 'autoencoder_training' section"):
        add_autoencoder(model, dataclasses.replace(run, autoencoder_training=None))


def test_bliss_train_autoencoder_only(tmp_path, capsys) -> None:
    model_path = make_model(None).save(tmp_path / "encoder" / "model.safetensors")
    config = {
        "simulator": {"psf_fwhm_range_arcsec": [0.6, 1.2]},
        "autoencoder": SMALL.to_dict(),
        "autoencoder_training": QUICK.to_dict(),
    }
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(config))
    output = tmp_path / "out"
    assert train_main([str(config_path), "--output", str(output), "--autoencoder-only", str(model_path)]) == 0
    model = BlissModel.load(output / "model.safetensors")
    assert model.autoencoder is not None and "--autoencoder-only" in model.training["autoencoder"]["command"]
    assert "autoencoder 4 steps" in capsys.readouterr().out
    missing = tmp_path / "missing.safetensors"
    assert train_main([str(config_path), "--output", str(output), "--autoencoder-only", str(missing)]) == 2
    assert "No BLISS model file" in capsys.readouterr().err


def test_a_retrained_encoder_keeps_an_autoencoder_trained_for_the_same_survey(tmp_path, capsys) -> None:
    torch.manual_seed(2)
    source = make_model(GalaxyAutoencoder(SMALL).eval())
    source.training["autoencoder"] = {"steps": 7}
    source_path = source.save(tmp_path / "source" / "model.safetensors")
    torch.manual_seed(3)
    retrained = dataclasses.replace(make_model(None), encoder=BlissEncoder(TINY_ENCODER).eval())
    retrained_path = retrained.save(tmp_path / "retrained" / "model.safetensors")
    output = tmp_path / "out"
    argv = ["unused.yaml", "--output", str(output), "--autoencoder-only", str(retrained_path)]
    assert train_main([*argv, "--autoencoder-from", str(source_path)]) == 0
    combined = BlissModel.load(output / "model.safetensors")
    assert combined.autoencoder is not None
    for name, value in source.autoencoder.state_dict().items():
        assert torch.equal(value, combined.autoencoder.state_dict()[name])
    for name, value in retrained.encoder.state_dict().items():
        assert torch.equal(value, combined.encoder.state_dict()[name])
    assert combined.training["autoencoder"] == {"steps": 7, "copied_from": str(source_path)}
    assert "with the autoencoder of" in capsys.readouterr().out

    other_survey = dataclasses.replace(retrained, prior=PriorConfig(source_density_per_arcmin2=20.0))
    with pytest.raises(ValueError, match="different prior than the model"):
        copy_autoencoder(other_survey, source, "source")
    # Companions add galaxies of the same population: the autoencoder still applies.
    paired = dataclasses.replace(retrained, prior=PriorConfig(companion_fraction=0.3))
    assert copy_autoencoder(paired, source, "source").autoencoder is source.autoencoder
    # So do added bright stars and masked regions: neither changes the isolated galaxies.
    hardened = dataclasses.replace(
        retrained,
        prior=PriorConfig(bright_star_density_per_arcmin2=5.0),
        simulator=dataclasses.replace(retrained.simulator, masked_regions_per_image=1.0),
    )
    assert copy_autoencoder(hardened, source, "source").autoencoder is source.autoencoder
    with pytest.raises(MissingAutoencoderError, match="copying the autoencoder of plain"):
        copy_autoencoder(retrained, retrained, "plain")
    assert train_main([*argv, "--autoencoder-from", str(tmp_path / "missing.safetensors")]) == 2
    assert "No BLISS model file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_main(["unused.yaml", "--output", str(output), "--autoencoder-from", str(source_path)])
    assert "--autoencoder-from needs --autoencoder-only" in capsys.readouterr().err
