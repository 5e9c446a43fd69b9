"""``bliss-bench deblend``: deblended fluxes and shapes of isolated and blended galaxies, BLISS vs SEP.

Held-out 64 x 64 scenes at the model's conditions hold either one galaxy or a
pair separated by 1-3 PSF FWHM, with the same distribution of fluxes and
shapes, so the flux scatter of blended galaxies can be compared with that of
isolated ones of the same SNR.  BLISS detects with `infer_frame` (point
estimates), models every source from its posterior estimate and splits the
image among the models (`deblend_sources`); galaxies are rendered by the
model's galaxy autoencoder when it has one (`--galaxy-model`).  SEP (the
science suite's settings, Kron fluxes of its segmentation deblending) runs on
the same images.  Ellipticities are the GalSim HSM moments of the deblended
images against those of the true galaxies drawn alone without noise
(``bliss_e_scatter_snr20``); the encoder's posterior bulge+disk shapes are
compared too (``bliss_posterior_e_scatter_snr20``).  To tell detection from
modelling, the pairs' BLISS residuals are also split by whether both galaxies
were found (``bliss_pair_both_found``, ``bliss_pair_one_found``), and the
same split of each image with the true galaxies as models gives the method's
floor (``truth_models_*``); ``--fit-from-truth`` adds the model fit started
at the true galaxies (``truth_start_prior_*``: the default prior centred on
them, what a perfect encoder would give the fit; ``truth_start_wide_*``: a
prior ten times wider, about what the pixels alone determine).  A sweep places a second
galaxy (half as bright, two thirds the size) at 1-10 pixels from a first one.
The autoencoder's reconstruction is checked on held-out isolated galaxies
drawn from the model's prior (``ae_chi2_median``: median reduced chi^2 at
SNR >= 10).
"""

from __future__ import annotations

__all__ = ["DESCRIPTION", "add_arguments", "run"]

import argparse
import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..baselines import run_sep
from ..deblend import (
    DeblendedSources,
    ModelFitConfig,
    SourceModels,
    fit_source_models,
    measure_deblended,
    render_source_models,
)
from ..io import BlissModel, load_default_model
from ..metrics import (
    ellipticity_from_shape,
    match_sources,
    robust_scatter,
    robust_scatter_stderr,
    source_snr_and_blendedness,
)
from ..network import GalaxyAutoencoder, reconstruction_chi2
from ..simulation import (
    ImageSimulator,
    SimulatorConfig,
    SourcePrior,
    simulate_galaxy_stamps,
)
from ..survey import SurveyConditions
from ..training import galaxy_stamp_snr
from ..validate import (
    DEFAULT_MODEL_FIT,
    MATCH_RADIUS_PIX,
    PAIR_SCENE_SIZE,
    deblend_and_measure,
    disk_galaxies,
    half_found_separation_fwhm,
    measure_scene,
    run_separation_sweep,
    scene_catalog,
)

DESCRIPTION = "deblended flux and shape of isolated vs blended galaxies, BLISS vs SEP; separation sweep"
SCENE_SIZE = PAIR_SCENE_SIZE
TRUTH_START_FITS = {
    "prior": DEFAULT_MODEL_FIT,
    "wide": dataclasses.replace(
        DEFAULT_MODEL_FIT,
        position_sigma_pix=10 * DEFAULT_MODEL_FIT.position_sigma_pix,
        log_hlr_sigma=10 * DEFAULT_MODEL_FIT.log_hlr_sigma,
        disk_frac_logit_sigma=10 * DEFAULT_MODEL_FIT.disk_frac_logit_sigma,
        axis_ratio_logit_sigma=10 * DEFAULT_MODEL_FIT.axis_ratio_logit_sigma,
    ),
}
"""``--fit-from-truth``: the fit started at the true galaxies with the default prior centred on them
(what a perfect encoder would give the fit), and with priors ten times wider (about the maximum
likelihood: what the pixels alone determine)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the deblend suite."""
    parser.add_argument("--model", type=Path, default=None, help="model file (default: the packaged model)")
    parser.add_argument(
        "--n-scenes", type=int, default=None, help="scenes of each kind (default 300, quick 60)"
    )
    parser.add_argument(
        "--sweep-trials",
        type=int,
        default=None,
        help="pairs per separation in the sweep (default 40, quick 10)",
    )
    parser.add_argument(
        "--galaxy-model",
        choices=("autoencoder", "parametric"),
        default="parametric",
        help="how galaxies are modelled for deblending (default: parametric, as BlissDeblendMeasureTask)",
    )
    parser.add_argument(
        "--no-model-fit",
        action="store_true",
        help="deblend with the encoder's estimates, without fitting the blended sources' models to the image",
    )
    parser.add_argument(
        "--fit-from-truth",
        action="store_true",
        help="also fit the true galaxies of every scene, started at the truth (the fit's floor where "
        "detection and starting estimates are perfect)",
    )
    parser.add_argument(
        "--ae-stamps",
        type=int,
        default=None,
        help="held-out isolated galaxies for ae_chi2_median (default 4000, quick 1000)",
    )


