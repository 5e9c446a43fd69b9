"""``bliss-bench saturation``: detections and deblended fluxes next to saturated stars, BLISS against SEP.

Every LSST detector holds stars far brighter than the galaxies around them:
their cores saturate, the excess charge bleeds along the columns and the
pipeline masks both (``SAT``), so that only the wings reach a measurement.
Each scene here is a detector cut of the demo's size (160 x 128 pixels)
drawn from the model's prior without its added bright stars
(`PriorConfig.without_bright_stars`), with one star of a given magnitude at a random position at
least 24 pixels from the edges, observed with `ImageSimulator.simulate_catalog`
(saturation and bleeding by `observe`) under a PSF drawn from the model's
range.  BLISS (detection and deblending as in the deblend suite and the pipeline task, with
parametric galaxy models or the autoencoder's: ``--galaxy-model``) and
SEP (the science suite's settings, saturated pixels masked) run on the same
images.  Per star magnitude it reports:

* ``star_found``: the fraction of scenes with a detection within
  ``STAR_MATCH_PIX`` of the star, and the median ratio of that detection's
  flux to the star's;
* ``spurious_near_star``: detections per scene within ``NEAR_STAR_PIX`` of
  the star that are neither that detection nor within ``SOURCE_MATCH_PIX`` of
  any true source: fragments of the star's wings;
* ``neighbour_flux``: for true sources with SNR >= 10 at
  ``NEIGHBOUR_RANGE_PIX`` from the star matched one-to-one by a detection,
  the median and robust scatter of (measured flux / true flux - 1), BLISS's
  deblended flux or SEP's Kron flux, and the same for sources farther than
  ``NEIGHBOUR_RANGE_PIX[1]`` (the control).
"""

from __future__ import annotations

__all__ = ["DESCRIPTION", "add_arguments", "run"]

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..baselines import run_sep
from ..catalog import FullCatalog
from ..io import BlissModel, load_default_model
from ..metrics import match_sources, robust_scatter, source_snr_and_blendedness
from ..simulation import ImageSimulator, SimulatorConfig, SourcePrior
from ..survey import DEFAULT_INVALID_MASK_PLANES, invalid_mask_bits, mag_to_flux_njy
from ..validate import measure_scene

DESCRIPTION = "detections and deblended fluxes next to saturated, bleeding stars: BLISS vs SEP"

