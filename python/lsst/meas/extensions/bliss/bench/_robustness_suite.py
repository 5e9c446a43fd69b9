"""``bliss-bench robustness``: how a model's inputs hold up on real skies.

* ``flux_bias_by_variance``: isolated stars and galaxies on a grid (32 pixels apart), observed with
  the variance plane of each convention of `VARIANCE_CASES` (the training one, one computed with
  half or twice the gain, the sky alone as in coadds, and a 15 s exposure); per convention and true
  SNR bin (`SNR_BINS`), the median estimated over true flux of the matched sources.
  ``max_abs_flux_bias_variance`` is the largest ``|median - 1|`` of them, and
  ``max_abs_flux_change_vs_training_variance`` the largest change of a median against the training
  convention's in the same bin (the convention's own effect, without the model's bias). The same
  medians for stars and for galaxies alone (``median_ratio_stars``, ``median_ratio_galaxies``) give
  ``max_abs_flux_bias_variance_stars`` and ``_galaxies``, and the median of the errors in units of
  each source's posterior standard deviation (``median_z_galaxies``, ``log(estimate / truth)`` over
  the relative flux error) says whether a bias is within the posterior's own width.
* ``bands``: for each LSST band, BLISS and SEP on held-out scenes at that band's nominal conditions
  (the figures of ``bliss-bench science``).  A band the model was not trained for is not scored:
  the model refuses it (as the pipeline does), and its entry says so, with null figures.
* ``ood_refused`` and ``in_range_refused``: the fractions of out-of-range cases (pixel scales
  0.168 and 0.26"/px, a PSF FWHM of 2.5", noise 4 mag deeper than the deepest trained, an unknown
  band) and of in-range ones (each trained band at its nominal and at the edges of its trained
  PSF and depth ranges) that the model's limits (`out_of_range_problems`, `FrameConfig`'s
  default tolerances) refuse.
* ``units_max_rel_diff``: the catalog of an exposure stored in instrumental counts with its
  photometric calibration against that of its nJy twin (through the pipeline task).
"""

from __future__ import annotations

__all__ = [
    "DESCRIPTION",
    "SNR_BINS",
    "VARIANCE_CASES",
    "add_arguments",
    "flux_bias_by_variance",
    "max_abs_bias",
    "run",
]

import argparse
import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..catalog import FullCatalog
from ..inference import (
    FrameConfig,
    InputConditions,
    estimate_catalog,
    out_of_range_problems,
    trained_noise_range_njy,
    trained_psf_fwhm_range_arcsec,
)
from ..io import BlissModel, load_default_model
from ..metrics import match_sources, source_snr_and_blendedness
from ..simulation import ImageSimulator, SimulatorConfig
from ..survey import SurveyConditions, mag_to_flux_njy
from ..validate import catalog_rows, disk_galaxies, scene_catalog
from ._science_suite import SCENE_SIZE, held_out_scene_figures

DESCRIPTION = (
    "Real-sky inputs: flux bias per variance-plane convention, per-band detection and calibration, "
    "refusal of out-of-range inputs, counts against nJy"
)

VARIANCE_CASES: dict[str, tuple[str, float | None]] = {
    "training": ("full", None),
    "gain_x0.5": ("gain_x0.5", None),
    "gain_x2": ("gain_x2", None),
    "sky_only": ("sky_only", None),
    "exposure_15s": ("full", 15.0),
}
"""Case name -> (`variance_convention`, exposure time in seconds or None for the conditions')."""

SNR_BINS: dict[str, tuple[float, float]] = {
    "10-30": (10.0, 30.0),
    "30-100": (30.0, 100.0),
    "100-300": (100.0, 300.0),
    ">300": (300.0, math.inf),
}
"""True-SNR bins of ``flux_bias_by_variance``."""

