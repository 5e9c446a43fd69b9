"""Science metrics: matching, detection scores, SNR and blendedness, calibration, limits."""

import json
import math

import numpy as np
import pytest
import torch

from lsst.meas.extensions.bliss import SOURCE_FIELDS, FullCatalog, SurveyConditions
from lsst.meas.extensions.bliss.metrics import (
    classification_accuracy,
    cramer_rao_flux_sigma,
    detection_metrics,
    ellipticity_from_shape,
    expected_calibration_error,
    ideal_classification_accuracy,
    interval_coverage,
    match_sources,
    matched_attributes,
    pit_histogram,
    point_source_residual_fraction,
    relative_residual_stats,
    residual_stats,
    robust_scatter,
    robust_scatter_stderr,
    source_snr_and_blendedness,
)

FWHM_OVER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def star_catalog(positions: list[list[tuple[float, float, float]]], size: int = 64) -> FullCatalog:
    """Stars ``(x, y, flux_njy)`` per image, padded to the longest list."""
    batch, max_sources = len(positions), max(len(p) for p in positions)
    fields = {name: torch.zeros(batch, max_sources) for name in SOURCE_FIELDS}
    fields["is_galaxy"] = torch.zeros(batch, max_sources, dtype=torch.bool)
    fields["disk_q"] = torch.ones(batch, max_sources)
    fields["bulge_q"] = torch.ones(batch, max_sources)
    x, y = torch.zeros(batch, max_sources), torch.zeros(batch, max_sources)
    for b, sources in enumerate(positions):
        for m, (sx, sy, flux) in enumerate(sources):
            x[b, m], y[b, m], fields["flux_njy"][b, m] = sx, sy, flux
    n_sources = torch.tensor([len(p) for p in positions])
    return FullCatalog(size, size, n_sources, x, y, fields)


# --- matching ---------------------------------------------------------------


def test_match_is_one_to_one_and_keeps_the_closer_estimate() -> None:
    match = match_sources([10.0], [10.0], [10.6, 10.2], [10.0, 10.1])
    assert match.n_matched == 1
    assert match.true_index.tolist() == [0] and match.est_index.tolist() == [1]
    assert match.distance[0] == pytest.approx(math.hypot(0.2, 0.1))
    assert (match.n_true, match.n_est) == (1, 2)


def test_a_far_pair_does_not_block_a_valid_close_pair() -> None:
    # Raw Hungarian on distances would pick T1-E2 (1.5 px, invalid) + T2-E1 (0.2 px):
    # total 1.7 < 0.9 + 0.95, losing a match. Both true sources have a valid partner.
    true_x, true_y = [0.0, 1.1], [0.0, 0.0]
    e2_x = (2.25 - 0.95**2 + 1.1**2) / 2.2
    e2_y = math.sqrt(2.25 - e2_x**2)
    match = match_sources(true_x, true_y, [0.9, e2_x], [0.0, e2_y])
    assert match.n_matched == 2
    assert match.true_index.tolist() == [0, 1] and match.est_index.tolist() == [0, 1]
    assert np.all(match.distance <= 1.0)


def test_match_radius_is_inclusive() -> None:
    assert match_sources([0.0], [0.0], [1.0], [0.0]).n_matched == 1
    assert match_sources([0.0], [0.0], [1.0 + 1e-9], [0.0]).n_matched == 0
    assert match_sources([0.0], [0.0], [1.5], [0.0], max_distance_pix=2.0).n_matched == 1


def test_match_handles_empty_inputs() -> None:
    for true_x, est_x in (([], [1.0]), ([1.0], []), ([], [])):
        match = match_sources(true_x, true_x, est_x, est_x)
        assert match.n_matched == 0 and match.true_index.dtype == np.int64
        assert (match.n_true, match.n_est) == (len(true_x), len(est_x))


def test_match_on_a_crowded_field_matches_every_jittered_source() -> None:
    rng = np.random.default_rng(0)
    grid = np.arange(0.0, 300.0, 3.0)
    true_x, true_y = (v.ravel() for v in np.meshgrid(grid, grid))
    order = rng.permutation(true_x.size)
    est_x = true_x[order] + rng.uniform(-0.3, 0.3, true_x.size)
    est_y = true_y[order] + rng.uniform(-0.3, 0.3, true_x.size)
    match = match_sources(true_x, true_y, est_x, est_y)
    assert match.n_matched == true_x.size
    assert np.array_equal(order[match.est_index], match.true_index)


