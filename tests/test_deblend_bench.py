"""The ``bliss-bench deblend`` suite runs and reports its keys (figures come from the real benchmark)."""

import json
import math

from lsst.meas.extensions.bliss.cli import bench_main as main
from lsst.meas.extensions.bliss.validate import half_found_separation_fwhm

REQUIRED_KEYS = {
    "blend_flux_scatter_ratio",
    "bliss_blend_flux_scatter",
    "bliss_isolated_flux_scatter",
    "sep_blend_flux_scatter",
    "bliss_e_scatter_snr20",
    "separation_sweep",
    "both_found_half_separation_fwhm",
}


def test_deblend_suite_reports_scatter_ratio_and_sweep(tmp_path, capsys) -> None:
    path = tmp_path / "deblend.json"
    arguments = ["deblend", "--n-scenes", "6", "--sweep-trials", "2", "--fit-from-truth", "--json", str(path)]
    assert main(arguments) == 0
    results = json.loads(path.read_text())
    assert REQUIRED_KEYS <= results.keys()
    assert [entry["separation_pix"] for entry in results["separation_sweep"]] == [
        float(s) for s in range(1, 11)
    ]
    assert results["n_matched"]["bliss_isolated"] > 0 and results["n_matched"]["sep_isolated"] > 0
    # Isolated bright galaxies: the deblended flux of the packaged model is nearly unbiased.
    assert abs(results["flux_bias"]["bliss_isolated"]) < 0.1
    assert math.isfinite(results["bliss_isolated_flux_scatter"])
    assert results["blend_flux_scatter_ratio_stderr"] > 0
    assert results["flux_scatter_stderr"].keys() == results["flux_scatter"].keys()
    # The pairs' matches split into scenes with both or one galaxy found; the true models are measured
    # for every galaxy, and with them the split of the image is nearly unbiased.
    counts = results["n_matched"]
    assert counts["bliss_pair_both_found"] + counts["bliss_pair_one_found"] == counts["bliss_pair"]
    assert counts["truth_models_isolated"] == 6 and counts["truth_models_pair"] == 12
    assert abs(results["flux_bias"]["truth_models_isolated"]) < 0.1
    # Fitted from the truth, with the default prior and with a prior ten times wider, every galaxy.
    for label in ("prior", "wide"):
        assert counts[f"truth_start_{label}_isolated"] == 6 and counts[f"truth_start_{label}_pair"] == 12
        assert abs(results["flux_bias"][f"truth_start_{label}_isolated"]) < 0.1
        assert math.isfinite(results[f"truth_start_{label}_blend_flux_scatter_ratio"])
    assert "blend_flux_scatter_ratio" in capsys.readouterr().out.splitlines()[-1]


def test_half_found_separation_interpolates_the_first_crossing_of_one_half() -> None:
    def sweep(fractions: list[float]) -> list[dict[str, float]]:
        return [
            {"separation_fwhm": 0.25 * (index + 1), "both_found_fraction": fraction}
            for index, fraction in enumerate(fractions)
        ]

    # 0.2 at 0.5 FWHM, 0.8 at 0.75: one half is reached halfway between them.
    assert half_found_separation_fwhm(sweep([0.0, 0.2, 0.8, 1.0])) == 0.625
    assert half_found_separation_fwhm(sweep([0.6, 1.0])) == 0.25  # already at the smallest separation
    assert math.isnan(half_found_separation_fwhm(sweep([0.0, 0.1, 0.4])))  # never reached
