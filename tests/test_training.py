"""Training loop: config parsing, checkpoints and resume, the bliss-train command."""

from pathlib import Path

import pytest
import torch
import yaml

from lsst.meas.extensions.bliss import BlissModel, TrainingRun, train
from lsst.meas.extensions.bliss.cli import train_main
from lsst.meas.extensions.bliss.io import default_training_recipe_path
from lsst.meas.extensions.bliss.training import EncoderTrainer, load_run_config

TINY = {
    "simulator": {"image_height": 32, "image_width": 32},
    "encoder": {"pixel_channels": [8, 8, 16], "tile_blocks": 1, "head_channels": 16},
    "prior": {"source_density_per_arcmin2": 1000.0},
    "training": {
        "n_steps": 6,
        "batch_size": 4,
        "validation_images": 8,
        "validation_every": 3,
        "checkpoint_every": 3,
        "log_every": 3,
        "device": "cpu",
    },
}


def test_config_round_trip_and_validation() -> None:
    run = TrainingRun.from_dict(TINY)
    assert TrainingRun.from_dict(run.to_dict()) == run
    assert run.simulator.psf_fwhm_range_arcsec == (0.6, 1.2)
    with pytest.raises(ValueError, match="Unknown training config section"):
        TrainingRun.from_dict({"optimizer": {}})
    with pytest.raises(ValueError, match="Unknown field"):
        TrainingRun.from_dict({"training": {"epochs": 3}})
    with pytest.raises(ValueError, match="validation_seed must differ"):
        TrainingRun.from_dict({"training": {"seed": 5, "validation_seed": 5}})
    with pytest.raises(ValueError, match="tile_size"):
        TrainingRun.from_dict({"simulator": {"tile_size": 8}})
    with pytest.raises(ValueError, match="detection_loss_weight=0"):
        TrainingRun.from_dict({"training": {"detection_loss_weight": 0}})
    with pytest.raises(ValueError, match="detection_loss_weight=inf .* finite"):
        TrainingRun.from_dict({"training": {"detection_loss_weight": float("inf")}})
    assert (
        TrainingRun.from_dict({"training": {"detection_loss_weight": 3}}).training.detection_loss_weight == 3
    )


def test_resume_continues_bit_identically(tmp_path) -> None:
    run = TrainingRun.from_dict(TINY)
    straight = train(run, tmp_path / "straight", log=lambda _: None)
    # A time budget that runs out after the first step stops training with a checkpoint ...
    budget = {**TINY, "training": {**TINY["training"], "max_minutes": 1e-9}}
    interrupted = train(TrainingRun.from_dict(budget), tmp_path / "resumed", log=lambda _: None)
    assert interrupted.training["steps"] == 1
    # ... and resuming (without the budget) reaches the same weights as the uninterrupted run.
    resumed = train(run, tmp_path / "resumed", resume=True, log=lambda _: None)
    assert resumed.training["steps"] == 6
    for name, value in straight.encoder.state_dict().items():
        assert torch.equal(value, resumed.encoder.state_dict()[name]), name


def test_overlapped_simulation_trains_on_the_same_batches_and_resumes_identically(tmp_path) -> None:
    def consumed_images(training: dict, steps: int) -> list[torch.Tensor]:
        trainer = EncoderTrainer(
            TrainingRun.from_dict({**TINY, "training": training}), tmp_path, lambda _: None
        )
        images = []
        network_step = trainer.network_step

        def recording_step(batch):
            images.append(batch.image.clone())
            return network_step(batch)

        trainer.network_step = recording_step
        try:
            for _ in range(steps):
                trainer.train_step()
        finally:
            trainer.stop_overlap()
        # After stopping, the generator is where a sequential run would be: the next batch follows.
        images.append(trainer.simulate_batch().image)
        return images

    threads = torch.get_num_threads()
    sequential = consumed_images(TINY["training"], 3)
    overlapped = consumed_images({**TINY["training"], "overlap_simulation": True}, 3)
    assert torch.get_num_threads() == threads  # the thread split ends with the overlap
    for first, second in zip(sequential, overlapped, strict=True):
        assert torch.equal(first, second)
    # Stopped by its time budget with batches simulated ahead, a run resumes where it stopped.
    overlap = {**TINY, "training": {**TINY["training"], "overlap_simulation": True}}
    straight = train(TrainingRun.from_dict(overlap), tmp_path / "straight", log=lambda _: None)
    budget = {**overlap, "training": {**overlap["training"], "max_minutes": 1e-9}}
    train(TrainingRun.from_dict(budget), tmp_path / "resumed", log=lambda _: None)
    # The overlap does not define the run: resuming without it is allowed.
    resumed = train(TrainingRun.from_dict(overlap), tmp_path / "resumed", resume=True, log=lambda _: None)
    for name, value in straight.encoder.state_dict().items():
        assert torch.equal(value, resumed.encoder.state_dict()[name]), name


