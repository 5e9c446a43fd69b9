"""``bliss-bench tables``: the Rubin-native outputs of `BlissDeblendMeasureTask` on one detector.

One simulated detector (4096 x 4096; ``--quick`` 512 x 512; spatially varying
PSF, masks, a saturated star) goes into a fresh Butler repo with the default
model.  The task runs on it with IDs from the Butler's data ID, and its tables
are stored in the repo and read back.  The suite reports the DP1 ``Source``
columns the stored ``bliss_source`` lacks (``missing_dp1_columns``), whether
Felis accepts the package's schema and both stored catalogs match it
(``felis_valid``), the size of the stored ``bliss_deblended_models`` over that
of the calexp file (``models_bytes_over_calexp_bytes``), whether the blend
families are consistent (``parent_child_consistent``), and the robust scatter
(1.4826 MAD, both components pooled) of the PSF-corrected HSM ellipticity
(``hsmShapeRegauss_e1``, ``_e2``) of galaxies with true SNR >= 20 against the
adaptive-moment distortion of the true galaxy before the PSF
(``hsm_e_scatter_snr20``).
"""

from __future__ import annotations

__all__ = ["DESCRIPTION", "add_arguments", "run"]

import argparse
import math
from typing import Any

import galsim
import numpy as np
import torch

from ..catalog import FullCatalog
from ..deblend import render_source_models
from ..metrics import match_sources, robust_scatter
from ..survey import SurveyConditions

DESCRIPTION = (
    "bliss_source, bliss_catalog_samples and bliss_deblended_models of one 4096x4096 detector: "
    "DP1 columns, Felis schema, model storage, blend families, PSF-corrected shapes"
)

_MIN_SNR = 20.0
"""Least true SNR of the galaxies whose PSF-corrected shapes are scored."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the tables suite."""
    parser.add_argument(
        "--size", type=int, default=None, help="detector side, pixels (default 4096; quick 512)"
    )


