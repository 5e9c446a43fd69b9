"""The report's figures (matplotlib, Agg backend), each drawn from the scores alone.

Every function takes JSON-ready scores (`score_scenes` output, sweeps) and
returns a `matplotlib.figure.Figure`; axes carry units, every method has a
legend entry, and an empty bin is left out of a curve rather than drawn as 0.
"""

from __future__ import annotations

__all__ = [
    "METHOD_STYLES",
    "calibration_figure",
    "classification_figure",
    "detection_by_mag_figure",
    "detection_by_snr_figure",
    "ellipticity_figure",
    "example_scene_figure",
    "f1_blendedness_figure",
    "flux_residual_figure",
    "separation_sweep_figure",
    "tile_position_figure",
    "variations_figure",
]

import math
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

METHOD_STYLES: dict[str, dict[str, Any]] = {
    "bliss": {"color": "tab:blue", "marker": "o", "label": "BLISS"},
    "sep": {"color": "tab:orange", "marker": "s", "label": "SEP"},
    "photutils": {"color": "tab:green", "marker": "^", "label": "photutils"},
}


def _centres(edges: list[float], log: bool) -> np.ndarray:
    """Plotting position of each bin; an open last bin sits a little past its lower edge."""
    low, high = np.asarray(edges[:-1], float), np.asarray(edges[1:], float)
    low = np.where(np.isfinite(low), low, high - 1.0)
    high = np.where(np.isfinite(high), high, low * 1.5 if log else low + 1.0)
    if log:
        return np.sqrt(np.where(low > 0, low, high / 3.0) * high)
    return 0.5 * (low + high)


def _rate_curve(axis: plt.Axes, rate: dict[str, Any], method: str, log: bool) -> None:
    x = _centres(rate["edges"], log)
    y = np.asarray(rate["value"], float)
    keep = np.isfinite(y) & np.isfinite(x)
    axis.plot(x[keep], y[keep], **METHOD_STYLES[method])


def detection_by_snr_figure(scores: dict[str, Any], methods: tuple[str, ...]) -> Figure:
    """Recall against true SNR and precision against estimated SNR."""
    figure = _recall_precision_figure(
        scores,
        methods,
        ("recall_by_true_snr", "true SNR"),
        ("precision_by_est_snr", "estimated SNR (flux / flux error)"),
        log=True,
    )
    for axis in figure.axes:
        axis.set_xscale("log")
        axis.set_xlim(1, 1000)
    return figure


def detection_by_mag_figure(scores: dict[str, Any], methods: tuple[str, ...], depth_mag: float) -> Figure:
    """Recall against true magnitude and precision against estimated magnitude."""
    return _recall_precision_figure(
        scores,
        methods,
        ("recall_by_true_mag", "true r magnitude (AB)"),
        ("precision_by_est_mag", "estimated r magnitude (AB)"),
        log=False,
        depth_mag=depth_mag,
    )


def _recall_precision_figure(
    scores: dict[str, Any],
    methods: tuple[str, ...],
    recall: tuple[str, str],
    precision: tuple[str, str],
    log: bool,
    depth_mag: float | None = None,
) -> Figure:
    """Recall (left) and precision (right), each ``(DetectionMetrics key, x-axis label)``."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for axis, (key, label), title in zip(axes, (recall, precision), ("recall", "precision"), strict=True):
        for method in methods:
            _rate_curve(axis, scores[method]["detection"][key], method, log=log)
        if depth_mag is not None:
            axis.axvline(depth_mag, color="grey", linestyle=":", label=f"5-sigma depth {depth_mag:.1f}")
        axis.set_xlabel(label)
        axis.set_ylabel(f"{title} (1 px match)")
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
        axis.legend()
    return figure


def f1_blendedness_figure(scores: dict[str, Any], methods: tuple[str, ...]) -> Figure:
    """F1 in bins of the true sources' blendedness."""
    figure, axis = plt.subplots(figsize=(6, 4), constrained_layout=True)
    first = scores[methods[0]]["detection"]["f1_by_blendedness"]
    labels = []
    for low, high in zip(first["edges"][:-1], first["edges"][1:], strict=True):
        labels.append(
            f"< {high:g}"
            if not math.isfinite(low)
            else f">= {low:g}"
            if not math.isfinite(high)
            else f"{low:g}-{high:g}"
        )
    values = {
        method: np.asarray(scores[method]["detection"]["f1_by_blendedness"]["value"], float)
        for method in methods
    }
    _grouped_f1_bars(axis, labels, values)
    axis.set_xlabel("blendedness of the true source (1 - sum I^2 / sum I I_all)")
    return figure


