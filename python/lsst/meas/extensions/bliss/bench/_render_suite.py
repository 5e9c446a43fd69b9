"""``bliss-bench render``: speed and accuracy of the torch renderer against GalSim.

Two parts, both on the same machine in one run:

* accuracy: a grid over half-light radius (0.1"-3"), axis ratio (0.2-1),
  bulge fraction (0-1), PSF FWHM (0.6"-1.2"), Gaussian and Moffat PSFs, random
  sub-pixel offsets, at 0.2"/pixel, plus stars, and a second grid of galaxies
  with star-forming knots (centred and off-centre, radii up to 5"); every stamp
  is drawn by GalSim (tightened accuracy, the knots as ``DeltaFunction``
  points at the renderer's positions) and by the torch renderer on the same
  bounds;
* speed: a set of galaxies drawn from the default LSST prior under the
  default PSF, rendered by GalSim (default accuracy, one process) and by
  the torch renderer (batched, CPU threads as configured; GPU when present).
"""

from __future__ import annotations

__all__ = ["DESCRIPTION", "accuracy_grid", "add_arguments", "compare_with_galsim", "knot_grid", "run"]

import argparse
import itertools
import math
import time
from typing import Any

import numpy as np
import torch

from ..catalog import FullCatalog
from ..rendering import (
    KNOT_FIELDS,
    MAX_KNOT_SEED,
    GaussianPsf,
    MoffatPsf,
    PointSpreadFunction,
    RenderSources,
    catalog_to_render_sources,
    render_galsim_stamp,
    render_stamps_by_size,
    stamp_half_size,
)
from ..simulation import PriorConfig, SourcePrior
from ..survey import SurveyConditions

DESCRIPTION = "torch renderer vs GalSim: galaxies per second and stamp accuracy"

