"""The ``bliss-bench render`` suite runs and reports its keys (figures come from the real benchmark)."""

import json

from lsst.meas.extensions.bliss.cli import bench_main as main

REQUIRED_KEYS = {
    "galsim_galaxies_per_s",
    "torch_galaxies_per_s",
    "speedup_vs_galsim",
    "max_abs_err_over_peak",
    "max_flux_rel_err",
}


def test_render_suite_writes_json_and_states_speedup(tmp_path, capsys) -> None:
    path = tmp_path / "out" / "render.json"
    assert main(["render", "--quick", "--json", str(path), "--n-galaxies", "24", "--grid-sample", "6"]) == 0
    results = json.loads(path.read_text())
    assert REQUIRED_KEYS <= results.keys()
    assert results["n_galaxies"] == 24 and results["grid_n_stamps"] > 6
    assert results["max_abs_err_over_peak"] <= 0.01 and results["max_flux_rel_err"] <= 0.005
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_line.startswith("speedup_vs_galsim = ")