def test_match_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="shapes do not match"):
        match_sources([0.0, 1.0], [0.0], [0.0], [0.0])
    with pytest.raises(ValueError, match="non-finite"):
        match_sources([np.nan], [0.0], [0.0], [0.0])
    with pytest.raises(ValueError, match="max_distance_pix"):
        match_sources([0.0], [0.0], [0.0], [0.0], max_distance_pix=0.0)


# --- detection scores -----------------------------------------------------------


def test_detection_metrics_arithmetic_and_json() -> None:
    # Image 0: three true sources; estimates match two at < 1 px, one 1.5 px off, one spurious.
    # Image 1: two true sources, no estimate.
    true_x = [np.array([10.0, 20.0, 30.0]), np.array([5.0, 50.0])]
    true_y = [np.array([10.0, 20.0, 30.0]), np.array([5.0, 50.0])]
    est_x = [np.array([10.2, 20.0, 31.5, 60.0]), np.array([])]
    est_y = [np.array([10.0, 19.7, 30.0, 60.0]), np.array([])]
    metrics = detection_metrics(
        true_x,
        true_y,
        est_x,
        est_y,
        true_snr=[np.array([4.0, 30.0, 30.0]), np.array([4.0, 100.0])],
        true_mag=[np.array([25.5, 22.2, 22.7]), np.array([25.1, 20.0])],
        true_blendedness=[np.array([0.0, 0.3, 0.3]), np.array([0.0, 0.0])],
        est_snr=[np.array([6.0, 25.0, 25.0, 4.0]), np.array([])],
        est_mag=[np.array([25.0, 22.0, 22.0, 26.0]), np.array([])],
    )
    assert (metrics.n_true, metrics.n_est, metrics.n_matched) == (5, 4, 2)
    assert metrics.precision == pytest.approx(2 / 4)
    assert metrics.recall == pytest.approx(2 / 5)
    assert metrics.f1 == pytest.approx(2 * 0.5 * 0.4 / 0.9)
    wide = metrics.by_radius["2.0"]
    assert wide["n_matched"] == 3 and wide["precision"] == pytest.approx(3 / 4)
    assert wide["f1"] == pytest.approx(2 * 3 / 9)

    recall = metrics.recall_by_true_snr
    assert recall.edges[:3] == [0.0, 3.0, 5.0] and math.isinf(recall.edges[-1])
    assert recall.n_true == [0, 2, 0, 0, 2, 1] and recall.n_matched == [0, 1, 0, 0, 1, 0]
    assert math.isnan(recall.value[0]) and recall.value[1] == 0.5 and recall.value[5] == 0.0
    precision = metrics.precision_by_est_snr
    assert precision.n_est == [0, 1, 1, 0, 2, 0] and precision.value[2] == 1.0
    assert precision.value[1] == 0.0 and precision.value[4] == 0.5
    assert sum(metrics.recall_by_true_mag.n_true) == 5
    # Blendedness: the spurious estimate falls in the bin of its nearest true source (0.3).
    blend = metrics.f1_by_blendedness
    assert blend.n_true == [3, 0, 0, 2, 0] and blend.n_est == [1, 0, 0, 3, 0]
    assert blend.value[0] == pytest.approx(2 * 1 / 4) and blend.value[3] == pytest.approx(2 * 1 / 5)

    text = json.dumps(metrics.to_dict())
    assert json.loads(text)["recall_by_true_snr"]["n_true"] == recall.n_true


def test_detection_metrics_ignore_nan_padding_and_check_lengths() -> None:
    padded_true = np.array([[1.0, 2.0, np.nan], [3.0, np.nan, np.nan]])
    padded_est = np.array([[1.0, np.nan], [3.2, 9.0]])
    metrics = detection_metrics(padded_true, padded_true, padded_est, padded_est)
    assert (metrics.n_true, metrics.n_est, metrics.n_matched) == (3, 3, 2)
    assert metrics.recall_by_true_snr is None and metrics.f1_by_blendedness is None
    with pytest.raises(ValueError, match="images"):
        detection_metrics([np.zeros(2)], [np.zeros(2)], [np.zeros(1), np.zeros(1)], [np.zeros(1)] * 2)
    with pytest.raises(ValueError, match="true_snr"):
        detection_metrics([np.zeros(2)], [np.zeros(2)], [np.zeros(1)], [np.zeros(1)], true_snr=[np.zeros(3)])
    with pytest.raises(ValueError, match="snr_edges"):
        detection_metrics([np.zeros(2)], [np.zeros(2)], [np.zeros(1)], [np.zeros(1)], snr_edges=[5.0, 3.0])