def _grouped_f1_bars(axis: plt.Axes, labels: list[str], values: dict[str, np.ndarray]) -> None:
    """One bar per method in each group; an empty group's bar is drawn at 0."""
    width = 0.8 / len(values)
    positions = np.arange(len(labels))
    for offset, (method, heights) in enumerate(values.items()):
        style = METHOD_STYLES[method]
        axis.bar(
            positions + offset * width,
            np.nan_to_num(heights),
            width,
            color=style["color"],
            label=style["label"],
        )
    axis.set_xticks(positions + 0.4 - width / 2, labels)
    axis.set_ylabel("F1 (1 px match)")
    axis.set_ylim(0, 1.02)
    axis.legend()


def classification_figure(scores: dict[str, Any]) -> Figure:
    """BLISS star/galaxy accuracy against true SNR."""
    figure, axis = plt.subplots(figsize=(6, 4), constrained_layout=True)
    curve = scores["bliss"]["classification_by_snr"]
    x = _centres(curve["edges"], log=True)
    y = np.asarray(curve["accuracy"], float)
    keep = np.isfinite(y)
    axis.plot(x[keep], y[keep], **METHOD_STYLES["bliss"])
    axis.axhline(0.9, color="grey", linestyle=":", label="0.9")
    axis.set_xscale("log")
    axis.set_xlim(2, 1000)
    axis.set_xlabel("true SNR")
    axis.set_ylabel("star/galaxy accuracy (matched sources)")
    axis.set_ylim(0.4, 1.02)
    axis.grid(alpha=0.3)
    axis.legend()
    return figure


def _residual_band(axis: plt.Axes, stats: dict[str, Any], style: dict[str, Any], label: str) -> None:
    x = _centres(stats["edges"], log=True)
    median = np.asarray(stats["bin_median"], float)
    scatter = np.asarray(stats["bin_scatter"], float)
    keep = np.isfinite(median) & np.isfinite(scatter) & (np.asarray(stats["bin_count"]) >= 5)
    axis.plot(x[keep], median[keep], color=style["color"], marker=style["marker"], label=f"{label} median")
    axis.fill_between(
        x[keep],
        (median - scatter)[keep],
        (median + scatter)[keep],
        color=style["color"],
        alpha=0.2,
        label=f"{label} median +- robust scatter",
    )


def _inverse_snr_bound(axis: plt.Axes, label: str) -> None:
    """The curves +-1/SNR."""
    snr = np.geomspace(3, 500, 100)
    axis.plot(snr, 1 / snr, color="black", linestyle="--", label=label)
    axis.plot(snr, -1 / snr, color="black", linestyle="--")


def _residual_axes(axis: plt.Axes, ylabel: str) -> None:
    """Zero line, log SNR axis and labels of a residual figure."""
    axis.axhline(0, color="grey", linewidth=0.5)
    axis.set_xscale("log")
    axis.set_xlim(2, 1000)
    axis.set_xlabel("true SNR")
    axis.set_ylabel(ylabel)
    axis.set_ylim(-0.6, 0.6)
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")


def flux_residual_figure(scores: dict[str, Any], methods: tuple[str, ...]) -> Figure:
    """Relative flux residuals against true SNR with the Cramer-Rao bound."""
    figure, axis = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for method in methods:
        _residual_band(
            axis, scores[method]["flux_residual"], METHOD_STYLES[method], METHOD_STYLES[method]["label"]
        )
    _inverse_snr_bound(axis, "Cramer-Rao bound +-1/SNR")
    _residual_axes(axis, "(F_est - F_true) / F_true")
    return figure


