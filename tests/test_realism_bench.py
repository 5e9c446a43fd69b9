"""The realism suite: its shred rate and figures on hand-made catalogs, and a tiny run of the suite."""

import json
import math

import numpy as np
import pytest

from lsst.meas.extensions.bliss.bench._realism_suite import method_figures
from lsst.meas.extensions.bliss.cli import bench_main as main
from lsst.meas.extensions.bliss.metrics import shred_rate


def test_shred_rate_counts_galaxies_with_unmatched_detections_within_their_radius() -> None:
    # Galaxy 0 has its match and a fragment 3 px away (inside 4 px); galaxy 1 has its match and an
    # unmatched detection 6 px away (outside 4 px); galaxy 2 is missed; a star is matched.
    true_x, true_y = [np.array([10.0, 40.0, 70.0, 90.0])], [np.array([10.0, 10.0, 10.0, 10.0])]
    radius = [np.array([4.0, 4.0, 4.0, 0.0])]
    candidate = [np.array([1.0, 1.0, 1.0, 0.0])]
    est_x, est_y = [np.array([10.2, 13.0, 40.0, 46.0, 90.0])], [np.array([10.0, 10.0, 10.1, 10.0, 10.0])]
    scores = shred_rate(true_x, true_y, radius, candidate, est_x, est_y)
    assert (scores.n_galaxies, scores.n_shredded, scores.n_extra_detections) == (3, 1, 1)
    assert scores.rate == pytest.approx(1 / 3)
    # A duplicate detection of the star next to a galaxy's radius counts for the galaxy.
    est_x[0] = np.append(est_x[0], 73.5)
    est_y[0] = np.append(est_y[0], 10.0)
    assert shred_rate(true_x, true_y, radius, candidate, est_x, est_y).n_shredded == 2


def test_shred_rate_without_candidates_is_nan_and_bad_input_is_named() -> None:
    empty = [np.zeros(0)]
    assert math.isnan(shred_rate(empty, empty, empty, empty, [np.ones(1)], [np.ones(1)]).rate)
    with pytest.raises(ValueError, match="true_radius_pix"):
        shred_rate([np.zeros(2)], [np.zeros(2)], [np.zeros(3)], [np.ones(2)], empty, empty)
    with pytest.raises(ValueError, match="est_x has 2 images"):
        shred_rate([np.zeros(2)], [np.zeros(2)], [np.zeros(2)], [np.ones(2)], empty * 2, empty)


def test_method_figures_of_a_hand_made_scene() -> None:
    # Four true sources: a bright galaxy (shredded), a compact galaxy called a star, a star, a faint one.
    per_image = {
        "true_x": [np.array([10.0, 30.0, 50.0, 70.0])],
        "true_y": [np.array([10.0, 10.0, 10.0, 10.0])],
        "true_snr": [np.array([50.0, 15.0, 30.0, 3.0])],
        "true_is_galaxy": [np.array([1.0, 1.0, 0.0, 1.0])],
        "true_hlr_arcsec": [np.array([1.0, 0.15, 0.0, 0.5])],
        "true_point_residual": [np.array([np.nan, 0.1, 0.0, np.nan])],
        "bliss_x": [np.array([10.0, 14.0, 30.0, 50.0])],
        "bliss_y": [np.array([10.0, 10.0, 10.0, 10.0])],
        "bliss_snr": [np.array([45.0, 12.0, 14.0, 28.0])],
        "bliss_galaxy_prob": [np.array([0.9, 0.6, 0.2, 0.1])],
    }
    figures = method_figures(per_image, "bliss", pixel_scale_arcsec=0.2)
    assert figures["bliss_f1"] == pytest.approx(2 * 3 / (4 + 4))
    assert figures["bliss_recall_snr10"] == pytest.approx(1.0)
    assert figures["bliss_precision_snr10"] == pytest.approx(3 / 4)
    assert figures["bliss_class_acc_snr10"] == pytest.approx(2 / 3)
    assert figures["bliss_class_acc_compact_snr10"] == pytest.approx(1 / 2)
    # The compact galaxy and the star are alone in their SNR bins: an ideal observer gets both right.
    assert figures["bliss_class_acc_compact_snr10_ideal"] == 1.0
    assert figures["bliss_shred_rate_snr20"] == pytest.approx(1.0)
    without_classifier = {k: v for k, v in per_image.items() if k != "bliss_galaxy_prob"}
    assert method_figures(without_classifier, "bliss", 0.2)["bliss_class_acc_snr10"] is None


def test_realism_suite_runs_and_reports_its_figures(tmp_path) -> None:
    path = tmp_path / "realism.json"
    assert main(["realism", "--n-scenes", "2", "--batch-size", "2", "--json", str(path)]) == 0
    results = json.loads(path.read_text())
    for method in ("bliss", "sep"):
        for figure in ("f1", "recall_snr10", "precision_snr10", "shred_rate_snr20"):
            assert f"{method}_{figure}" in results
    assert 0 <= results["bliss_f1"] <= 1 and results["sep_class_acc_snr10"] is None
    assert results["sep_class_acc_compact_snr10_ideal"] is None
    ideal = results["bliss_class_acc_compact_snr10_ideal"]
    assert ideal is None or math.isnan(ideal) or 0.5 <= ideal <= 1.0
    assert results["n_galaxies_with_knots_drawn"] > 0
    assert results["scene_prior"]["knot_galaxy_fraction"] > 0


def test_realism_suite_refuses_a_training_seed(tmp_path) -> None:
    from lsst.meas.extensions.bliss.io import load_default_model

    seed = load_default_model().training["seed"]
    with pytest.raises(ValueError, match="--seed"):
        main(["realism", "--n-scenes", "1", "--seed", str(seed), "--json", str(tmp_path / "r.json")])