SCENE_HEIGHT, SCENE_WIDTH = 160, 128
"""Scene size, pixels (the demo's detectors)."""
STAR_MARGIN_PIX = 24
"""Smallest distance of the star from the scene's edges, pixels."""
STAR_MATCH_PIX = 3.0
"""A detection this close to the star (pixels) finds it."""
NEAR_STAR_PIX = 20.0
"""Radius around the star in which unmatched detections count as its fragments, pixels."""
SOURCE_MATCH_PIX = 2.0
"""A detection this close to a true source (pixels) is not spurious; also the one-to-one match radius."""
NEIGHBOUR_RANGE_PIX = (8.0, 32.0)
"""Distances from the star (pixels) of the neighbours whose fluxes are measured; farther ones are the
control."""
METHODS = ("bliss", "sep")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the saturation suite."""
    parser.add_argument("--model", type=Path, default=None, help="model file (default: the packaged model)")
    parser.add_argument(
        "--star-mags",
        type=float,
        nargs="+",
        default=[13.5, 12.0, 15.0],
        help="AB magnitudes of the saturated stars, one set of scenes each; the first gives the headline "
        "figures (default 13.5 12 15: the demo's stars first)",
    )
    parser.add_argument(
        "--n-scenes", type=int, default=None, help="scenes per star magnitude (default 60; quick 15)"
    )
    parser.add_argument(
        "--galaxy-model",
        choices=("autoencoder", "parametric"),
        default="parametric",
        help="how galaxies are modelled for deblending (default: parametric, as BlissDeblendMeasureTask)",
    )


def _star_catalog(flux_njy: float, x: float, y: float, template: FullCatalog) -> FullCatalog:
    """One star at (x, y) with the fields of ``template``."""
    fields = {name: torch.zeros(1, 1, dtype=value.dtype) for name, value in template.fields.items()}
    fields["flux_njy"][0, 0] = flux_njy
    for name in ("disk_q", "bulge_q"):
        fields[name][0, 0] = 1.0
    return FullCatalog(
        template.height,
        template.width,
        torch.ones(1, dtype=torch.int64),
        torch.tensor([[x]]),
        torch.tensor([[y]]),
        fields,
    )


def _sep_catalog(image: torch.Tensor, variance: torch.Tensor, mask: torch.Tensor) -> dict[str, np.ndarray]:
    found = run_sep(image, variance, (mask & invalid_mask_bits(DEFAULT_INVALID_MASK_PLANES)) != 0)
    return {"x": found.x, "y": found.y, "catalog_flux_njy": found.flux_njy, "flux_njy": found.flux_njy}


def _scene_figures(
    found: dict[str, np.ndarray],
    truth: dict[str, np.ndarray],
    star_x: float,
    star_y: float,
    star_flux_njy: float,
) -> dict[str, Any]:
    """Star match, spurious detections near the star and matched sources' flux ratios in one scene."""
    to_star = np.hypot(found["x"] - star_x, found["y"] - star_y)
    nearest = int(np.argmin(to_star)) if to_star.size else -1
    star_found = nearest >= 0 and to_star[nearest] <= STAR_MATCH_PIX
    near_truth = np.zeros(to_star.shape, dtype=bool)
    if truth["x"].size:
        separation = np.hypot(
            found["x"][:, None] - truth["x"][None, :], found["y"][:, None] - truth["y"][None, :]
        )
        near_truth = (separation <= SOURCE_MATCH_PIX).any(axis=1)
    spurious = (to_star <= NEAR_STAR_PIX) & ~near_truth
    if star_found:
        spurious[nearest] = False
    match = match_sources(truth["x"], truth["y"], found["x"], found["y"], SOURCE_MATCH_PIX)
    ratio = found["flux_njy"][match.est_index] / truth["flux_njy"][match.true_index]
    distance = truth["distance_pix"][match.true_index]
    bright = truth["snr"][match.true_index] >= 10
    low, high = NEIGHBOUR_RANGE_PIX
    return {
        "star_found": bool(star_found),
        "star_flux_ratio": float(found["catalog_flux_njy"][nearest] / star_flux_njy)
        if star_found
        else np.nan,
        "spurious": int(spurious.sum()),
        "neighbour_ratio": ratio[bright & (distance >= low) & (distance <= high)],
        "far_ratio": ratio[bright & (distance > high)],
        "n_neighbours_true": int(
            np.sum((truth["snr"] >= 10) & (truth["distance_pix"] >= low) & (truth["distance_pix"] <= high))
        ),
    }


