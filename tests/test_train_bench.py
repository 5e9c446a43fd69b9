"""``bliss-bench train``: the suite times the training loop's own steps and reports their split."""

import json

import pytest

from lsst.meas.extensions.bliss.cli import bench_main as main


def test_train_suite_reports_images_per_second_and_the_split(tmp_path, capsys) -> None:
    path = tmp_path / "train.json"
    assert main(["train", "--quick", "--steps", "1", "--repeats", "1", "--json", str(path)]) == 0
    results = json.loads(path.read_text())
    assert results["recipe"] == "packaged" and results["device"] == "cpu"
    assert results["batch_size"] == 32 and results["image_shape"] == [64, 64]
    for key in ("images_per_s", "simulation_images_per_s", "network_images_per_s"):
        assert results[key] > 0, key
    # A sequential step's shares: the renderer is part of the simulation.
    assert 0 < results["render_share"] <= results["simulation_share"] < 1
    assert 0 < results["render_share_of_simulation"] <= 1
    assert results["simulation_share"] == pytest.approx(
        results["network_images_per_s"]
        / (results["network_images_per_s"] + results["simulation_images_per_s"])
    )
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("train (cpu, batch 32): images_per_s")


def test_train_suite_refuses_empty_passes() -> None:
    with pytest.raises(ValueError, match="--steps 0"):
        main(["train", "--steps", "0"])
