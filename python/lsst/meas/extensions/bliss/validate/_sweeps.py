"""Validation scenarios that the report and the benchmark suites share.

The two-galaxy separation sweep and the tile-position check of isolated stars,
with the scene builders and the per-scene BLISS measurement (detection,
deblending and measurement as the pipeline task does them) they rest on.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_MODEL_FIT",
    "MATCH_RADIUS_PIX",
    "PAIR_SCENE_SIZE",
    "TILE_PLACEMENTS",
    "catalog_rows",
    "deblend_and_measure",
    "disk_galaxies",
    "measure_scene",
    "scene_catalog",
    "half_found_separation_fwhm",
    "run_separation_sweep",
    "separation_sweep",
    "tile_position_sweep",
]

import math

import numpy as np
import torch

from ..catalog import SOURCE_FIELDS, FullCatalog, empty_source_fields
from ..deblend import (
    GalaxyLatents,
    ModelFitConfig,
    SourceModels,
    deblend_sources,
    measure_deblended,
    median_noise_njy,
    model_sources,
)
from ..inference import FrameConfig, infer_frame, sample_catalogs
from ..io import BlissModel
from ..metrics import match_sources, robust_scatter
from ..network import GalaxyAutoencoder
from ..simulation import ImageSimulator, SimulatorConfig
from ..survey import DEFAULT_INVALID_MASK_PLANES, invalid_mask_bits

PAIR_SCENE_SIZE = 64
"""Side in pixels of the scenes of the separation sweep and of the deblending benchmark."""

MATCH_RADIUS_PIX = 1.5

DEFAULT_MODEL_FIT = ModelFitConfig()
"""How the blended sources' models are fitted by default, as in `BlissDeblendMeasureTask`."""

TILE_PLACEMENTS: dict[str, tuple[float, float]] = {
    "centre": (0.5, 0.5),
    "edge_x": (0.0, 0.5),
    "edge_y": (0.5, 0.0),
    "corner": (0.0, 0.0),
}
"""Position of the star within its tile (fractions of the tile side); 0 is the tile boundary."""


def disk_galaxies(
    rng: np.random.Generator, n: int, flux_range_njy: tuple[float, float]
) -> dict[str, np.ndarray]:
    """Random disk-dominated galaxies (log-uniform flux)."""
    return {
        "flux_njy": np.exp(rng.uniform(*np.log(flux_range_njy), n)),
        "is_galaxy": np.ones(n),
        "disk_frac": rng.uniform(0.5, 1.0, n),
        "disk_hlr_arcsec": rng.uniform(0.3, 0.8, n),
        "disk_q": rng.uniform(0.3, 1.0, n),
        "bulge_hlr_arcsec": rng.uniform(0.15, 0.4, n),
        "bulge_q": rng.uniform(0.5, 1.0, n),
        "position_angle_rad": rng.uniform(0.0, math.pi, n),
    }


def scene_catalog(positions: list[np.ndarray], properties: list[dict[str, np.ndarray]]) -> FullCatalog:
    """A batch of scenes: per scene, positions (k, 2) as (x, y) and k sources' properties."""
    batch, width = len(positions), max(len(p) for p in positions)
    fields = {name: torch.zeros(batch, width) for name in SOURCE_FIELDS}
    x, y = torch.zeros(batch, width), torch.zeros(batch, width)
    for index, (where, values) in enumerate(zip(positions, properties, strict=True)):
        count = len(where)
        x[index, :count] = torch.as_tensor(where[:, 0])
        y[index, :count] = torch.as_tensor(where[:, 1])
        for name in SOURCE_FIELDS:
            fields[name][index, :count] = torch.as_tensor(values[name], dtype=torch.float32)
    fields["is_galaxy"] = fields["is_galaxy"] > 0.5
    counts = torch.tensor([len(p) for p in positions])
    return FullCatalog(PAIR_SCENE_SIZE, PAIR_SCENE_SIZE, counts, x, y, fields)