def test_empty_images_give_nan_scores() -> None:
    metrics = detection_metrics([np.zeros(0)], [np.zeros(0)], [np.zeros(0)], [np.zeros(0)])
    assert math.isnan(metrics.precision) and math.isnan(metrics.recall) and math.isnan(metrics.f1)


# --- SNR and blendedness ----------------------------------------------------


def test_snr_of_a_faint_isolated_gaussian_star_is_the_background_limit() -> None:
    conditions = SurveyConditions.from_survey(psf_model="gaussian", psf_fwhm_arcsec=1.0)
    sigma_psf = conditions.psf_fwhm_pix / FWHM_OVER_SIGMA
    analytic_per_njy = 1.0 / (conditions.background_noise_njy * math.sqrt(4 * math.pi * sigma_psf**2))
    flux = 3.0 / analytic_per_njy  # SNR 3: the peak is ~1% of the sky, so the sky dominates the noise
    catalog = star_catalog([[(31.3, 30.8, flux)], [(20.0, 40.0, flux), (0.0, 0.0, 0.0)]])
    snr, blendedness = source_snr_and_blendedness(catalog, None, conditions)
    assert snr.shape == blendedness.shape == (2, 2)
    assert snr[0, 0] == pytest.approx(3.0, rel=0.03) and snr[1, 0] == pytest.approx(snr[0, 0], rel=1e-3)
    assert np.isnan(snr[0, 1]) and np.isnan(blendedness[0, 1])
    assert abs(blendedness[0, 0]) < 1e-6 and abs(blendedness[1, 0]) < 1e-6


def test_blendedness_is_positive_for_an_overlapping_pair_and_uses_given_noiseless() -> None:
    conditions = SurveyConditions.from_survey()
    catalog = star_catalog([[(30.0, 30.0, 1e5), (32.5, 30.0, 2e4)], [(30.0, 30.0, 1e5)]])
    snr, blendedness = source_snr_and_blendedness(catalog, conditions.psf(), conditions)
    assert 0 < blendedness[0, 0] < blendedness[0, 1] < 1
    assert abs(blendedness[1, 0]) < 1e-6
    assert snr[0, 0] == pytest.approx(snr[1, 0], rel=1e-6)
    # Source Poisson noise dominates: SNR grows more slowly than the flux (5x here).
    assert 2 * snr[0, 1] < snr[0, 0] < 5 * snr[0, 1]
    # Extra light from outside the catalog (as from a simulation's border) raises blendedness.
    noiseless = torch.zeros(2, 64, 64)
    noiseless[1, 25:36, 25:36] = 2000.0
    _, with_light = source_snr_and_blendedness(catalog, conditions.psf(), conditions, noiseless)
    assert with_light[1, 0] > 0.01 and np.isnan(with_light[1, 1])
    with pytest.raises(ValueError, match="noiseless has shape"):
        source_snr_and_blendedness(catalog, None, conditions, torch.zeros(2, 32, 32))
    with pytest.raises(ValueError, match="PSFs"):
        source_snr_and_blendedness(catalog, conditions.psf(np.array([0.7, 0.8, 0.9])), conditions)


# --- matched-pair statistics ------------------------------------------------


def test_classification_accuracy_overall_per_class_and_snr_cut() -> None:
    truth = np.array([True, True, True, False, False])
    prob = np.array([0.9, 0.8, 0.2, 0.1, 0.7])
    snr = np.array([50.0, 5.0, 4.0, 30.0, 3.0])
    scores = classification_accuracy(truth, prob)
    assert scores.accuracy == pytest.approx(3 / 5)
    assert scores.galaxy_accuracy == pytest.approx(2 / 3) and scores.star_accuracy == pytest.approx(1 / 2)
    bright = classification_accuracy(truth, prob, snr=snr, min_snr=5.0)
    assert (bright.n, bright.n_galaxy, bright.n_star, bright.accuracy) == (3, 2, 1, 1.0)
    with pytest.raises(ValueError, match="needs snr"):
        classification_accuracy(truth, prob, min_snr=5.0)
    with pytest.raises(ValueError, match="shapes do not match"):
        classification_accuracy(truth, prob[:3])