PIXEL_SCALE_ARCSEC = 0.2
GRID_HLR_ARCSEC = (0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
GRID_AXIS_RATIO = (0.2, 0.4, 0.6, 0.8, 1.0)
GRID_BULGE_FRACTION = (0.0, 0.25, 0.5, 0.75, 1.0)
GRID_PSF_FWHM_ARCSEC = (0.6, 0.8, 1.0, 1.2)
GRID_PSF_MODELS = ("gaussian", "moffat")
STARS_PER_PSF = 4
KNOT_GRID_HLR_ARCSEC = (0.3, 1.0, 2.0, 5.0)
KNOT_GRID_AXIS_RATIO = (0.3, 0.7)
KNOT_GRID_OFFSET_HLR = (0.0, 0.75)
KNOT_GRID_PSF_FWHM_ARCSEC = 0.7


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the render suite."""
    parser.add_argument(
        "--n-galaxies",
        type=int,
        default=None,
        help="size of the timing set (default 400, also in quick mode)",
    )
    parser.add_argument(
        "--grid-sample",
        type=int,
        default=None,
        help="accuracy stamps drawn at random from the grid (default: whole grid; quick: 120)",
    )
    parser.add_argument(
        "--knot-grid-sample",
        type=int,
        default=None,
        help="stamps drawn at random from the grid of galaxies with knots (default: all 32; quick: 8)",
    )


def _sources(columns: dict[str, list[float]], device: torch.device | str = "cpu") -> RenderSources:
    count = len(columns["x"])
    as_float = {k: torch.tensor(v, dtype=torch.float64, device=device) for k, v in columns.items()}
    knots = {name: as_float.get(name) for name in KNOT_FIELDS}
    return RenderSources(
        x=as_float["x"],
        y=as_float["y"],
        flux=as_float["flux"],
        is_galaxy=torch.tensor(columns["is_galaxy"], dtype=torch.bool, device=device),
        disk_frac=as_float["disk_frac"],
        disk_hlr_pix=as_float["disk_hlr_pix"],
        disk_q=as_float["disk_q"],
        bulge_hlr_pix=as_float["bulge_hlr_pix"],
        bulge_q=as_float["bulge_q"],
        position_angle_rad=as_float["position_angle_rad"],
        image_index=torch.zeros(count, dtype=torch.long, device=device),
        psf_index=torch.tensor(columns["psf_index"], dtype=torch.long, device=device),
        **knots,
    )


def accuracy_grid(
    sample: int | None = None, seed: int = 0
) -> list[tuple[PointSpreadFunction, RenderSources]]:
    """Galaxies and stars of the accuracy grid, grouped by PSF model.

    Parameters
    ----------
    sample
        Keep this many grid points chosen at random (``None``: all of them).
    seed
        Seed of the sub-pixel offsets, position angles and the sample.

    Returns
    -------
    groups
        ``(psf, sources)`` pairs; ``psf`` holds one PSF per grid FWHM and
        ``sources.psf_index`` points into it.  Disk and bulge share the grid
        radius and axis ratio.
    """
    rng = np.random.default_rng(seed)
    fwhm_pix = np.array(GRID_PSF_FWHM_ARCSEC) / PIXEL_SCALE_ARCSEC
    points = list(
        itertools.product(
            GRID_HLR_ARCSEC, GRID_AXIS_RATIO, GRID_BULGE_FRACTION, range(len(fwhm_pix)), GRID_PSF_MODELS
        )
    )
    stars = [
        (0.0, 1.0, 0.0, psf_index, model)
        for psf_index in range(len(fwhm_pix))
        for model in GRID_PSF_MODELS
        for _ in range(STARS_PER_PSF)
    ]
    if sample is not None and sample < len(points):
        points = [points[i] for i in rng.choice(len(points), size=sample, replace=False)]
    groups = []
    for model in GRID_PSF_MODELS:
        chosen = [p for p in points + stars if p[4] == model]
        columns: dict[str, list[float]] = {
            name: []
            for name in (
                "x",
                "y",
                "flux",
                "is_galaxy",
                "disk_frac",
                "disk_hlr_pix",
                "disk_q",
                "bulge_hlr_pix",
                "bulge_q",
                "position_angle_rad",
                "psf_index",
            )
        }
        for hlr_arcsec, axis_ratio, bulge_fraction, psf_index, _ in chosen:
            offset = rng.uniform(-0.5, 0.5, size=2)
            hlr_pix = hlr_arcsec / PIXEL_SCALE_ARCSEC
            values = {
                "x": 100.0 + offset[0],
                "y": 100.0 + offset[1],
                "flux": 1.0e4,
                "is_galaxy": hlr_pix > 0,
                "disk_frac": 1.0 - bulge_fraction,
                "disk_hlr_pix": hlr_pix,
                "disk_q": axis_ratio,
                "bulge_hlr_pix": hlr_pix,
                "bulge_q": axis_ratio,
                "position_angle_rad": rng.uniform(0, np.pi),
                "psf_index": psf_index,
            }
            for name, value in values.items():
                columns[name].append(value)
        psf = GaussianPsf(fwhm_pix) if model == "gaussian" else MoffatPsf(fwhm_pix, beta=3.5)
        groups.append((psf, _sources(columns)))
    return groups


def knot_grid(sample: int | None = None, seed: int = 0) -> list[tuple[PointSpreadFunction, RenderSources]]:
    """Galaxies with star-forming knots, grouped by PSF model (one PSF of FWHM 0.7" each).

    A grid over disk half-light radius (0.3"-5"), axis ratio and knot offset
    (centred, or 0.75 half-light radii off-centre), under Gaussian and Moffat
    PSFs; each galaxy has a random bulge fraction (0-0.5), 5-40 knots holding
    10-50% of the disk's light, a random knot seed, position angle and
    sub-pixel offset.

    Parameters
    ----------
    sample
        Keep this many grid points chosen at random (``None``: all of them).
    seed
        Seed of the random parameters and of the sample.

    Returns
    -------
    groups
        ``(psf, sources)`` pairs.
    """
    rng = np.random.default_rng(seed)
    points = list(
        itertools.product(KNOT_GRID_HLR_ARCSEC, KNOT_GRID_AXIS_RATIO, KNOT_GRID_OFFSET_HLR, GRID_PSF_MODELS)
    )
    if sample is not None and sample < len(points):
        points = [points[i] for i in rng.choice(len(points), size=sample, replace=False)]
    fwhm_pix = np.array([KNOT_GRID_PSF_FWHM_ARCSEC / PIXEL_SCALE_ARCSEC])
    groups = []
    for model in GRID_PSF_MODELS:
        rows = []
        for hlr_arcsec, axis_ratio, offset_hlr, _ in (p for p in points if p[3] == model):
            centre = 300.0 + rng.uniform(-0.5, 0.5, size=2)
            hlr_pix = hlr_arcsec / PIXEL_SCALE_ARCSEC
            rows.append(
                {
                    "x": centre[0],
                    "y": centre[1],
                    "flux": 1.0e4,
                    "is_galaxy": True,
                    "disk_frac": 1.0 - rng.uniform(0.0, 0.5),
                    "disk_hlr_pix": hlr_pix,
                    "disk_q": axis_ratio,
                    "bulge_hlr_pix": 0.5 * hlr_pix,
                    "bulge_q": 0.8,
                    "position_angle_rad": rng.uniform(0, np.pi),
                    "psf_index": 0,
                    "knot_frac": rng.uniform(0.1, 0.5),
                    "knot_count": float(rng.integers(5, 41)),
                    "knot_seed": float(rng.integers(0, MAX_KNOT_SEED)),
                    "knot_offset_hlr": offset_hlr,
                }
            )
        if rows:
            columns = {name: [row[name] for row in rows] for name in rows[0]}
            psf = GaussianPsf(fwhm_pix) if model == "gaussian" else MoffatPsf(fwhm_pix, beta=3.5)
            groups.append((psf, _sources(columns)))
    return groups


def _render_groups(
    sources: RenderSources, psf: PointSpreadFunction, dtype: torch.dtype
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Render every source on its own stamp, batched by stamp size: ``(members, stamps)`` per size."""
    return list(render_stamps_by_size(sources, psf, dtype=dtype))


def _render_torch(sources: RenderSources, psf: PointSpreadFunction, dtype: torch.dtype) -> list[torch.Tensor]:
    """Stamps of `_render_groups` in source order."""
    stamps: list[torch.Tensor] = [torch.empty(0)] * len(sources)
    for members, rendered in _render_groups(sources, psf, dtype):
        for member, stamp in zip(members.tolist(), rendered, strict=True):
            stamps[member] = stamp
    return stamps


def compare_with_galsim(psf: PointSpreadFunction, sources: RenderSources) -> dict[str, np.ndarray]:
    """Per-stamp differences between the torch renderer and GalSim.

    Returns
    -------
    errors
        ``max_abs_err_over_peak`` (max |torch - galsim| / galsim peak) and
        ``flux_rel_err`` (|sum torch / sum galsim - 1|), each of shape (n,).
    """
    stamps = _render_torch(sources, psf, torch.float64)
    peak_errors, flux_errors = [], []
    for index, stamp in enumerate(stamps):
        half_size = stamp.shape[-1] // 2
        reference = render_galsim_stamp(sources, index, psf, half_size)
        ours = stamp.cpu().numpy()
        peak_errors.append(np.abs(ours - reference).max() / reference.max())
        flux_errors.append(abs(ours.sum() / reference.sum() - 1.0))
    return {"max_abs_err_over_peak": np.array(peak_errors), "flux_rel_err": np.array(flux_errors)}


def _timing_set(n_galaxies: int, seed: int) -> tuple[PointSpreadFunction, RenderSources]:
    """Galaxies from the default LSST prior, default PSF, random sub-pixel positions."""
    conditions = SurveyConditions.from_survey("LSST", "r")
    prior = SourcePrior(PriorConfig(star_fraction=0.0), conditions)
    generator = torch.Generator().manual_seed(seed)
    # Enough tiles for about twice the wanted number of galaxies.
    n_tiles = math.ceil(math.sqrt(2.0 * n_galaxies / prior.mean_sources_per_tile))
    catalog = prior.sample(1, n_tiles, n_tiles, generator).to_full_catalog()
    if int(catalog.n_sources[0]) < n_galaxies:
        raise RuntimeError(
            f"drew {int(catalog.n_sources[0])} galaxies, fewer than {n_galaxies}; use another seed."
        )
    count = n_galaxies
    rng = np.random.default_rng(seed)
    offsets = torch.as_tensor(rng.uniform(-0.5, 0.5, size=(2, 1, count)), dtype=torch.float32)
    # All on one 200x200 image, centred near a pixel: only the sub-pixel offsets matter here.
    selection = FullCatalog(
        200,
        200,
        torch.tensor([count]),
        100.0 + offsets[0],
        100.0 + offsets[1],
        {name: value[:, :count] for name, value in catalog.fields.items()},
    )
    sources = catalog_to_render_sources(selection, conditions.pixel_scale_arcsec)
    return conditions.psf(), sources


def _time_torch(sources: RenderSources, psf: PointSpreadFunction, repeats: int = 3) -> float:
    """Best wall time of rendering all stamps (float32), after a warm-up."""
    device = sources.x.device

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    _render_groups(sources, psf, torch.float32)
    synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        _render_groups(sources, psf, torch.float32)
        synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the suite; returns the JSON results plus a one-line ``summary``."""
    # Quick mode samples the accuracy grid only: the timing set costs GalSim about a second, and
    # with fewer galaxies the per-size-group overhead of the batched renderer would dominate.
    n_galaxies = args.n_galaxies or 400
    grid_sample = args.grid_sample if args.grid_sample is not None else (120 if args.quick else None)
    knot_sample = args.knot_grid_sample if args.knot_grid_sample is not None else (8 if args.quick else None)

    accuracy = {"max_abs_err_over_peak": [], "flux_rel_err": []}
    n_grid = 0
    start = time.perf_counter()
    for psf, sources in accuracy_grid(grid_sample, args.seed):
        errors = compare_with_galsim(psf, sources)
        for name in accuracy:
            accuracy[name].extend(errors[name].tolist())
        n_grid += len(sources)
    knot_accuracy: dict[str, list[float]] = {"max_abs_err_over_peak": [], "flux_rel_err": []}
    for psf, sources in knot_grid(knot_sample, args.seed):
        errors = compare_with_galsim(psf, sources)
        for name in knot_accuracy:
            knot_accuracy[name].extend(errors[name].tolist())
    accuracy_seconds = time.perf_counter() - start
    knot_peak_errors = np.array(knot_accuracy["max_abs_err_over_peak"] or [math.nan])
    knot_flux_errors = np.array(knot_accuracy["flux_rel_err"] or [math.nan])
    # The overall figures and tolerance cover both grids.
    peak_errors = np.array(accuracy["max_abs_err_over_peak"] + knot_accuracy["max_abs_err_over_peak"])
    flux_errors = np.array(accuracy["flux_rel_err"] + knot_accuracy["flux_rel_err"])

    psf, sources = _timing_set(n_galaxies, args.seed)
    half_sizes = stamp_half_size(sources, psf)
    # Best of three passes for GalSim as for torch, so that machine noise hits both alike.
    galsim_seconds = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        galsim_stamps = [
            render_galsim_stamp(sources, i, psf, int(half_sizes[i]), accurate=False)
            for i in range(len(sources))
        ]
        galsim_seconds = min(galsim_seconds, time.perf_counter() - start)
    torch_seconds = _time_torch(sources, psf)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch_one_thread_seconds = _time_torch(sources, psf)
    finally:
        torch.set_num_threads(threads)
    torch_stamps = _render_torch(sources, psf, torch.float32)
    timing_set_errors = [
        np.abs(t.numpy() - g).max() / g.max() for t, g in zip(torch_stamps, galsim_stamps, strict=True)
    ]

    results: dict[str, Any] = {
        "n_galaxies": len(sources),
        "galsim_galaxies_per_s": len(sources) / galsim_seconds,
        "torch_galaxies_per_s": len(sources) / torch_seconds,
        "speedup_vs_galsim": galsim_seconds / torch_seconds,
        "torch_threads": threads,
        "torch_1thread_galaxies_per_s": len(sources) / torch_one_thread_seconds,
        "speedup_vs_galsim_1thread": galsim_seconds / torch_one_thread_seconds,
        "timing_set_stamp_half_sizes": {
            str(h): int((half_sizes == h).sum()) for h in torch.unique(half_sizes).tolist()
        },
        "timing_set_max_abs_err_over_peak_vs_galsim_defaults": float(max(timing_set_errors)),
        "grid_n_stamps": n_grid,
        "knot_grid_n_stamps": len(knot_accuracy["flux_rel_err"]),
        "knot_max_abs_err_over_peak": float(knot_peak_errors.max()),
        "knot_max_flux_rel_err": float(knot_flux_errors.max()),
        "grid_seconds": accuracy_seconds,
        "max_abs_err_over_peak": float(peak_errors.max()),
        "median_abs_err_over_peak": float(np.median(peak_errors)),
        "max_flux_rel_err": float(flux_errors.max()),
        "grid_fraction_within_tolerance": float(np.mean((peak_errors <= 0.01) & (flux_errors <= 0.005))),
    }
    if torch.cuda.is_available():
        gpu_sources = sources.apply(lambda values: values.cuda())
        results["torch_gpu_galaxies_per_s"] = len(sources) / _time_torch(gpu_sources, psf)
    gpu = (
        f", GPU {results['torch_gpu_galaxies_per_s']:.0f} galaxies/s"
        if "torch_gpu_galaxies_per_s" in results
        else ""
    )
    results["summary"] = "\n".join(
        [
            f"render: accuracy on {n_grid} grid stamps and {results['knot_grid_n_stamps']} with knots: "
            "max |torch-galsim|/peak = "
            f"{results['max_abs_err_over_peak']:.2e}, max flux error = {results['max_flux_rel_err']:.2e}",
            "render: galaxies with knots alone: max |torch-galsim|/peak = "
            f"{results['knot_max_abs_err_over_peak']:.2e}, max flux error = "
            f"{results['knot_max_flux_rel_err']:.2e}",
            f"render: GalSim {results['galsim_galaxies_per_s']:.0f} galaxies/s, torch "
            f"{results['torch_galaxies_per_s']:.0f} galaxies/s ({results['torch_threads']} CPU threads){gpu}",
            f"speedup_vs_galsim = {results['speedup_vs_galsim']:.1f}x "
            f"(torch CPU vs GalSim, same {len(sources)} galaxies)",
        ]
    )
    return results