LSST_BANDS: tuple[str, ...] = ("u", "g", "r", "i", "z", "y")
GRID_SPACING_PIX = 32
"""Distance between the isolated sources, pixels (several PSF FWHM and galaxy sizes)."""
MATCH_RADIUS_PIX = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the robustness suite."""
    parser.add_argument("--model", type=Path, default=None, help="model file (default: the packaged model)")
    parser.add_argument(
        "--flux-scenes",
        type=int,
        default=None,
        help=f"{SCENE_SIZE}x{SCENE_SIZE} scenes of isolated sources per variance case (default 40, quick 8)",
    )
    parser.add_argument(
        "--band-scenes",
        type=int,
        default=None,
        help="held-out scenes per trained band (default 100, quick 16)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="scenes per inference batch")


def isolated_sources(
    n_scenes: int, conditions: SurveyConditions, rng: np.random.Generator
) -> tuple[FullCatalog, torch.Tensor]:
    """Scenes of isolated stars and disk galaxies on a grid, fluxes log-uniform from about SNR 7 to
    SNR 3000 at ``conditions``; half of them stars.

    Returns
    -------
    catalog, psf_fwhm_arcsec
        The scenes (`SCENE_SIZE` pixels a side) and their PSF FWHM (the nominal), shape (B,).
    """
    centres = np.arange(GRID_SPACING_PIX / 2, SCENE_SIZE, GRID_SPACING_PIX)
    grid = np.stack(np.meshgrid(centres, centres), axis=-1).reshape(-1, 2)
    # The flux of a point source at the 5-sigma depth, sky-limited.
    flux_snr5 = float(mag_to_flux_njy(conditions.point_source_depth_mag(5.0)))
    # Up to about SNR 3000 for a point source, whose own Poisson noise dominates there.
    flux_range = (1.4 * flux_snr5, 2000.0 * flux_snr5)
    positions, properties = [], []
    for _ in range(n_scenes):
        positions.append(grid + rng.uniform(-2.0, 2.0, grid.shape))
        values = disk_galaxies(rng, len(grid), flux_range)
        values["is_galaxy"] = (rng.uniform(size=len(grid)) < 0.5).astype(float)
        properties.append(values)
    catalog = dataclasses.replace(scene_catalog(positions, properties), height=SCENE_SIZE, width=SCENE_SIZE)
    return catalog, torch.full((n_scenes,), conditions.psf_fwhm_arcsec)


def flux_bias_by_variance(
    model: BlissModel, n_scenes: int, batch_size: int, seed: int
) -> dict[str, dict[str, dict[str, float]]]:
    """Median estimated over true flux of isolated sources per variance case and true-SNR bin.

    The same sources are observed in every case (with fresh noise); the true SNR is that of the
    case's exposure.

    Returns
    -------
    figures
        ``{case: {bin: {"median_ratio": ..., "n": ..., "median_ratio_stars": ..., "n_stars": ...,
        "median_ratio_galaxies": ..., "n_galaxies": ..., "median_z_stars": ...,
        "median_z_galaxies": ...}}}`` for `VARIANCE_CASES` and `SNR_BINS` (NaN where a bin holds no
        matched source of the kind).
    """
    nominal = model.conditions
    rng = np.random.default_rng(seed)
    sizes = [min(batch_size, n_scenes - first) for first in range(0, n_scenes, batch_size)]
    scenes = [isolated_sources(size, nominal, rng) for size in sizes]
    tile = model.encoder.config.tile_size
    config = SimulatorConfig(image_height=SCENE_SIZE, image_width=SCENE_SIZE, tile_size=tile)
    figures: dict[str, dict[str, dict[str, float]]] = {}
    for index, (case, (convention, exposure_s)) in enumerate(VARIANCE_CASES.items()):
        conditions = nominal if exposure_s is None else nominal.replace(exposure_time_s=exposure_s)
        simulator = ImageSimulator(conditions, model.prior, config, device="cpu")
        generator = torch.Generator().manual_seed(seed + 1 + index)
        ratios, snrs, galaxies, relative_errors = [], [], [], []
        for part, fwhm in scenes:
            batch = simulator.simulate_catalog(part, generator, fwhm, convention)
            snr, _ = source_snr_and_blendedness(
                part, conditions.psf(batch.psf_fwhm_arcsec.numpy()), conditions, batch.noiseless
            )
            estimate = estimate_catalog(
                model.encoder,
                batch.image,
                batch.variance,
                batch.mask,
                batch.psf_fwhm_arcsec / nominal.pixel_scale_arcsec,
                nominal.pixel_scale_arcsec,
            )
            for image in range(part.batch_size):
                truth, found = catalog_rows(part, image), catalog_rows(estimate, image)
                match = match_sources(truth["x"], truth["y"], found["x"], found["y"], MATCH_RADIUS_PIX)
                ratios.append(found["flux_njy"][match.est_index] / truth["flux_njy"][match.true_index])
                snrs.append(snr[image, match.true_index])
                galaxies.append(truth["is_galaxy"][match.true_index])
                relative_errors.append(
                    found["flux_err_njy"][match.est_index] / found["flux_njy"][match.est_index]
                )
        ratio, source_snr = np.concatenate(ratios), np.concatenate(snrs)
        is_galaxy = np.concatenate(galaxies).astype(bool)
        z = np.log(ratio) / np.concatenate(relative_errors)
        figures[case] = {}
        for name, (low, high) in SNR_BINS.items():
            inside = (source_snr >= low) & (source_snr < high)
            entry: dict[str, float] = {"median_ratio": _median(ratio[inside]), "n": int(inside.sum())}
            for kind, members in (("stars", inside & ~is_galaxy), ("galaxies", inside & is_galaxy)):
                entry[f"median_ratio_{kind}"] = _median(ratio[members])
                entry[f"n_{kind}"] = int(members.sum())
                entry[f"median_z_{kind}"] = _median(z[members])
            figures[case][name] = entry
    return figures


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if values.size else math.nan


def max_abs_bias(flux: dict[str, dict[str, dict[str, float]]], key: str = "median_ratio") -> float:
    """Largest ``|median - 1|`` of ``key`` over the cases and bins of `flux_bias_by_variance`
    (NaN if every bin is empty)."""
    biases = [abs(item[key] - 1.0) for bins in flux.values() for item in bins.values()]
    return max((value for value in biases if math.isfinite(value)), default=math.nan)


def _refusal_cases(model: BlissModel) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """Out-of-range and in-range cases: name -> (InputConditions, PSF FWHM arcsec, median noise nJy)."""
    nominal = model.conditions
    scale, fwhm, band = nominal.pixel_scale_arcsec, nominal.psf_fwhm_arcsec, nominal.band
    noise = nominal.background_noise_njy
    deepest = trained_noise_range_njy(model)[0]
    low_fwhm, high_fwhm = trained_psf_fwhm_range_arcsec(model)
    out_of_range = {
        "pixel_scale_0.168": (InputConditions(0.168, band), fwhm, noise),
        "pixel_scale_0.26": (InputConditions(0.26, band), fwhm, noise),
        "psf_fwhm_2.5": (InputConditions(scale, band), 2.5, noise),
        "noise_4mag_deeper": (InputConditions(scale, band), fwhm, deepest * 10.0 ** (-0.4 * 4.0)),
        "unknown_band": (InputConditions(scale, "VR"), fwhm, noise),
    }
    in_range: dict[str, tuple] = {"band_unknown": (InputConditions(), fwhm, noise)}
    for trained in model.trained_bands:
        low_noise, high_noise = trained_noise_range_njy(model, trained)
        conditions = model.conditions_for_band(trained)
        in_range.update(
            {
                f"{trained}_nominal": (
                    InputConditions(scale, trained),
                    conditions.psf_fwhm_arcsec,
                    conditions.background_noise_njy,
                ),
                f"{trained}_psf_low": (InputConditions(scale, trained), low_fwhm, low_noise),
                f"{trained}_psf_high": (InputConditions(scale, trained), high_fwhm, high_noise),
                f"{trained}_exposure_15s": (
                    InputConditions(scale * 1.01, trained),
                    conditions.psf_fwhm_arcsec,
                    conditions.replace(exposure_time_s=15.0).background_noise_njy,
                ),
            }
        )
    return out_of_range, in_range


def refusals(model: BlissModel) -> dict[str, Any]:
    """Which out-of-range and in-range cases the model's limits refuse (default tolerances)."""
    frame = FrameConfig()
    tolerances = (frame.pixel_scale_rtol, frame.psf_fwhm_margin_arcsec, frame.depth_margin_mag)
    results: dict[str, Any] = {}
    for label, cases in zip(("ood", "in_range"), _refusal_cases(model), strict=True):
        refused = {}
        for name, (conditions, fwhm_arcsec, noise_njy) in cases.items():
            scale = conditions.pixel_scale_arcsec or model.conditions.pixel_scale_arcsec
            problems = out_of_range_problems(
                model, conditions, (fwhm_arcsec / scale, fwhm_arcsec / scale), noise_njy, *tolerances
            )
            refused[name] = [problem.quantity for problem in problems]
        results[f"{label}_cases"] = refused
        results[f"{label}_refused"] = sum(bool(value) for value in refused.values()) / len(refused)
    return results


