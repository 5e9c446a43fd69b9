"""``bliss-bench science`` runs end to end on a small untrained model and reports its keys.

The figures of the shipped model come from running the benchmark itself, not from this test.
"""

import json

import pytest
import torch

from lsst.meas.extensions.bliss import (
    BlissEncoder,
    BlissModel,
    EncoderConfig,
    PriorConfig,
    SimulatorConfig,
    SurveyConditions,
    load_default_model,
)
from lsst.meas.extensions.bliss.cli import bench_main as main
from lsst.meas.extensions.bliss.validate import _sweeps

REQUIRED_KEYS = {
    "bliss_f1",
    "sep_f1",
    "bliss_recall_snr10",
    "bliss_precision_snr10",
    "bliss_class_acc_snr10",
    "bliss_flux_bias",
    "bliss_flux_scatter_over_crb",
    "bliss_flux_scatter_over_crb_stderr",
    "bliss_flux_cov68",
    "bliss_edge_dip",
    "bliss_edge_dip_stderr",
}


@pytest.fixture
def tiny_model_path(tmp_path):
    return _tiny(tmp_path)


def _tiny(tmp_path):
    torch.manual_seed(0)
    encoder = BlissEncoder(EncoderConfig(pixel_channels=(8, 8, 16), tile_blocks=1, head_channels=16)).eval()
    model = BlissModel(
        encoder,
        SurveyConditions.from_survey(),
        PriorConfig(),
        SimulatorConfig(),
        {"seed": 0, "validation_seed": 1},
    )
    return model.save(tmp_path / "tiny.safetensors")


def test_science_suite_reports_bliss_and_sep(tiny_model_path, tmp_path, capsys) -> None:
    path = tmp_path / "science.json"
    argv = [
        "science",
        "--quick",
        "--model",
        str(tiny_model_path),
        "--n-scenes",
        "4",
        "--sweep-trials",
        "4",
        "--json",
        str(path),
    ]
    assert main(argv) == 0
    results = json.loads(path.read_text())
    assert REQUIRED_KEYS <= results.keys()
    assert results["n_scenes"] == 4 and results["n_true_sources"] > 0
    assert 0.0 <= results["sep_f1"] <= 1.0
    assert set(results["bliss_tile_position_detection_prob"]) == {"centre", "edge_x", "edge_y", "corner"}
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("bliss_f1 = ")


def test_science_suite_refuses_a_training_seed(tiny_model_path) -> None:
    with pytest.raises(ValueError, match="used to train or validate"):
        main(["science", "--model", str(tiny_model_path), "--seed", "0", "--n-scenes", "1"])


def test_scenes_can_come_from_the_default_prior(tmp_path) -> None:
    """Models trained on other priors are compared on the same scenes with ``--scene-prior default``."""
    model = BlissModel.load(_tiny(tmp_path))
    paired = BlissModel(
        model.encoder, model.conditions, PriorConfig(companion_fraction=1.0), model.simulator, model.training
    )
    path = paired.save(tmp_path / "paired.safetensors")
    counts = {}
    # The scenes of another model file's prior: here the paired model's, for the model without pairs.
    for label, model_path, scene_prior in (
        ("model", path, "model"),
        ("default", path, "default"),
        ("other", tmp_path / "tiny.safetensors", str(path)),
    ):
        json_path = tmp_path / f"{label}.json"
        argv = [
            "science",
            "--model",
            str(model_path),
            "--n-scenes",
            "3",
            "--sweep-trials",
            "2",
            "--json",
            str(json_path),
        ]
        assert main([*argv, "--scene-prior", scene_prior]) == 0
        results = json.loads(json_path.read_text())
        counts[label] = results["n_true_sources"]
        assert results["scene_prior"]["companion_fraction"] == (0.0 if label == "default" else 1.0)
    assert counts["model"] > counts["default"] and counts["other"] == counts["model"]
    with pytest.raises(ValueError, match="neither 'model', 'default' nor a model file"):
        main(["science", "--model", str(path), "--scene-prior", str(tmp_path / "missing.safetensors")])


def test_tile_position_sweep_compares_placements_on_common_random_numbers(monkeypatch) -> None:
    """Two placements at the same position see the same stars, noise and sampling seeds, so their
    difference (the dip) is exactly zero; independent draws would make it a noise figure."""
    model = load_default_model()
    monkeypatch.setattr(_sweeps, "TILE_PLACEMENTS", {"first": (0.0, 0.0), "again": (0.0, 0.0)})
    same = _sweeps.tile_position_sweep(model, n_trials=8, seed=3, snr_range=(5, 8), n_samples=4)
    assert 0.0 < same["first"] < 1.0
    assert same["edge_dip"] == 0.0 and same["edge_dip_stderr"] == 0.0
    monkeypatch.setattr(_sweeps, "TILE_PLACEMENTS", {"centre": (0.5, 0.5), "corner": (0.0, 0.0)})
    moved = _sweeps.tile_position_sweep(model, n_trials=8, seed=3, snr_range=(5, 8), n_samples=4)
    assert moved["corner"] == same["first"]
    assert moved["edge_dip"] == pytest.approx(abs(moved["centre"] - moved["corner"]))
    assert moved["edge_dip_stderr"] > 0.0
