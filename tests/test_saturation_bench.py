"""``bliss-bench saturation``: its per-scene bookkeeping and a small run end to end."""

import json

import numpy as np
import pytest

from lsst.meas.extensions.bliss import load_default_model
from lsst.meas.extensions.bliss.bench._saturation_suite import _scene_figures
from lsst.meas.extensions.bliss.cli import bench_main as main


def test_scene_figures_count_the_star_its_fragments_and_the_neighbours_fluxes() -> None:
    truth = {
        "x": np.array([60.0, 90.0, 10.0]),
        "y": np.array([50.0, 50.0, 140.0]),
        "flux_njy": np.array([1000.0, 2000.0, 500.0]),
        "snr": np.array([30.0, 40.0, 5.0]),
    }
    star_x, star_y = 50.0, 50.0
    truth["distance_pix"] = np.hypot(truth["x"] - star_x, truth["y"] - star_y)
    found = {
        # the star (1.5 px off), two fragments in its wings, the 10-px neighbour, the 40-px source
        "x": np.array([51.5, 45.0, 50.0, 60.5, 90.0]),
        "y": np.array([50.0, 55.0, 40.0, 50.0, 50.5]),
        "catalog_flux_njy": np.array([5e6, 3000.0, 2500.0, 1100.0, 2100.0]),
        "flux_njy": np.array([5e6, 3000.0, 2500.0, 1200.0, 2000.0]),
    }
    figures = _scene_figures(found, truth, star_x, star_y, 1e7)
    assert figures["star_found"] and np.isclose(figures["star_flux_ratio"], 0.5)
    assert figures["spurious"] == 2
    np.testing.assert_allclose(figures["neighbour_ratio"], [1.2])
    np.testing.assert_allclose(figures["far_ratio"], [1.0])
    assert figures["n_neighbours_true"] == 1

    missed = _scene_figures({name: value[1:] for name, value in found.items()}, truth, star_x, star_y, 1e7)
    assert not missed["star_found"] and np.isnan(missed["star_flux_ratio"]) and missed["spurious"] == 2


def test_saturation_suite_reports_both_methods_per_star_magnitude(tmp_path, capsys) -> None:
    path = tmp_path / "saturation.json"
    assert main(["saturation", "--n-scenes", "2", "--star-mags", "13.5", "12", "--json", str(path)]) == 0
    results = json.loads(path.read_text())
    assert set(results["by_star_mag"]) == {"13.5", "12"}
    for figures in results["by_star_mag"].values():
        for method in ("bliss", "sep"):
            assert 0.0 <= figures[method]["star_found_fraction"] <= 1.0
            assert figures[method]["spurious_near_star_per_scene"] >= 0.0
    assert (
        results["bliss_spurious_near_star_per_scene"]
        == (results["by_star_mag"]["13.5"]["bliss"]["spurious_near_star_per_scene"])
    )
    assert "sep_spurious_near_star_per_scene" in capsys.readouterr().out.splitlines()[-1]


def test_saturation_suite_refuses_the_models_training_seed() -> None:
    seed = load_default_model().training["seed"]
    with pytest.raises(ValueError, match=f"--seed {seed} was used to train or validate this model"):
        main(["saturation", "--n-scenes", "1", "--seed", str(seed)])
