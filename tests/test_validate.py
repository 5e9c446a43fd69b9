"""bliss-validate: the photutils baseline, the scores, the report files, the command line."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lsst.meas.extensions.bliss import catalog_scores, combined_catalog_scores
from lsst.meas.extensions.bliss.baselines import PhotutilsCatalog, run_photutils
from lsst.meas.extensions.bliss.cli import validate_main as main
from lsst.meas.extensions.bliss.validate import (
    VARIATIONS,
    ValidationPlan,
    run_methods_on_scenes,
    run_validation,
    score_scenes,
    targets_met,
    write_report,
)


def gaussian_scene(
    sources: list[tuple[float, float, float]], size: int = 64, sigma_pix: float = 1.9, seed: int = 1
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = rng.normal(0.0, 1.0, (size, size))
    for x, y, flux in sources:
        image += (
            flux * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma_pix**2)) / (2 * np.pi * sigma_pix**2)
        )
    return image


def test_photutils_finds_and_measures_separated_sources() -> None:
    truth = [(20.3, 30.7, 400.0), (45.0, 12.0, 200.0)]
    image = gaussian_scene(truth)
    catalog = run_photutils(image, np.ones_like(image), None, psf_fwhm_pix=4.5)
    assert len(catalog) == 2
    order = np.argsort(-catalog.flux_njy)
    for (x, y, flux), index in zip(truth, order, strict=True):
        assert math.hypot(catalog.x[index] - x, catalog.y[index] - y) < 0.5
        # Kron fluxes miss a few per cent of a Gaussian's light; noise adds ~15 nJy.
        assert catalog.flux_njy[index] == pytest.approx(flux, rel=0.15)
    assert np.all(catalog.snr > 5)


def test_photutils_bad_input_and_masks() -> None:
    image = gaussian_scene([(32.0, 32.0, 400.0)])
    variance = np.ones_like(image)
    with pytest.raises(ValueError, match="variance has shape"):
        run_photutils(image, variance[:10], None, 4.5)
    with pytest.raises(ValueError, match="psf_fwhm_pix"):
        run_photutils(image, variance, None, 0.0)
    assert len(run_photutils(image, variance, np.ones(image.shape, dtype=int), 4.5)) == 0
    masked = np.zeros(image.shape, dtype=int)
    masked[20:44, 20:44] = 1
    assert len(run_photutils(image, variance, masked, 4.5)) == 0
    nan_image = image.copy()
    nan_image[0, :] = np.nan
    assert len(run_photutils(nan_image, variance, None, 4.5)) == 1
    assert len(PhotutilsCatalog.empty()) == 0


def test_catalog_scores_of_perfect_and_broken_catalogs() -> None:
    truth = {
        "x": np.array([10.0, 30.0, 50.0]),
        "y": np.array([10.0, 30.0, 50.0]),
        "flux": np.array([100.0, 200.0, 300.0]),
        "is_galaxy": np.array([True, False, True]),
        "mag": np.array([26.4, 25.6, 25.2]),
    }
    sources = {
        "x": truth["x"][:2] + 0.1,
        "y": truth["y"][:2],
        "xErr": np.array([0.2, 0.05]),
        "yErr": np.array([0.2, 0.05]),
        "bliss_detect_prob": np.array([0.9, 0.8]),
        "bliss_galaxy_prob": np.array([0.9, 0.1]),
        "bliss_flux": np.array([110.0, 200.0]),
        "bliss_flux_q16": np.array([90.0, 210.0]),
        "bliss_flux_q84": np.array([120.0, 230.0]),
    }
    scores = catalog_scores(truth, sources)
    assert (scores["n_true"], scores["n_est"], scores["n_matched"]) == (3, 2, 2)
    assert scores["precision"] == 1.0 and scores["recall"] == pytest.approx(2 / 3)
    assert scores["classification_accuracy"] == 1.0
    assert scores["flux_bias"] == pytest.approx(0.05)
    assert scores["flux_coverage68"] == 0.5  # the second interval misses its truth
    assert scores["position_coverage68"] == 0.75  # x of the second source is 2 sigma off
    assert scores["mean_detect_prob"] == pytest.approx(0.85)
    with pytest.raises(KeyError, match="source table lacks the columns \\['bliss_flux_q84'\\]"):
        catalog_scores(truth, {k: v for k, v in sources.items() if k != "bliss_flux_q84"})
    empty = catalog_scores(truth, {name: np.zeros(0) for name in sources})
    assert empty["recall"] == 0.0 and math.isnan(empty["flux_bias"])

    # Many exposures: matches stay within an exposure (a truth and a detection at the same pixel
    # of two different detectors are no match); counts add up and residuals pool.
    no_truth = {name: np.zeros(0) for name in truth}
    no_sources = {name: np.zeros(0) for name in sources}
    apart = combined_catalog_scores([truth, no_truth], [no_sources, sources])
    assert (apart["n_exposures"], apart["n_true"], apart["n_est"], apart["n_matched"]) == (2, 3, 2, 0)
    twice = combined_catalog_scores([truth, truth], [sources, sources])
    assert (twice["n_true"], twice["n_est"], twice["n_matched"]) == (6, 4, 4)
    for name in ("precision", "recall", "flux_bias", "flux_coverage68", "position_coverage68"):
        assert twice[name] == pytest.approx(scores[name])
    with pytest.raises(ValueError, match="one truth table per source table"):
        combined_catalog_scores([truth], [sources, sources])


def test_scene_results_and_scores_are_consistent(default_model) -> None:
    results = run_methods_on_scenes(default_model, VARIATIONS[-1], n_scenes=3, seed=5, batch_size=2)
    assert results.n_scenes == 3
    assert results.psf_fwhm_arcsec == pytest.approx(np.full(3, default_model.conditions.psf_fwhm_arcsec))
    tiles = results.tiles
    n_tiles = 3 * (128 // default_model.encoder.config.tile_size) ** 2
    assert tiles["tile_detection_prob"].shape == tiles["tile_has_source"].shape == (n_tiles,)
    assert tiles["tile_pit_flux"].shape == tiles["tile_pit_x"].shape == tiles["tile_pit_snr"].shape
    assert np.all((tiles["tile_pit_flux"] >= 0) & (tiles["tile_pit_flux"] <= 1))
    assert np.all(np.isfinite(tiles["tile_pit_snr"]))
    scores = score_scenes(results)
    assert scores["density_factor"] == 2.0
    for method in ("bliss", "sep", "photutils"):
        detection = scores[method]["detection"]
        assert detection["n_true"] == scores["n_true_sources"]
        assert 0 <= scores[method]["f1"] <= 1
    calibration = scores["calibration"]
    assert calibration["n_tiles"] == n_tiles
    assert 0 <= calibration["detection_ece"] <= 1
    assert sum(calibration["flux_pit"]["counts"]) == calibration["n_reported_true_tiles"]
    targets = targets_met(calibration)
    assert set(targets) == {
        "flux_coverage68",
        "flux_coverage95",
        "position_coverage68",
        "position_coverage95",
        "detection_ece",
    }
    with pytest.raises(ValueError, match="was used to train or validate"):
        run_methods_on_scenes(default_model, VARIATIONS[0], 1, seed=default_model.training["seed"])


def test_report_files_are_complete_and_strict_json(default_model, tmp_path: Path) -> None:
    plan = ValidationPlan(
        default_scenes=3,
        variation_scenes=1,
        sweep_trials=1,
        tile_trials=2,
        n_samples=2,
        variations=VARIATIONS[:2],
    )
    metrics, extras = run_validation(default_model, plan)
    written = write_report(tmp_path / "report", metrics, extras, default_model, dpi=40)
    names = {path.name for path in written}
    assert {"metrics.json", "index.html", "calibration.png", "example_scene.png"} <= names
    assert not list((tmp_path / "report").glob(".*partial"))
    stored = json.loads((tmp_path / "report" / "metrics.json").read_text())  # strict: NaN became null
    assert set(stored["variations"]) == {"default", "psf_0.6"}
    assert len(stored["separation_sweep"]) == 10
    for name in ("bliss_f1", "sep_f1", "photutils_f1", "bliss_flux_coverage68", "bliss_detection_ece"):
        assert name in stored["headline"]
    page = (tmp_path / "report" / "index.html").read_text()
    for path in written:
        if path.suffix == ".png":
            assert f"src='{path.name}'" in page
            assert path.stat().st_size > 1000
    assert ("MISSED" in page) == (not all(target["met"] for target in stored["targets"].values()))

    # A missed target is printed in red, a met one in green.
    metrics["targets"]["detection_ece"]["met"] = False
    metrics["targets"]["flux_coverage68"]["met"] = True
    write_report(tmp_path / "missed", metrics, extras, default_model, dpi=20)
    page = (tmp_path / "missed" / "index.html").read_text()
    assert "<td>detection_ece</td>" in page
    row = page[page.index("<td>detection_ece</td>") :].split("</tr>")[0]
    assert "color:red" in row and "MISSED" in row
    row = page[page.index("<td>flux_coverage68</td>") :].split("</tr>")[0]
    assert "color:green" in row and "met" in row


def test_command_line_rejects_a_file_as_output(tmp_path: Path, capsys) -> None:
    target = tmp_path / "a_file"
    target.write_text("keep me")
    with pytest.raises(SystemExit):
        main([str(target), "--quick"])
    assert "is not a directory" in capsys.readouterr().err
    assert target.read_text() == "keep me"