def ellipticity_figure(scores: dict[str, Any]) -> Figure:
    """BLISS disk-ellipticity residuals of galaxies against true SNR."""
    figure, axis = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    styles = {"e1": {"color": "tab:blue", "marker": "o"}, "e2": {"color": "tab:purple", "marker": "D"}}
    for component, stats in scores["bliss"]["ellipticity_residual"].items():
        _residual_band(axis, stats, styles[component], f"BLISS {component}")
    # The Cramer-Rao bound of a shear-like ellipticity component of a Gaussian galaxy measured
    # without PSF is about 1/SNR (Bernstein & Jarvis 2002: 2/SNR for the distortion (a^2-b^2)/(a^2+b^2),
    # twice this one); a PSF only raises it.
    _inverse_snr_bound(axis, "Cramer-Rao bound +-1/SNR (no PSF)")
    axis.axhline(0.1, color="grey", linestyle=":", label="scatter target 0.10")
    axis.axhline(-0.1, color="grey", linestyle=":")
    _residual_axes(axis, "e_est - e_true (disk, |e| = (1-q)/(1+q))")
    return figure


def calibration_figure(calibration: dict[str, Any]) -> Figure:
    """Reliability diagram, interval coverage against nominal, PIT histograms."""
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.5), constrained_layout=True)
    table = calibration["detection_reliability"]
    prob = np.asarray(table["mean_prob"], float)
    frequency = np.asarray(table["observed_frequency"], float)
    keep = np.isfinite(prob) & np.isfinite(frequency)
    left.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    left.plot(
        prob[keep],
        frequency[keep],
        marker="o",
        color="tab:blue",
        label=f"BLISS tiles (ECE {calibration['detection_ece']:.4f}; "
        f"{calibration['detection_ece_prob_above_0.05']:.3f} over p >= 0.05)",
    )
    left.set_xlabel("predicted detection probability of a tile")
    left.set_ylabel("fraction of tiles holding a true source")
    left.legend()
    left.grid(alpha=0.3)

    nominal = np.array([0.68, 0.95])
    for name, label, marker, color, size in (
        ("flux", "flux", "o", "tab:blue", 12),
        ("position", "position (x and y)", "s", "tab:red", 7),
    ):
        observed = [calibration[f"{name}_coverage68"], calibration[f"{name}_coverage95"]]
        middle.plot(
            nominal, observed, marker=marker, color=color, linestyle="none", markersize=size, label=label
        )
    middle.plot([0.5, 1.0], [0.5, 1.0], color="grey", linestyle="--", label="nominal")
    middle.fill_between([0.5, 1.0], [0.45, 0.95], [0.55, 1.05], color="grey", alpha=0.15, label="+-5 points")
    middle.set_xlabel("nominal coverage of the central interval")
    middle.set_ylabel("fraction of true values inside")
    middle.set_xlim(0.55, 1.0)
    middle.set_ylim(0.45, 1.02)
    middle.legend()
    middle.grid(alpha=0.3)

    for name, color in (("flux_pit", "tab:blue"), ("position_pit", "tab:red")):
        histogram = calibration[name]
        edges = np.asarray(histogram["edges"], float)
        right.stairs(
            np.asarray(histogram["density"], float),
            edges,
            color=color,
            linewidth=2,
            label=f"{name.split('_')[0]} (chi2 p = {histogram['p_value']:.2g})",
        )
    right.axhline(1.0, color="grey", linestyle="--", label="uniform")
    right.set_xlabel("PIT = posterior CDF at the truth")
    right.set_ylabel("density (1 = flat)")
    right.set_ylim(0, None)
    right.legend()
    return figure