def _truth_models(
    where: np.ndarray, values: dict[str, np.ndarray], fwhm_pix: float, conditions: SurveyConditions
) -> SourceModels:
    """Noiseless models of a scene's true galaxies on their own stamps."""
    fwhm = torch.full((len(where),), fwhm_pix)
    return render_source_models(scene_catalog([where], [values]), fwhm, conditions, SCENE_SIZE, SCENE_SIZE)


def _fit_from_truth(
    where: np.ndarray,
    values: dict[str, np.ndarray],
    fwhm_pix: float,
    conditions: SurveyConditions,
    image: torch.Tensor,
    variance: torch.Tensor,
    config: ModelFitConfig,
) -> dict[str, np.ndarray]:
    """Deblended measurements of a scene whose true galaxies were fitted to it, started (and their
    prior centred) at the truth."""
    fwhm = torch.full((len(where),), fwhm_pix)
    fitted, _ = fit_source_models(
        scene_catalog([where], [values]), fwhm, conditions, image, variance, config=config
    )
    models = render_source_models(fitted, fwhm, conditions, SCENE_SIZE, SCENE_SIZE)
    return deblend_and_measure(image, variance, models)


def _true_moments(models: SourceModels, conditions: SurveyConditions) -> dict[str, np.ndarray]:
    """Adaptive moments of each true galaxy of a scene drawn alone without noise (``models`` from
    `_truth_models`; the reference of the deblended images' moments: same PSF, pixels and stamps)."""
    alone = DeblendedSources(
        models.models,
        torch.zeros_like(models.models),
        models,
        torch.ones_like(models.models, dtype=torch.bool),
    )
    return measure_deblended(alone, conditions.background_noise_njy)