def test_robust_scatter_of_a_gaussian_is_sigma_and_ignores_outliers() -> None:
    sample = np.random.default_rng(1).normal(3.0, 2.0, 40000)
    assert robust_scatter(sample) == pytest.approx(2.0, rel=0.02)
    sample[:400] = 1e6
    assert robust_scatter(sample) == pytest.approx(2.0, rel=0.04)
    assert math.isnan(robust_scatter([]))


def test_robust_scatter_stderr_shrinks_as_one_over_sqrt_n() -> None:
    rng = np.random.default_rng(3)
    small, large = rng.normal(0.0, 1.0, 33), rng.normal(0.0, 1.0, 1300)
    # The median absolute deviation's efficiency is 37%: about 1.16 / sqrt(n) for unit Gaussian data.
    assert robust_scatter_stderr(small) == pytest.approx(1.16 / math.sqrt(33), rel=0.35)
    assert robust_scatter_stderr(large) == pytest.approx(1.16 / math.sqrt(1300), rel=0.2)
    assert robust_scatter_stderr(small, seed=5) == robust_scatter_stderr(small, seed=5)
    assert math.isnan(robust_scatter_stderr([1.0])) and math.isnan(robust_scatter_stderr([np.nan, 2.0]))


def test_relative_residual_stats_binned_by_snr() -> None:
    rng = np.random.default_rng(2)
    snr = rng.uniform(5.0, 100.0, 20000)
    truth = rng.uniform(100.0, 1000.0, snr.size)
    est = truth * (1.0 + 0.02 + rng.normal(0.0, 1.0, snr.size) / snr)
    stats = relative_residual_stats(est, truth, bins_by=snr, edges=[5.0, 10.0, 50.0, 100.0, 200.0])
    assert stats.median == pytest.approx(0.02, abs=0.005)
    assert stats.bin_count[:3] == [
        int(np.sum((snr >= lo) & (snr < hi))) for lo, hi in ((5, 10), (10, 50), (50, 100))
    ]
    assert stats.bin_scatter[0] > stats.bin_scatter[1] > stats.bin_scatter[2]
    assert stats.bin_scatter[2] == pytest.approx(1.0 / 72.0, rel=0.15)
    assert stats.bin_count[3] == 0 and math.isnan(stats.bin_median[3])
    json.dumps(stats.to_dict())
    assert residual_stats(np.array([1.0, 2.0, 3.0])).median == 2.0
    with pytest.raises(ValueError, match="shapes do not match"):
        relative_residual_stats(est, truth[:-1])
    with pytest.raises(ValueError, match="zeros"):
        relative_residual_stats([1.0], [0.0])


def test_ellipticity_from_shape() -> None:
    e1, e2 = ellipticity_from_shape(np.array([1.0, 0.5, 0.5]), np.array([0.3, 0.0, math.pi / 4]))
    np.testing.assert_allclose(e1, [0.0, 1 / 3, 0.0], atol=1e-12)
    np.testing.assert_allclose(e2, [0.0, 0.0, 1 / 3], atol=1e-12)
    with pytest.raises(ValueError, match="axis_ratio"):
        ellipticity_from_shape([0.0], [0.0])
    with pytest.raises(ValueError, match="shapes do not match"):
        ellipticity_from_shape([0.5, 0.5], [0.0])


# --- calibration ------------------------------------------------------------


def test_expected_calibration_error_small_when_calibrated_large_when_not() -> None:
    rng = np.random.default_rng(3)
    prob = rng.uniform(0.0, 1.0, 50000)
    calibrated = rng.uniform(0.0, 1.0, prob.size) < prob
    ece, table = expected_calibration_error(prob, calibrated)
    assert ece < 0.015
    np.testing.assert_allclose(table.observed_frequency, table.bin_centres, atol=0.03)
    assert sum(table.counts) == prob.size and len(table.bin_centres) == 10
    overconfident = rng.uniform(0.0, 1.0, prob.size) < 0.5 + 0.5 * (prob - 0.5)
    ece_bad, _ = expected_calibration_error(prob, overconfident)
    assert ece_bad > 0.1
    _, sparse = expected_calibration_error(np.array([0.05, 0.95]), np.array([0, 1]), n_bins=4)
    assert sparse.counts == [1, 0, 0, 1] and math.isnan(sparse.mean_prob[1])
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        expected_calibration_error([1.5], [1])
    with pytest.raises(ValueError, match="shapes do not match"):
        expected_calibration_error([0.5, 0.5], [1])