def measure_scene(
    model: BlissModel,
    image: torch.Tensor,
    variance: torch.Tensor,
    fwhm_pix: float,
    autoencoder: GalaxyAutoencoder | None,
    mask: torch.Tensor | None = None,
    fit: ModelFitConfig | None = None,
) -> dict[str, np.ndarray]:
    """BLISS detection and deblending of one scene, as the pipeline task does them: positions,
    catalog flux (``catalog_flux_njy``), deblended flux (``flux_njy``) and shape estimates; pixels
    with a bit of `DEFAULT_INVALID_MASK_PLANES` in ``mask`` (shape (H, W)) are not used; ``fit``:
    how the blended sources' models are fitted (None: not at all)."""
    result = infer_frame(model, image, variance, mask, fwhm_pix, FrameConfig(n_samples=0, device="cpu"))
    valid = None if mask is None else (mask & invalid_mask_bits(DEFAULT_INVALID_MASK_PLANES)) == 0
    catalog = result.catalog
    count = int(catalog.n_sources[0])
    estimate = FullCatalog(
        catalog.height,
        catalog.width,
        catalog.n_sources,
        catalog.x,
        catalog.y,
        {**catalog.fields, "is_galaxy": catalog.fields["galaxy_prob"] > 0.5},
    )
    models, latents = model_sources(
        estimate,
        catalog.fields["psf_fwhm_pix"][0, :count],
        model.conditions,
        image,
        variance,
        valid,
        autoencoder,
        fit=fit,
    )
    measured = deblend_and_measure(image, variance, models, latents, valid)
    rows = {
        name: catalog.fields[name][0, :count].numpy()
        for name in ("detection_prob", "disk_q", "disk_frac", "bulge_q", "position_angle_rad")
    }
    rows["catalog_flux_njy"] = catalog.fields["flux_njy"][0, :count].numpy()
    return {"x": catalog.x[0, :count].numpy(), "y": catalog.y[0, :count].numpy(), **rows, **measured}


def deblend_and_measure(
    image: torch.Tensor,
    variance: torch.Tensor,
    models: SourceModels,
    latents: GalaxyLatents | None = None,
    valid: torch.Tensor | None = None,
) -> dict[str, np.ndarray]:
    """Flux-conserving deblending of a scene by ``models`` and the measurements on it, with the
    median noise of the image's ``valid`` pixels (default all) as the background noise."""
    noise = median_noise_njy(variance, valid)
    return measure_deblended(deblend_sources(image, variance, models, valid), noise, latents=latents)


def separation_sweep(
    model: BlissModel,
    n_trials: int,
    seed: int,
    autoencoder: GalaxyAutoencoder | None = None,
    fit: ModelFitConfig | None = DEFAULT_MODEL_FIT,
) -> list[dict[str, float]]:
    """The two-galaxy case study: the second galaxy's detection and both fluxes against separation.

    A first galaxy of 40 times the 5-sigma point-source flux (disk half-light
    radius 0.6") and a second half as bright and two thirds the size are
    placed 1, 2, ..., 10 pixels apart (random direction, sub-pixel offsets)
    at the model's nominal PSF; each separation has ``n_trials`` noise
    realizations.

    Returns
    -------
    sweep
        One entry per separation: ``separation_pix``, ``second_detection_prob``
        (mean detection probability of the estimate matched to the second
        galaxy, 0 when none), ``second_found_fraction``, and median flux
        residuals of both galaxies (``*_flux_residual_median``) with the
        second's robust scatter.
    """
    simulator = ImageSimulator(
        model.conditions,
        model.prior,
        SimulatorConfig(image_height=PAIR_SCENE_SIZE, image_width=PAIR_SCENE_SIZE),
        device="cpu",
    )
    return run_separation_sweep(
        model,
        autoencoder,
        simulator,
        np.random.default_rng(seed),
        torch.Generator().manual_seed(seed),
        n_trials,
        fit,
    )