def _summarize(scenes: list[dict[str, Any]]) -> dict[str, Any]:
    found = np.array([scene["star_found"] for scene in scenes])
    star_ratio = np.array([scene["star_flux_ratio"] for scene in scenes])
    neighbour = np.concatenate([scene["neighbour_ratio"] for scene in scenes]) - 1.0
    far = np.concatenate([scene["far_ratio"] for scene in scenes]) - 1.0
    n_true = sum(scene["n_neighbours_true"] for scene in scenes)
    return {
        "star_found_fraction": float(found.mean()),
        "star_flux_ratio_median": float(np.nanmedian(star_ratio)) if found.any() else float("nan"),
        "spurious_near_star_per_scene": float(np.mean([scene["spurious"] for scene in scenes])),
        "neighbour_recall": float(neighbour.size / n_true) if n_true else float("nan"),
        "neighbour_flux_bias": float(np.nanmedian(neighbour)) if neighbour.size else float("nan"),
        "neighbour_flux_scatter": robust_scatter(neighbour) if neighbour.size else float("nan"),
        "far_flux_bias": float(np.nanmedian(far)) if far.size else float("nan"),
        "far_flux_scatter": robust_scatter(far) if far.size else float("nan"),
        "n_neighbours_matched": int(neighbour.size),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the suite; returns the JSON results plus a one-line ``summary``."""
    start = time.perf_counter()
    model = BlissModel.load(args.model) if args.model is not None else load_default_model()
    model.require_held_out_seed(args.seed, "--seed")
    n_scenes = args.n_scenes or (15 if args.quick else 60)
    autoencoder = None
    if args.galaxy_model == "autoencoder":
        autoencoder = model.require_autoencoder("bliss-bench saturation --galaxy-model autoencoder")
    conditions = model.conditions
    tile_size = model.encoder.config.tile_size
    field_prior = SourcePrior(model.prior.without_bright_stars(), conditions, tile_size)
    simulator = ImageSimulator(
        conditions,
        field_prior.config,
        SimulatorConfig(
            image_height=SCENE_HEIGHT,
            image_width=SCENE_WIDTH,
            tile_size=tile_size,
            psf_fwhm_range_arcsec=model.simulator.psf_fwhm_range_arcsec,
        ),
        device="cpu",
    )
    by_mag: dict[str, dict[str, Any]] = {}
    for mag_index, star_mag in enumerate(args.star_mags):
        generator = torch.Generator().manual_seed(args.seed + 1000 * mag_index)
        star_flux = float(mag_to_flux_njy(star_mag))
        scenes: dict[str, list[dict[str, Any]]] = {method: [] for method in METHODS}
        for _ in range(n_scenes):
            field = field_prior.sample(1, SCENE_HEIGHT // tile_size, SCENE_WIDTH // tile_size, generator)
            field_catalog = field.to_full_catalog()
            position = torch.rand(2, generator=generator, dtype=torch.float64)
            star_x = STAR_MARGIN_PIX + float(position[0]) * (SCENE_WIDTH - 2 * STAR_MARGIN_PIX)
            star_y = STAR_MARGIN_PIX + float(position[1]) * (SCENE_HEIGHT - 2 * STAR_MARGIN_PIX)
            scene = field_catalog.concatenate(_star_catalog(star_flux, star_x, star_y, field_catalog))
            batch = simulator.simulate_catalog(scene, generator)
            fwhm_pix = float(batch.psf_fwhm_arcsec[0]) / conditions.pixel_scale_arcsec
            n_field = int(field_catalog.n_sources[0])
            snr, _ = source_snr_and_blendedness(
                field_catalog, conditions.psf(batch.psf_fwhm_arcsec.numpy()), conditions
            )
            fx, fy = field_catalog.x[0, :n_field].numpy(), field_catalog.y[0, :n_field].numpy()
            truth = {
                "x": fx,
                "y": fy,
                "flux_njy": field_catalog.fields["flux_njy"][0, :n_field].numpy(),
                "snr": snr[0, :n_field],
                "distance_pix": np.hypot(fx - star_x, fy - star_y),
            }
            image, variance, mask = batch.image[0], batch.variance[0], batch.mask[0]
            catalogs = {
                "bliss": measure_scene(model, image, variance, fwhm_pix, autoencoder, mask),
                "sep": _sep_catalog(image, variance, mask),
            }
            for method, found in catalogs.items():
                scenes[method].append(_scene_figures(found, truth, star_x, star_y, star_flux))
        by_mag[f"{star_mag:g}"] = {method: _summarize(scenes[method]) for method in METHODS}
    results: dict[str, Any] = {
        "n_scenes_per_mag": n_scenes,
        "galaxy_model": args.galaxy_model,
        "scene_shape": [SCENE_HEIGHT, SCENE_WIDTH],
        "star_mags": list(args.star_mags),
        "by_star_mag": by_mag,
        "seconds": time.perf_counter() - start,
    }
    lines = []
    for mag, figures in by_mag.items():
        b, s = figures["bliss"], figures["sep"]
        lines.append(
            f"saturation: r={mag}: star found bliss {b['star_found_fraction']:.2f} (flux ratio "
            f"{b['star_flux_ratio_median']:.2f}) sep {s['star_found_fraction']:.2f}; spurious within "
            f"{NEAR_STAR_PIX:g} px bliss {b['spurious_near_star_per_scene']:.2f} sep "
            f"{s['spurious_near_star_per_scene']:.2f}; neighbours (SNR>=10, {NEIGHBOUR_RANGE_PIX[0]:g}-"
            f"{NEIGHBOUR_RANGE_PIX[1]:g} px) flux bias bliss {b['neighbour_flux_bias']:+.3f} scatter "
            f"{b['neighbour_flux_scatter']:.3f} recall {b['neighbour_recall']:.2f}, sep "
            f"{s['neighbour_flux_bias']:+.3f} scatter {s['neighbour_flux_scatter']:.3f} recall "
            f"{s['neighbour_recall']:.2f}"
        )
    headline = by_mag[f"{args.star_mags[0]:g}"]
    for method in METHODS:
        for key in ("star_found_fraction", "spurious_near_star_per_scene", "neighbour_flux_bias"):
            results[f"{method}_{key}"] = headline[method][key]
    lines.append(
        f"bliss_spurious_near_star_per_scene = {results['bliss_spurious_near_star_per_scene']:.2f}, "
        f"sep_spurious_near_star_per_scene = {results['sep_spurious_near_star_per_scene']:.2f} "
        f"(r={args.star_mags[0]:g})"
    )
    results["summary"] = "\n".join(lines)
    return results