def _truth_catalog(truth: Any, height: int, width: int) -> FullCatalog:
    """The truth table of a demo detector as a catalog (one image, parent pixels from 0)."""
    n_sources = len(truth)

    def row(name: str, scale: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.as_tensor(np.asarray(truth[name], dtype=np.float64) * scale, dtype=dtype)[None, :]

    fields = {
        "flux_njy": row("flux"),
        "is_galaxy": row("is_galaxy", dtype=torch.bool),
        "disk_frac": row("disk_frac"),
        "disk_hlr_arcsec": row("disk_hlr"),
        "disk_q": row("disk_q"),
        "bulge_hlr_arcsec": row("bulge_hlr"),
        "bulge_q": row("bulge_q"),
        "position_angle_rad": row("position_angle", math.pi / 180.0),
    }
    return FullCatalog(height, width, torch.tensor([n_sources]), row("x"), row("y"), fields)


def _true_snr(
    truth: Any,
    conditions: SurveyConditions,
    variance: np.ndarray,
    height: int,
    width: int,
    chunk_size: int = 256,
) -> np.ndarray:
    """``sqrt(sum I^2 / Var)`` of each true source drawn alone with its PSF (I in nJy, the calexp's
    variance), shape (N,); rendered in chunks, so that memory stays bounded on large detectors."""
    snr = np.zeros(len(truth))
    for start in range(0, len(truth), chunk_size):
        chunk = truth[start : start + chunk_size]
        catalog = _truth_catalog(chunk, height, width)
        fwhm_pix = torch.as_tensor(np.asarray(chunk["psf_fwhm"]) / conditions.pixel_scale_arcsec)
        models = render_source_models(catalog, fwhm_pix, conditions, height, width)
        offsets = np.arange(models.stamp_size)
        rows = np.clip(models.y0.numpy()[:, None] + offsets[None, :], 0, height - 1)[:, :, None]
        cols = np.clip(models.x0.numpy()[:, None] + offsets[None, :], 0, width - 1)[:, None, :]
        pixel_variance = np.maximum(variance[rows, cols], 1e-30)
        stamps = models.models.double().numpy()
        snr[start : start + chunk_size] = np.sqrt((stamps**2 / pixel_variance).sum(axis=(1, 2)))
    return snr


def _pre_psf_distortion(row: Any, pixel_scale_arcsec: float) -> tuple[float, float]:
    """Adaptive-moment distortion (e1, e2; axes of the pixel grid) of a true galaxy before the PSF,
    drawn without pixel response on a grid four times finer than the pixels."""
    angle = math.radians(float(row["position_angle"])) * galsim.radians
    disk_frac = float(row["disk_frac"])
    components = []
    if disk_frac > 0:
        disk = galsim.Exponential(
            half_light_radius=float(row["disk_hlr"]) / pixel_scale_arcsec, flux=disk_frac
        )
        components.append(disk.shear(q=float(row["disk_q"]), beta=angle))
    if disk_frac < 1:
        bulge_hlr = float(row["bulge_hlr"]) / pixel_scale_arcsec
        bulge = galsim.DeVaucouleurs(half_light_radius=bulge_hlr, trunc=8 * bulge_hlr, flux=1.0 - disk_frac)
        components.append(bulge.shear(q=float(row["bulge_q"]), beta=angle))
    profile = galsim.Add(components)
    scale = 0.25
    size = int(
        min(
            max(64, 16 * max(float(row["disk_hlr"]), float(row["bulge_hlr"])) / pixel_scale_arcsec / scale),
            512,
        )
    )
    image = profile.drawImage(nx=size, ny=size, scale=scale, method="no_pixel")
    moments = galsim.hsm.FindAdaptiveMom(image, strict=False)
    if moments.moments_status != 0:
        return math.nan, math.nan
    return moments.observed_shape.e1, moments.observed_shape.e2


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the suite; returns the JSON results plus a one-line ``summary``."""
    # The pipeline layer (Butler, lsst.images) is imported only for this suite.
    from ..pipeline import (
        DP1_SOURCE_COLUMNS,
        blend_family_problems,
        children,
        load_felis_schema,
        schema_mismatches,
    )
    from ..pipeline.demo import run_task_on_demo_detector

    size = args.size or (512 if args.quick else 4096)
    results: dict[str, Any] = {"size": size}
    stored = run_task_on_demo_detector(size, args.seed)
    sources, samples, calexp, truth, model = (
        stored.bliss_source,
        stored.bliss_catalog_samples,
        stored.calexp,
        stored.truth,
        stored.model,
    )
    models_bytes, calexp_bytes = stored.models_bytes, stored.calexp_bytes
    results["repo_build_s"], results["task_s"] = stored.repo_build_s, stored.task_s

    results["missing_dp1_columns"] = [name for name in DP1_SOURCE_COLUMNS if name not in sources.colnames]
    schema = load_felis_schema()
    mismatches = schema_mismatches(sources, "bliss_source", schema) + [
        f"bliss_catalog_samples {problem}"
        for problem in schema_mismatches(samples, "bliss_catalog_samples", schema)
    ]
    results["felis_schema_mismatches"] = mismatches
    results["felis_valid"] = not mismatches
    results["models_bytes"] = models_bytes
    results["calexp_bytes"] = calexp_bytes
    results["models_bytes_over_calexp_bytes"] = models_bytes / calexp_bytes
    family_problems = blend_family_problems(sources)
    results["blend_family_problems"] = family_problems
    results["parent_child_consistent"] = not family_problems
    detected = children(sources)
    results["n_sources"] = len(detected)
    results["n_blend_families"] = len(sources) - len(detected)
    results["n_children"] = int((np.asarray(detected["parentSourceId"]) != 0).sum())

    height, width = calexp.image.array.shape
    is_galaxy = np.asarray(truth["is_galaxy"], dtype=bool)
    snr = np.zeros(len(truth))
    snr[is_galaxy] = _true_snr(
        truth[is_galaxy], model.conditions, np.asarray(calexp.variance.array, dtype=np.float64), height, width
    )
    galaxies = is_galaxy & (snr >= _MIN_SNR)
    match = match_sources(
        np.asarray(truth["x"])[galaxies],
        np.asarray(truth["y"])[galaxies],
        np.asarray(detected["x"]),
        np.asarray(detected["y"]),
        1.0,
    )
    measured = ~np.asarray(detected["hsmShapeRegauss_flag"])[match.est_index]
    est_index, true_index = match.est_index[measured], match.true_index[measured]
    chosen = truth[galaxies][true_index]
    true_e = np.array([_pre_psf_distortion(row, model.conditions.pixel_scale_arcsec) for row in chosen])
    true_e = true_e.reshape(-1, 2)
    est_e = np.stack(
        [np.ma.getdata(detected[name])[est_index] for name in ("hsmShapeRegauss_e1", "hsmShapeRegauss_e2")],
        axis=1,
    )
    finite = np.isfinite(true_e).all(axis=1)
    residuals = (est_e - true_e)[finite].ravel()
    results["n_galaxies_snr20"] = int(galaxies.sum())
    results["n_galaxies_snr20_matched"] = int(match.n_matched)
    results["n_galaxies_snr20_hsm_failed"] = int((~measured).sum())
    results["hsm_e_scatter_snr20"] = robust_scatter(residuals)
    results["hsm_e_rms_snr20"] = float(np.sqrt(np.mean(residuals**2))) if residuals.size else math.nan
    results["summary"] = (
        f"tables on {size}x{size}: missing_dp1_columns = {results['missing_dp1_columns']}, felis_valid = "
        f"{results['felis_valid']}, models_bytes_over_calexp_bytes = "
        f"{results['models_bytes_over_calexp_bytes']:.4f}, parent_child_consistent = "
        f"{results['parent_child_consistent']}, hsm_e_scatter_snr20 = {results['hsm_e_scatter_snr20']:.3f}"
    )
    return results