def separation_sweep_figure(sweep: list[dict[str, float]], psf_fwhm_pix: float) -> Figure:
    """The two-galaxy sweep: second-source detection probability and flux residuals against separation."""
    separation = np.array([row["separation_pix"] for row in sweep])
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    left.plot(
        separation, [row["second_detection_prob"] for row in sweep], marker="o", label="detection probability"
    )
    left.plot(
        separation,
        [row["second_found_fraction"] for row in sweep],
        marker="s",
        label="found (prob > 0.5, 1.5 px)",
    )
    left.set_ylabel("second (fainter, smaller) galaxy")
    left.set_ylim(-0.02, 1.02)
    for name, label in (
        ("first_flux_residual_median", "first galaxy"),
        ("second_flux_residual_median", "second galaxy"),
    ):
        right.plot(separation, [row[name] for row in sweep], marker="o", label=f"{label}: median")
    right.axhline(0, color="grey", linewidth=0.5)
    right.set_ylabel("(F_est - F_true) / F_true")
    for axis in (left, right):
        axis.axvline(psf_fwhm_pix, color="grey", linestyle=":", label=f"PSF FWHM {psf_fwhm_pix:.1f} px")
        axis.set_xlabel('separation (pixels, 0.2"/px)')
        axis.grid(alpha=0.3)
        axis.legend()
    return figure


def tile_position_figure(detection_prob: dict[str, float]) -> Figure:
    """Detection probability of isolated SNR 10-30 stars at tile centres, edges and corners."""
    figure, axis = plt.subplots(figsize=(6, 4), constrained_layout=True)
    names = list(detection_prob)
    axis.bar(
        names, [detection_prob[name] for name in names], color="tab:blue", label="BLISS (posterior samples)"
    )
    axis.set_xlabel("star position within its tile")
    axis.set_ylabel("detection probability (within 1 px)")
    axis.set_ylim(min(detection_prob.values()) - 0.1, 1.0)
    axis.legend()
    return figure


def variations_figure(all_scores: dict[str, dict[str, Any]], methods: tuple[str, ...]) -> Figure:
    """F1 of every method in every variation."""
    figure, axis = plt.subplots(figsize=(9, 4), constrained_layout=True)
    names = list(all_scores)
    values = {method: np.array([all_scores[name][method]["f1"] for name in names]) for method in methods}
    _grouped_f1_bars(axis, names, values)
    axis.set_xlabel("variation (PSF FWHM in arcsec, density relative to the prior)")
    return figure


def example_scene_figure(
    example: dict[str, np.ndarray],
    truth: dict[str, np.ndarray],
    estimates: dict[str, dict[str, np.ndarray]],
    samples: list[tuple[np.ndarray, np.ndarray]],
) -> Figure:
    """One scene in noise units with true sources, each method's detections and BLISS posterior samples."""
    figure, axis = plt.subplots(figsize=(8, 8), constrained_layout=True)
    image = example["image"] / np.sqrt(np.clip(example["variance"], 1e-30, None))
    shown = axis.imshow(np.arcsinh(image), origin="lower", cmap="gray_r", interpolation="nearest")
    figure.colorbar(shown, ax=axis, shrink=0.8, label="asinh(image / noise)")
    sample_x = np.concatenate([x for x, _ in samples]) if samples else np.zeros(0)
    sample_y = np.concatenate([y for _, y in samples]) if samples else np.zeros(0)
    axis.scatter(
        sample_x,
        sample_y,
        s=4,
        color="tab:cyan",
        alpha=0.5,
        label=f"BLISS posterior samples ({len(samples)})",
    )
    axis.scatter(
        truth["x"], truth["y"], s=90, facecolors="none", edgecolors="red", linewidths=1.2, label="truth"
    )
    markers = {"bliss": "x", "sep": "+", "photutils": "1"}
    for method, found in estimates.items():
        style = METHOD_STYLES[method]
        axis.scatter(
            found["x"], found["y"], s=60, marker=markers[method], color=style["color"], label=style["label"]
        )
    axis.set_xlabel("x (pixels)")
    axis.set_ylabel("y (pixels)")
    axis.legend(loc="upper right", fontsize="small", framealpha=0.8)
    return figure