def run_separation_sweep(
    model: BlissModel,
    autoencoder: GalaxyAutoencoder | None,
    simulator: ImageSimulator,
    rng: np.random.Generator,
    generator: torch.Generator,
    n_trials: int,
    fit: ModelFitConfig | None,
) -> list[dict[str, float]]:
    """Second-source detection probability, the fraction of trials with both galaxies found, and flux
    residuals against separation (1-10 px; also in units of the nominal PSF FWHM)."""
    conditions = model.conditions
    fwhm_arcsec = conditions.psf_fwhm_arcsec
    fwhm_pix = fwhm_arcsec / conditions.pixel_scale_arcsec
    depth_njy = 10 ** ((31.4 - conditions.point_source_depth_mag()) / 2.5)
    centre = (PAIR_SCENE_SIZE - 1) / 2
    sweep = []
    for separation in range(1, 11):
        positions, properties = [], []
        for _ in range(n_trials):
            angle = rng.uniform(0, 2 * math.pi)
            first = np.array([centre, centre]) + rng.uniform(-0.5, 0.5, 2)
            second = first + separation * np.array([math.cos(angle), math.sin(angle)])
            values = disk_galaxies(rng, 2, (1.0, 2.0))
            values["flux_njy"] = np.array([40.0, 20.0]) * depth_njy  # the first twice as bright
            values["disk_hlr_arcsec"] = np.array([0.6, 0.4])  # and 50% larger
            values["bulge_hlr_arcsec"] = np.array([0.3, 0.2])
            positions.append(np.stack([first, second]))
            properties.append(values)
        truth = scene_catalog(positions, properties)
        batch = simulator.simulate_catalog(truth, generator, torch.full((n_trials,), fwhm_arcsec))
        detection, residual_first, residual_second, both_found = [], [], [], 0
        for index in range(n_trials):
            bliss = measure_scene(
                model, batch.image[index], batch.variance[index], fwhm_pix, autoencoder, fit=fit
            )
            where = positions[index]
            match = match_sources(where[:, 0], where[:, 1], bliss["x"], bliss["y"], MATCH_RADIUS_PIX)
            found = dict(zip(match.true_index.tolist(), match.est_index.tolist(), strict=True))
            detection.append(float(bliss["detection_prob"][found[1]]) if 1 in found else 0.0)
            both_found += int(0 in found and 1 in found)
            for which, bucket in ((0, residual_first), (1, residual_second)):
                if which in found:
                    bucket.append(bliss["flux_njy"][found[which]] / properties[index]["flux_njy"][which] - 1)
        sweep.append(
            {
                "separation_pix": float(separation),
                "separation_fwhm": separation / fwhm_pix,
                "second_detection_prob": float(np.mean(detection)),
                "both_found_fraction": both_found / n_trials,
                "second_found_fraction": len(residual_second) / n_trials,
                "first_flux_residual_median": float(np.median(residual_first))
                if residual_first
                else float("nan"),
                "second_flux_residual_median": float(np.median(residual_second))
                if residual_second
                else float("nan"),
                "second_flux_residual_scatter": robust_scatter(np.asarray(residual_second)),
            }
        )
    return sweep


def half_found_separation_fwhm(sweep: list[dict[str, float]]) -> float:
    """The separation, in PSF FWHM, at which both galaxies of a pair are found in half the trials.

    Linear interpolation of ``both_found_fraction`` against ``separation_fwhm`` of a
    `run_separation_sweep` at its first crossing of 0.5 from below; NaN when the fraction never
    reaches 0.5 over the sweep, and the smallest separation when it starts there.
    """
    previous = None
    for entry in sweep:
        separation, fraction = entry["separation_fwhm"], entry["both_found_fraction"]
        if fraction >= 0.5:
            if previous is None:
                return separation
            low_separation, low_fraction = previous
            return low_separation + (0.5 - low_fraction) * (separation - low_separation) / (
                fraction - low_fraction
            )
        previous = (separation, fraction)
    return float("nan")


def catalog_rows(catalog: FullCatalog, index: int) -> dict[str, np.ndarray]:
    count = int(catalog.n_sources[index])
    rows = {"x": catalog.x[index, :count], "y": catalog.y[index, :count]}
    rows.update({name: value[index, :count] for name, value in catalog.fields.items()})
    return {name: value.detach().cpu().numpy() for name, value in rows.items()}