def test_coverage_of_gaussian_one_sigma_intervals() -> None:
    rng = np.random.default_rng(4)
    truth = rng.normal(0.0, 1.0, 40000)
    estimate = truth + rng.normal(0.0, 0.5, truth.size)
    coverage = interval_coverage(truth, estimate - 0.5, estimate + 0.5)
    assert coverage == pytest.approx(0.6827, abs=0.01)
    assert interval_coverage(truth, estimate - 1.0, estimate + 1.0) == pytest.approx(0.9545, abs=0.005)
    with pytest.raises(ValueError, match="lower > upper"):
        interval_coverage([0.0], [1.0], [-1.0])
    with pytest.raises(ValueError, match="shapes do not match"):
        interval_coverage([0.0, 1.0], [0.0], [1.0])


def test_pit_histogram_flat_for_calibrated_and_not_for_overconfident() -> None:
    rng = np.random.default_rng(5)
    truth = rng.normal(0.0, 1.0, 20000)
    from scipy.stats import norm

    flat = pit_histogram(norm.cdf(truth))
    assert flat.p_value > 0.001 and np.allclose(flat.density, 1.0, atol=0.1)
    peaked = pit_histogram(norm.cdf(truth / 0.5))  # posterior too narrow: U-shaped
    assert peaked.p_value < 1e-6 and peaked.density[0] > 1.5
    assert sum(flat.counts) == truth.size and len(flat.edges) == 11
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        pit_histogram([1.2])


# --- physical limit ---------------------------------------------------------------


def test_cramer_rao_sigma_of_a_gaussian_psf_on_flat_variance() -> None:
    sigma_psf, sigma_sky = 3.0, 2.0
    grid = np.arange(-30, 31, dtype=np.float64)
    psf = np.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / (2 * sigma_psf**2))
    psf /= psf.sum()
    expected = sigma_sky * math.sqrt(4 * math.pi * sigma_psf**2)
    assert float(cramer_rao_flux_sigma(psf, sigma_sky**2)) == pytest.approx(expected, rel=1e-6)
    batch = torch.as_tensor(np.stack([psf, psf]))
    variance = torch.full((2, 61, 61), sigma_sky**2, dtype=torch.float64)
    variance[1] *= 4.0
    sigma = cramer_rao_flux_sigma(batch, variance)
    assert isinstance(sigma, torch.Tensor) and sigma.shape == (2,)
    assert sigma[1].item() == pytest.approx(2 * sigma[0].item())
    with pytest.raises(ValueError, match="> 0"):
        cramer_rao_flux_sigma(psf, np.zeros_like(psf))
    with pytest.raises(ValueError, match="broadcast"):
        cramer_rao_flux_sigma(psf, np.ones((3, 3)))
    with pytest.raises(ValueError, match="H, W"):
        cramer_rao_flux_sigma(np.ones(5), 1.0)


def test_matched_attributes_carry_both_sides_of_each_match_in_image_order() -> None:
    per_image = {
        "true_x": [np.array([10.0, 20.0]), np.array([5.0]), np.zeros(0)],
        "true_y": [np.array([10.0, 20.0]), np.array([5.0]), np.zeros(0)],
        "true_flux": [np.array([100.0, 200.0]), np.array([300.0]), np.zeros(0)],
        # Image 0: the estimate near (20, 20) comes first, one estimate matches nothing.
        "bliss_x": [np.array([20.3, 10.2, 40.0]), np.array([7.0]), np.array([3.0])],
        "bliss_y": [np.array([19.8, 10.1, 40.0]), np.array([5.0]), np.array([3.0])],
        "bliss_flux_njy": [np.array([210.0, 90.0, 50.0]), np.array([280.0]), np.array([10.0])],
    }
    pairs = matched_attributes(per_image, "bliss", ["flux"])
    assert set(pairs) == {"true_flux", "est_x", "est_y", "est_flux_njy"}
    np.testing.assert_array_equal(pairs["true_flux"], [100.0, 200.0])
    np.testing.assert_array_equal(pairs["est_flux_njy"], [90.0, 210.0])
    wide = matched_attributes(per_image, "bliss", ["flux"], max_distance_pix=2.5)
    np.testing.assert_array_equal(wide["true_flux"], [100.0, 200.0, 300.0])
    np.testing.assert_array_equal(wide["est_x"], [10.2, 20.3, 7.0])
    empty = matched_attributes({k: v[2:] for k, v in per_image.items()}, "bliss", ["flux"])
    assert all(values.shape == (0,) for values in empty.values())