def test_mixed_precision_training_runs_and_is_validated(tmp_path) -> None:
    mixed = {**TINY, "training": {**TINY["training"], "n_steps": 3, "backbone_precision": "bfloat16"}}
    model = train(TrainingRun.from_dict(mixed), tmp_path / "mixed", log=lambda _: None)
    assert all(torch.isfinite(value).all() for value in model.encoder.state_dict().values())
    assert model.training["run"]["training"]["backbone_precision"] == "bfloat16"
    with pytest.raises(ValueError, match="precision='half' must be one of"):
        TrainingRun.from_dict({"training": {"backbone_precision": "half"}})


def test_resume_needs_the_same_config_and_a_checkpoint(tmp_path) -> None:
    run = TrainingRun.from_dict(TINY)
    short = TrainingRun.from_dict({**TINY, "training": {**TINY["training"], "n_steps": 3}})
    train(short, tmp_path / "b", log=lambda _: None)
    with pytest.raises(ValueError, match="different training config"):
        train(run, tmp_path / "b", resume=True, log=lambda _: None)
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        train(run, tmp_path / "c", resume=True, log=lambda _: None)


def test_bliss_train_command_writes_a_loadable_model(tmp_path, capsys) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(TINY))
    assert train_main([str(config), "--output", str(tmp_path / "out")]) == 0
    model = BlissModel.load(tmp_path / "out" / "model.safetensors")
    assert model.training["steps"] == 6 and model.training["command"].startswith("bliss-train ")
    assert (tmp_path / "out" / "checkpoint.safetensors").exists()
    assert "wrote" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [1, 2")
    assert train_main([str(bad), "--output", str(tmp_path / "x")]) == 2


def test_fine_tuning_starts_from_a_package_and_keeps_its_record(tmp_path, capsys) -> None:
    parent = train(TrainingRun.from_dict(TINY), tmp_path / "parent", log=lambda _: None)
    tuned_config = {**TINY, "prior": {**TINY["prior"], "companion_fraction": 0.5}}
    run = TrainingRun.from_dict({**tuned_config, "training": {**TINY["training"], "n_steps": 1}})
    tuned = train(run, tmp_path / "tuned", log=lambda _: None, initial_model=parent)
    assert tuned.training["initialized_from"]["steps"] == 6
    assert tuned.prior.companion_fraction == 0.5
    # One small step from the parent's weights, not from a fresh initialization.
    fresh = train(run, tmp_path / "fresh", log=lambda _: None)
    name = "head.3.weight"
    moved = (tuned.encoder.state_dict()[name] - parent.encoder.state_dict()[name]).abs().max()
    assert moved < (fresh.encoder.state_dict()[name] - parent.encoder.state_dict()[name]).abs().max()
    # Another architecture cannot be the starting point; the command says which option is wrong.
    wider = {**TINY, "encoder": {**TINY["encoder"], "head_channels": 32}}
    config = tmp_path / "wider.yaml"
    config.write_text(yaml.safe_dump(wider))
    parent_path = str(tmp_path / "parent" / "model.safetensors")
    assert train_main([str(config), "--output", str(tmp_path / "x"), "--init-from", parent_path]) == 2
    assert "--init-from" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    # A missing starting package is named before anything is trained.
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(yaml.safe_dump(TINY))
    missing = str(tmp_path / "missing.safetensors")
    assert train_main([str(tiny), "--output", str(tmp_path / "y"), "--init-from", missing]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


@pytest.mark.parametrize(
    "path",
    [default_training_recipe_path(), *sorted((Path(__file__).parents[1] / "config").rglob("*.yaml"))],
    ids=lambda path: path.name,
)
def test_packaged_training_configs_load(path: Path) -> None:
    run = load_run_config(path)
    assert run.encoder.checkerboard_groups == 4