def _dominant_ellipticity(values: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Ellipticity of the component holding most of the flux (disk if disk_frac >= 0.5)."""
    q = np.where(values["disk_frac"] >= 0.5, values["disk_q"], values["bulge_q"])
    return ellipticity_from_shape(np.clip(q, 1e-3, 1.0), values["position_angle_rad"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the suite; returns the JSON results plus a one-line ``summary``."""
    start = time.perf_counter()
    model = BlissModel.load(args.model) if args.model is not None else load_default_model()
    autoencoder = None
    if args.galaxy_model == "autoencoder":
        autoencoder = model.require_autoencoder("bliss-bench deblend --galaxy-model autoencoder")
    conditions = model.conditions
    fit = None if args.no_model_fit else DEFAULT_MODEL_FIT
    n_scenes = args.n_scenes or (60 if args.quick else 300)
    n_trials = args.sweep_trials or (10 if args.quick else 40)
    rng = np.random.default_rng(args.seed)
    fwhm_arcsec = conditions.psf_fwhm_arcsec
    fwhm_pix = fwhm_arcsec / conditions.pixel_scale_arcsec
    simulator = ImageSimulator(
        conditions,
        model.prior,
        SimulatorConfig(image_height=SCENE_SIZE, image_width=SCENE_SIZE),
        device="cpu",
    )
    depth_njy = 10 ** ((31.4 - conditions.point_source_depth_mag()) / 2.5)
    flux_range = (4.0 * depth_njy, 60.0 * depth_njy)  # roughly SNR 20-300 for compact galaxies
    centre = (SCENE_SIZE - 1) / 2

    positions, properties, kinds = [], [], []
    for kind in ("isolated", "pair"):
        for _ in range(n_scenes):
            if kind == "isolated":
                where = np.array([[centre, centre]]) + rng.uniform(-0.5, 0.5, (1, 2))
                values = disk_galaxies(rng, 1, flux_range)
            else:
                separation = rng.uniform(1.0, 3.0) * fwhm_pix
                angle = rng.uniform(0, 2 * math.pi)
                offset = 0.5 * separation * np.array([math.cos(angle), math.sin(angle)])
                where = (
                    np.array([[centre, centre]])
                    + np.stack([offset, -offset])
                    + rng.uniform(-0.5, 0.5, (1, 2))
                )
                values = disk_galaxies(rng, 2, flux_range)
            positions.append(where)
            properties.append(values)
            kinds.append(kind)
    truth = scene_catalog(positions, properties)
    generator = torch.Generator().manual_seed(args.seed)
    batch = simulator.simulate_catalog(truth, generator, torch.full((len(positions),), fwhm_arcsec))
    true_snr, _ = source_snr_and_blendedness(
        truth, conditions.psf(np.full(len(positions), fwhm_arcsec)), conditions
    )
    snr_rows = [true_snr[index, : len(where)] for index, where in enumerate(positions)]

    # Besides the headline residuals, the pairs split by whether BLISS found both galaxies, and
    # the same split of the observed image with the true galaxies as models (the floor of the
    # method when detection and models are perfect).
    residuals: dict[str, list[float]] = {
        "bliss_isolated": [],
        "bliss_pair": [],
        "bliss_pair_both_found": [],
        "bliss_pair_one_found": [],
        "sep_isolated": [],
        "sep_pair": [],
        "truth_models_isolated": [],
        "truth_models_pair": [],
    }
    e_residuals: list[float] = []
    posterior_e_residuals: list[float] = []
    hsm_failures = 0
    for index, kind in enumerate(kinds):
        image, variance = batch.image[index], batch.variance[index]
        true_flux = properties[index]["flux_njy"]
        where = positions[index]
        bliss = measure_scene(model, image, variance, fwhm_pix, autoencoder, fit=fit)
        match = match_sources(where[:, 0], where[:, 1], bliss["x"], bliss["y"], MATCH_RADIUS_PIX)
        ok = ~bliss["flag_no_model"][match.est_index]
        found = list(bliss["flux_njy"][match.est_index][ok] / true_flux[match.true_index][ok] - 1)
        residuals[f"bliss_{kind}"] += found
        if kind == "pair":
            both = len(match.true_index) == 2
            residuals["bliss_pair_both_found" if both else "bliss_pair_one_found"] += found
        truth_models = _truth_models(where, properties[index], fwhm_pix, conditions)
        with_truth = deblend_and_measure(image, variance, truth_models)
        residuals[f"truth_models_{kind}"] += list(with_truth["flux_njy"] / true_flux - 1)
        if args.fit_from_truth:
            for label, config in TRUTH_START_FITS.items():
                fitted = _fit_from_truth(
                    where, properties[index], fwhm_pix, conditions, image, variance, config
                )
                residual = fitted["flux_njy"] / true_flux - 1
                residuals.setdefault(f"truth_start_{label}_{kind}", []).extend(residual)
        hsm_failures += int(bliss["flag_moments_failed"][match.est_index].sum())
        bright = snr_rows[index][match.true_index] >= 20
        if bright.any():
            est_e1, est_e2 = _dominant_ellipticity({k: v[match.est_index][bright] for k, v in bliss.items()})
            true_e1, true_e2 = _dominant_ellipticity(
                {k: v[match.true_index][bright] for k, v in properties[index].items()}
            )
            posterior_e_residuals += list(est_e1 - true_e1) + list(est_e2 - true_e2)
            true_moments = _true_moments(truth_models, conditions)
            chosen_true, chosen_est = match.true_index[bright], match.est_index[bright]
            measured = (
                ~bliss["flag_moments_failed"][chosen_est] & ~true_moments["flag_moments_failed"][chosen_true]
            )
            for component in ("e1", "e2"):
                e_residuals += list(
                    bliss[component][chosen_est][measured] - true_moments[component][chosen_true][measured]
                )
        sep = run_sep(image.numpy(), variance.numpy())
        sep_match = match_sources(where[:, 0], where[:, 1], sep.x, sep.y, MATCH_RADIUS_PIX)
        residuals[f"sep_{kind}"] += list(
            sep.flux_njy[sep_match.est_index] / true_flux[sep_match.true_index] - 1
        )

    scatter = {name: robust_scatter(np.asarray(values)) for name, values in residuals.items()}
    scatter_stderr = {name: robust_scatter_stderr(np.asarray(values)) for name, values in residuals.items()}
    # The pairs' and the isolated galaxies' scatters come from different scenes: independent errors.
    ratio_stderr = (scatter["bliss_pair"] / scatter["bliss_isolated"]) * math.hypot(
        scatter_stderr["bliss_pair"] / scatter["bliss_pair"],
        scatter_stderr["bliss_isolated"] / scatter["bliss_isolated"],
    )
    bias = {name: float(np.median(values)) if values else float("nan") for name, values in residuals.items()}
    sweep = run_separation_sweep(model, autoencoder, simulator, rng, generator, n_trials, fit)
    ae_chi2 = None
    if autoencoder is not None:
        ae_chi2 = _autoencoder_chi2(
            model, autoencoder, args.ae_stamps or (1000 if args.quick else 4000), args.seed
        )
    results: dict[str, Any] = {
        "galaxy_model": args.galaxy_model,
        "model_fit": fit is not None,
        **(ae_chi2 or {}),
        "n_scenes_per_kind": n_scenes,
        "match_radius_pix": MATCH_RADIUS_PIX,
        "flux_scatter": scatter,
        "flux_scatter_stderr": scatter_stderr,
        "flux_bias": bias,
        "n_matched": {name: len(values) for name, values in residuals.items()},
        "bliss_isolated_flux_scatter": scatter["bliss_isolated"],
        "bliss_blend_flux_scatter": scatter["bliss_pair"],
        "blend_flux_scatter_ratio": scatter["bliss_pair"] / scatter["bliss_isolated"],
        "blend_flux_scatter_ratio_stderr": ratio_stderr,
        "sep_isolated_flux_scatter": scatter["sep_isolated"],
        "sep_blend_flux_scatter": scatter["sep_pair"],
        "bliss_pair_both_found_flux_scatter": scatter["bliss_pair_both_found"],
        "bliss_pair_one_found_flux_scatter": scatter["bliss_pair_one_found"],
        "truth_models_blend_flux_scatter": scatter["truth_models_pair"],
        **{
            f"truth_start_{label}_blend_flux_scatter_ratio": scatter[f"truth_start_{label}_pair"]
            / scatter[f"truth_start_{label}_isolated"]
            for label in TRUTH_START_FITS
            if args.fit_from_truth
        },
        "bliss_e_scatter_snr20": robust_scatter(np.asarray(e_residuals)),
        "n_e_residuals": len(e_residuals),
        "bliss_posterior_e_scatter_snr20": robust_scatter(np.asarray(posterior_e_residuals)),
        "hsm_failures": hsm_failures,
        "separation_sweep": sweep,
        "both_found_half_separation_fwhm": half_found_separation_fwhm(sweep),
        "elapsed_s": time.perf_counter() - start,
    }
    results["summary"] = (
        f"deblend: {n_scenes} isolated + {n_scenes} pair scenes; blend_flux_scatter_ratio = "
        f"{results['blend_flux_scatter_ratio']:.2f} +- {ratio_stderr:.2f}, "
        f"bliss_blend_flux_scatter = {scatter['bliss_pair']:.3f}, "
        f"sep_blend_flux_scatter = {scatter['sep_pair']:.3f}, bliss_e_scatter_snr20 = "
        f"{results['bliss_e_scatter_snr20']:.3f}, both_found_half_separation_fwhm = "
        f"{results['both_found_half_separation_fwhm']:.2f}"
        + ("" if ae_chi2 is None else f", ae_chi2_median = {ae_chi2['ae_chi2_median']:.3f}")
    )
    return results


_AE_CHI2_SNR_BINS = (10.0, 20.0, 50.0, 100.0, math.inf)


def _autoencoder_chi2(
    model: BlissModel, autoencoder: GalaxyAutoencoder, n_stamps: int, seed: int
) -> dict[str, Any]:
    """Reduced chi^2 of the autoencoder's reconstructions of held-out isolated galaxies.

    The galaxies follow the model's prior (fluxes from its Pareto law above twice the faint limit,
    shapes from its size-magnitude relation) under PSFs across its training range; the seed is
    offset from the training seeds' range so that the stamps are held out.
    """
    prior = SourcePrior(model.prior, model.conditions)
    fwhm_range = model.simulator.psf_fwhm_range_arcsec or (model.conditions.psf_fwhm_arcsec,) * 2
    generator = torch.Generator().manual_seed(7_000_000_000 + seed)
    chi2, snr = [], []
    for start in range(0, n_stamps, 250):
        batch = simulate_galaxy_stamps(
            prior,
            (float(fwhm_range[0]), float(fwhm_range[1])),
            autoencoder.config.stamp_size,
            min(250, n_stamps - start),
            generator,
            pareto_fraction=1.0,
        )
        chi2.append(reconstruction_chi2(autoencoder, batch, model.conditions))
        snr.append(galaxy_stamp_snr(batch))
    chi2_all, snr_all = torch.cat(chi2).numpy(), torch.cat(snr).numpy()
    by_snr = []
    for low, high in zip(_AE_CHI2_SNR_BINS[:-1], _AE_CHI2_SNR_BINS[1:], strict=True):
        chosen = (snr_all >= low) & (snr_all < high)
        by_snr.append(
            {
                "snr_min": low,
                "snr_max": high,
                "n": int(chosen.sum()),
                "chi2_median": float(np.median(chi2_all[chosen])) if chosen.any() else float("nan"),
            }
        )
    bright = snr_all >= 10
    return {
        "ae_chi2_median": float(np.median(chi2_all[bright])),
        "ae_chi2_n_galaxies": int(bright.sum()),
        "ae_chi2_by_snr": by_snr,
    }
