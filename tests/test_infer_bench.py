"""The ``bliss-bench infer`` suite runs and reports its keys (figures come from the real benchmark)."""

import json
import math

import pytest
import torch

from lsst.meas.extensions.bliss import (
    BlissEncoder,
    BlissModel,
    EncoderConfig,
    PriorConfig,
    SimulatorConfig,
    SurveyConditions,
)
from lsst.meas.extensions.bliss.cli import bench_main as main

REQUIRED_KEYS = {
    "bliss_s_256px",
    "sep_s_256px",
    "ratio_vs_sep",
    "sep_warm_s_256px",
    "ratio_vs_sep_warm",
    "mpix_per_s",
    "peak_rss_gb",
    "scaling_exponent",
    "per_size",
}


def test_infer_suite_times_bliss_and_sep_at_three_sizes(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    encoder = BlissEncoder(EncoderConfig(pixel_channels=(8, 8, 16), tile_blocks=1, head_channels=16)).eval()
    model = BlissModel(encoder, SurveyConditions.from_survey(), PriorConfig(), SimulatorConfig(), {"seed": 0})
    model_path = model.save(tmp_path / "tiny.safetensors")
    path = tmp_path / "infer.json"
    argv = ["infer", "--model", str(model_path), "--size", "256", "--n-samples", "2", "--json", str(path)]
    assert main([*argv, "--repeats", "2"]) == 0
    results = json.loads(path.read_text())
    assert REQUIRED_KEYS <= results.keys()
    assert results["sizes"] == [64, 128, 256] and results["n_true_sources"] > 0
    assert results["per_size"]["256"]["bliss_stage_s"]["samples"] > 0
    assert results["per_size"]["256"]["sep_n_detected"] > 0  # SEP ran on the image in its own process
    for entry in results["per_size"].values():  # medians of the two interleaved passes
        assert len(entry["bliss_s_runs"]) == len(entry["sep_s_runs"]) == len(entry["sep_warm_s_runs"]) == 2
        assert entry["bliss_s"] == pytest.approx(sum(entry["bliss_s_runs"]) / 2)
    assert 0 < results["peak_rss_gb"] < 4 and results["ratio_vs_sep"] > 0
    assert results["bliss_warm_s_256px"] == results["per_size"]["256"]["bliss_warm_s"] > 0
    assert results["ratio_vs_sep_warm"] == pytest.approx(
        results["bliss_warm_s_256px"] / results["sep_warm_s_256px"]
    )
    assert math.isfinite(results["scaling_exponent_warm"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("bliss_s_256px = ") and lines[-1].startswith(
        "second calls: bliss_warm_s_256px"
    )


def test_infer_suite_refuses_fewer_than_one_pass() -> None:
    with pytest.raises(ValueError, match="--repeats 0 must be at least 1"):
        main(["infer", "--size", "256", "--repeats", "0"])