def tile_position_sweep(
    model: BlissModel,
    n_trials: int,
    seed: int,
    snr_range: tuple[float, float] = (10, 30),
    n_samples: int = 16,
    checkerboard: bool = True,
    backbone_dtype: torch.dtype = torch.float32,
) -> dict[str, float]:
    """Detection probability of isolated stars at tile centres, edges and corners.

    Each trial is a 32 x 32 image holding one star of SNR drawn uniformly in
    ``snr_range`` near its centre.  The star's detection probability is the
    fraction of posterior catalog samples (drawn through the checkerboard)
    that hold a source within 1 pixel of it: the probability under the whole
    posterior, whichever tile claims the star.  ``checkerboard=False`` samples
    every tile independently (the ablation of `BlissEncoder.posterior`);
    ``backbone_dtype`` is the arithmetic of the encoder's backbone.

    The placements are compared on common random numbers: trial ``i`` has the
    same SNR, pixel noise and sampling seed at every placement, so that the
    differences between placements come from the position in the tile, not
    from independent draws (which, through the maximum and minimum over
    placements, would inflate ``edge_dip``).

    Returns
    -------
    results
        Mean probability per placement (`TILE_PLACEMENTS`); ``edge_dip``, the
        largest minus the smallest of them; and ``edge_dip_stderr``, the
        standard error of that difference from its per-trial values.
    """
    conditions, tile = model.conditions, model.encoder.config.tile_size
    size = 32
    simulator = ImageSimulator(
        conditions,
        model.prior,
        SimulatorConfig(image_height=size, image_width=size, tile_size=tile, border_tiles=0),
        device="cpu",
    )
    sigma_psf = conditions.psf_fwhm_pix / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    flux_per_snr = conditions.background_noise_njy * math.sqrt(4.0 * math.pi * sigma_psf**2)
    snr = snr_range[0] + (snr_range[1] - snr_range[0]) * torch.rand(
        n_trials, 1, generator=torch.Generator().manual_seed(seed)
    )
    centre_tile = size // (2 * tile)
    fwhm = torch.full((n_trials,), conditions.psf_fwhm_arcsec)
    detected: dict[str, np.ndarray] = {}
    for name, (frac_x, frac_y) in TILE_PLACEMENTS.items():
        x = torch.full((n_trials, 1), (centre_tile + frac_x) * tile - 0.5)
        y = torch.full((n_trials, 1), (centre_tile + frac_y) * tile - 0.5)
        fields = empty_source_fields((n_trials, 1), torch.device("cpu"), torch.float32)
        fields["flux_njy"] = snr * flux_per_snr
        catalog = FullCatalog(size, size, torch.ones(n_trials, dtype=torch.long), x, y, fields)
        batch = simulator.simulate_catalog(catalog, torch.Generator().manual_seed(seed + 1), fwhm)
        samples = sample_catalogs(
            model.encoder,
            batch.image,
            batch.variance,
            batch.mask,
            conditions.psf_fwhm_pix,
            conditions.pixel_scale_arcsec,
            n_samples,
            seed=seed + 2,
            checkerboard=checkerboard,
            backbone_dtype=backbone_dtype,
        )
        detected[name] = np.zeros(n_trials)
        for sample in samples:
            for index in range(n_trials):
                rows = catalog_rows(sample, index)
                match = match_sources(x[index].numpy(), y[index].numpy(), rows["x"], rows["y"], 1.0)
                detected[name][index] += match.n_matched / n_samples
    results: dict[str, float] = {name: float(values.mean()) for name, values in detected.items()}
    highest, lowest = max(results, key=results.__getitem__), min(results, key=results.__getitem__)
    difference = detected[highest] - detected[lowest]
    results["edge_dip"] = float(difference.mean())
    results["edge_dip_stderr"] = float(difference.std(ddof=1) / math.sqrt(n_trials)) if n_trials > 1 else 0.0
    return results