def _units_max_rel_diff(model: BlissModel, seed: int) -> float:
    """Counts against nJy through the pipeline task (the Rubin middleware is imported only here)."""
    from ..pipeline.demo import units_max_rel_diff

    conditions = model.conditions
    simulator = ImageSimulator(
        conditions,
        model.prior.without_bright_stars(),
        SimulatorConfig(
            image_height=SCENE_SIZE, image_width=SCENE_SIZE, tile_size=model.encoder.config.tile_size
        ),
        device="cpu",
    )
    batch = simulator.sample(1, seed=seed)
    counts_per_njy = conditions.njy_to_electrons / conditions.gain_e_per_adu
    return units_max_rel_diff(
        model,
        batch.image[0].numpy(),
        batch.variance[0].numpy(),
        float(batch.psf_fwhm_arcsec[0]),
        counts_per_njy,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the suite; returns the JSON results plus a ``summary``."""
    model = BlissModel.load(args.model) if args.model is not None else load_default_model()
    model.require_held_out_seed(args.seed, "--seed")
    flux_scenes = args.flux_scenes or (8 if args.quick else 40)
    band_scenes = args.band_scenes or (16 if args.quick else 100)
    flux = flux_bias_by_variance(model, flux_scenes, args.batch_size, args.seed)
    max_bias = max_abs_bias(flux)
    # What the variance convention alone changes: each case's median against the training convention's
    # in the same SNR bin (the sources and pixels are the same; only the variance plane differs, or the
    # exposure time), apart from the model's own bias, which the absolute figure includes.
    changes = [
        abs(item["median_ratio"] / flux["training"][name]["median_ratio"] - 1.0)
        for case, bins in flux.items()
        if case != "training"
        for name, item in bins.items()
    ]
    max_change = max((value for value in changes if math.isfinite(value)), default=math.nan)
    bands: dict[str, Any] = {}
    scene_prior = model.prior.without_bright_stars()
    for index, band in enumerate(LSST_BANDS):
        if band not in model.trained_bands:
            # The model refuses the band (OutOfTrainedRangeError; the pipeline's IncompatibleModelError).
            bands[band] = {"trained": False, "refused": True}
            continue
        generator = torch.Generator().manual_seed(args.seed + 100 + index)
        figures = held_out_scene_figures(
            model, model.conditions_for_band(band), scene_prior, band_scenes, args.batch_size, generator
        )
        bands[band] = {
            "trained": True,
            "refused": False,
            "n_scenes": band_scenes,
            "f1": figures["bliss_f1"],
            "sep_f1": figures["sep_f1"],
            "recall_snr10": figures["bliss_recall_snr10"],
            "precision_snr10": figures["bliss_precision_snr10"],
            "class_acc_snr10": figures["bliss_class_acc_snr10"],
            "flux_cov68": figures["bliss_flux_cov68"],
        }
    results: dict[str, Any] = {
        "model": str(args.model) if args.model is not None else "packaged default",
        "trained_bands": list(model.trained_bands),
        "input_noise": model.encoder.config.input_noise,
        "flux_scenes": flux_scenes,
        "flux_bias_by_variance": flux,
        "max_abs_flux_bias_variance": max_bias,
        "max_abs_flux_bias_variance_stars": max_abs_bias(flux, "median_ratio_stars"),
        "max_abs_flux_bias_variance_galaxies": max_abs_bias(flux, "median_ratio_galaxies"),
        "max_abs_flux_change_vs_training_variance": max_change,
        "bands": bands,
        "bands_scored": [band for band, entry in bands.items() if entry["trained"]],
        **refusals(model),
        "units_max_rel_diff": _units_max_rel_diff(model, args.seed),
    }
    lines = [
        f"robustness: {case}: "
        + ", ".join(f"SNR {name} {item['median_ratio']:.3f}" for name, item in bins.items())
        for case, bins in flux.items()
    ]
    lines += [
        f"robustness: band {band}: f1 {entry['f1']:.3f} (sep {entry['sep_f1']:.3f}), recall(SNR>=10) "
        f"{entry['recall_snr10']:.3f}, precision(SNR>=10) {entry['precision_snr10']:.3f}, class acc "
        f"{entry['class_acc_snr10']:.3f}, cov68 {entry['flux_cov68']:.3f}"
        if entry["trained"]
        else f"robustness: band {band}: not trained, refused"
        for band, entry in bands.items()
    ]
    lines.append(
        f"max_abs_flux_bias_variance = {max_bias:.3f} (against the training convention: "
        f"{max_change:.3f}; stars {results['max_abs_flux_bias_variance_stars']:.3f}, galaxies "
        f"{results['max_abs_flux_bias_variance_galaxies']:.3f}), ood_refused = {results['ood_refused']:.2f}, "
        f"in_range_refused = {results['in_range_refused']:.2f}, "
        f"units_max_rel_diff = {results['units_max_rel_diff']:.2e}"
    )
    results["summary"] = "\n".join(lines)
    return results