def test_ideal_classification_accuracy_of_known_problems() -> None:
    from scipy.stats import norm

    # One galaxy and one star at SNR 20, hypotheses d = 20 * 0.1 = 2 noise units apart, equal priors:
    # the Bayes decision errs with probability Phi(-d / 2) on either class.
    assert ideal_classification_accuracy([1, 0], [20.0, 20.0], [0.1, 0.0]) == pytest.approx(norm.cdf(1.0))
    # Indistinguishable (a point-like galaxy) with three stars to one galaxy: calling all stars is best.
    assert ideal_classification_accuracy([1, 0, 0, 0], [20.0] * 4, [0.0] * 4) == pytest.approx(0.75)
    # Sources alone in their SNR bins are decided by the prior; below min_snr they are left out.
    assert ideal_classification_accuracy([1, 0, 1], [11.0, 40.0, 5.0], [0.0, 0.0, 0.0]) == 1.0
    assert math.isnan(ideal_classification_accuracy([1], [5.0], [0.5]))
    # Farther apart (higher SNR or a larger galaxy) is easier.
    low = ideal_classification_accuracy([1, 0], [15.0, 15.0], [0.1, 0.0])
    assert low < ideal_classification_accuracy([1, 0], [15.0, 15.0], [0.2, 0.0]) < 1.0
    with pytest.raises(ValueError, match="residual_fraction"):
        ideal_classification_accuracy([1, 0], [20.0, 20.0], [1.5, 0.0])
    with pytest.raises(ValueError, match="snr"):
        ideal_classification_accuracy([1, 0], [20.0], [0.1, 0.0])


def test_point_source_residual_fraction_grows_with_galaxy_size() -> None:
    from lsst.meas.extensions.bliss.rendering import GaussianPsf, RenderSources

    n = 5
    hlr_pix = torch.tensor([0.0, 0.05, 0.5, 0.75, 1.5], dtype=torch.float64)
    sources = RenderSources(
        x=torch.full((n,), 20.3, dtype=torch.float64),
        y=torch.full((n,), 19.8, dtype=torch.float64),
        flux=torch.full((n,), 1000.0, dtype=torch.float64),
        is_galaxy=torch.tensor([False, True, True, True, True]),
        disk_frac=torch.ones(n, dtype=torch.float64),
        disk_hlr_pix=hlr_pix.clamp(min=0.05),
        disk_q=torch.ones(n, dtype=torch.float64),
        bulge_hlr_pix=hlr_pix.clamp(min=0.05),
        bulge_q=torch.ones(n, dtype=torch.float64),
        position_angle_rad=torch.zeros(n, dtype=torch.float64),
        image_index=torch.zeros(n, dtype=torch.long),
        psf_index=torch.zeros(n, dtype=torch.long),
    )
    psf = GaussianPsf(torch.tensor([3.5]))  # FWHM 0.7" at 0.2"/px
    fraction = point_source_residual_fraction(sources, psf)
    assert fraction.shape == (n,) and fraction[0] == 0.0
    assert fraction[1] < 0.01  # a galaxy far smaller than the PSF is a point source
    assert np.all(np.diff(fraction[1:]) > 0) and fraction[-1] < 1.0
    # An exponential disk of half-light radius 0.15" under a 0.7" Gaussian PSF: about 0.1 of its
    # image is beyond any point source (hypotheses 1 noise unit apart at SNR 10).
    assert 0.07 < fraction[3] < 0.14
    assert point_source_residual_fraction(sources.select(torch.zeros(n, dtype=torch.bool)), psf).shape == (0,)
