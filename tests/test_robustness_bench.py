"""``bliss-bench robustness`` on a tiny run: its figures, the bands it scores and refuses, the
refusal cases, and counts against nJy through the pipeline task."""

from __future__ import annotations

import json
import math

import torch

from lsst.meas.extensions.bliss import (
    BlissEncoder,
    BlissModel,
    EncoderConfig,
    PriorConfig,
    SimulatorConfig,
    SurveyConditions,
)
from lsst.meas.extensions.bliss.bench import SUITES
from lsst.meas.extensions.bliss.bench._robustness_suite import SNR_BINS, VARIANCE_CASES, refusals
from lsst.meas.extensions.bliss.cli import bench_main as main


def test_robustness_suite_on_the_packaged_model(tmp_path, capsys) -> None:
    assert "robustness" in SUITES
    output = tmp_path / "robustness.json"
    main(["robustness", "--flux-scenes", "2", "--band-scenes", "6", "--json", str(output)])
    results = json.loads(output.read_text())
    flux = results["flux_bias_by_variance"]
    assert set(flux) == set(VARIANCE_CASES) and all(set(bins) == set(SNR_BINS) for bins in flux.values())
    # The packaged model (background inputs) is unbiased whatever the variance plane's convention.
    for case, bins in flux.items():
        assert abs(bins["30-100"]["median_ratio"] - 1.0) < 0.1, case
    worst = max(abs(item["median_ratio"] - 1.0) for bins in flux.values() for item in bins.values())
    assert results["max_abs_flux_bias_variance"] == worst
    changes = [
        abs(item["median_ratio"] / flux["training"][name]["median_ratio"] - 1.0)
        for case, bins in flux.items()
        if case != "training"
        for name, item in bins.items()
    ]
    assert results["max_abs_flux_change_vs_training_variance"] == max(changes)
    # The split by class covers the same sources, and its extremes are those of each class.
    for bins in flux.values():
        for item in bins.values():
            assert item["n_stars"] + item["n_galaxies"] == item["n"]
    for kind in ("stars", "galaxies"):
        values = [abs(item[f"median_ratio_{kind}"] - 1.0) for bins in flux.values() for item in bins.values()]
        finite = [value for value in values if math.isfinite(value)]
        if finite:
            assert results[f"max_abs_flux_bias_variance_{kind}"] == max(finite)
    # The packaged model is trained for the six bands: each is scored.
    assert results["bands_scored"] == results["trained_bands"] == ["u", "g", "r", "i", "z", "y"]
    for band in results["bands_scored"]:
        for key in ("f1", "sep_f1", "recall_snr10", "precision_snr10", "class_acc_snr10", "flux_cov68"):
            assert 0.0 <= results["bands"][band][key] <= 1.0, (band, key)
    assert results["ood_refused"] == 1.0 and results["in_range_refused"] == 0.0
    assert results["units_max_rel_diff"] < 1e-4
    assert "max_abs_flux_bias_variance" in capsys.readouterr().out


def test_refusal_cases_of_a_multi_band_model() -> None:
    torch.manual_seed(0)
    bands = tuple(SurveyConditions.from_survey("LSST", band) for band in ("g", "r", "y"))
    model = BlissModel(
        BlissEncoder(EncoderConfig(pixel_channels=(8, 8, 16), tile_blocks=1, head_channels=16)),
        SurveyConditions.from_survey(),
        PriorConfig(),
        SimulatorConfig(psf_fwhm_range_arcsec=(0.5, 1.5), exposure_time_range_s=(15.0, 30.0)),
        band_conditions=bands,
    )
    results = refusals(model)
    assert results["ood_refused"] == 1.0 and results["in_range_refused"] == 0.0
    assert {"g_nominal", "r_psf_low", "y_psf_high", "y_exposure_15s"} <= set(results["in_range_cases"])
    assert results["ood_cases"]["unknown_band"] == ["band"]
    # The deepest trained band sets the depth limit: 4 mag beyond it is refused for its noise.
    assert results["ood_cases"]["noise_4mag_deeper"] == ["noise"]
    assert not math.isnan(results["ood_refused"])
