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
(1.4826 MAD, both components pooled) of the PSF-corrected HSM distortion
(``hsmShapeRegauss_e1``, ``_e2``) of the matched galaxies with true SNR >= 20 against
that of the same galaxy measured alone and without noise: over all of them
(``hsm_e_scatter_snr20``), over the resolved ones (``hsmShapeRegauss_resolution >=
0.3``; ``hsm_e_scatter_snr20_resolved``, the fraction kept in
``hsm_resolved_fraction_snr20``), and against the flux-weighted mean of the true
disk's and bulge's pre-PSF distortions (``hsm_e_scatter_snr20_intrinsic``).
Galaxies whose measurement or reference failed are counted, not scored.

The noise floor of that figure: the same scored galaxies, drawn alone exactly as for the reference
(same stamps, PSF images and knots) plus independent Gaussian noise of the calexp's variance in
nJy^2 at each pixel (from ``numpy.random.default_rng((seed, 1))``, ``seed`` the bench's), measured
in the same way against the same reference, over all of them
(``hsm_e_scatter_snr20_noise_floor``) and over the task's resolved sample, selected by the task's
measured resolution (``hsm_e_scatter_snr20_resolved_noise_floor``); the task's scatter over it is
``hsm_e_scatter_snr20_over_noise_floor``.  Galaxies whose noisy measurement failed are counted
(``n_galaxies_snr20_noise_floor_failed``) and left out of the floor only.
"""

from __future__ import annotations

__all__ = ["DESCRIPTION", "add_arguments", "run"]

import argparse
import dataclasses
import math
from typing import Any

import numpy as np
import torch

from ..catalog import FullCatalog
from ..deblend import DeblendedSources, SourceModels, psf_corrected_shapes, render_source_models
from ..metrics import match_sources, robust_scatter, robust_scatter_stderr
from ..rendering import KNOT_FIELDS, galsim_psf
from ..survey import SurveyConditions

DESCRIPTION = (
    "bliss_source, bliss_catalog_samples and bliss_deblended_models of one 4096x4096 detector: "
    "DP1 columns, Felis schema, model storage, blend families, PSF-corrected shapes"
)

_MIN_SNR = 20.0
"""Least true SNR of the galaxies whose PSF-corrected shapes are scored."""

_MIN_RESOLUTION = 0.3
"""Least HSM resolution factor of the resolved sample: the cut of the HSC first-year shear catalog
(Mandelbaum et al. 2018)."""


_NOISE_FLOOR_STREAM = 1
"""The noise floor's noise comes from ``numpy.random.default_rng((seed, _NOISE_FLOOR_STREAM))``, ``seed``
the bench's ``--seed``: fixed for a seed, and independent of the simulation's own draws."""


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
    # The galaxies' knots, where the simulation drew them, so that each is drawn again as it was.
    fields.update({name: row(name) for name in KNOT_FIELDS if name in truth.colnames})
    return FullCatalog(height, width, torch.tensor([n_sources]), row("x"), row("y"), fields)


def _variance_njy2(calexp: Any) -> np.ndarray:
    """The calexp's variance in nJy^2, shape (H, W): a calexp stored in instrumental counts (as the
    demo repo stores its last one, like DC2's) is calibrated with its photometric scaling first, so
    that the true SNR of galaxies whose fluxes are in nJy is not scaled by the counts per nJy."""
    # The pipeline layer (lsst.images) is imported only for this suite.
    from ..pipeline import calibrated_exposure

    return np.asarray(calibrated_exposure(calexp).variance.array, dtype=np.float64)


def _stamp_variance(models: SourceModels, variance: np.ndarray) -> np.ndarray:
    """The image's variance at each pixel of each model stamp, nJy^2, shape (N, S, S).

    Parameters
    ----------
    models
        Model stamps on an image of shape (H, W).
    variance
        The image's variance, nJy^2, shape (H, W).

    Returns
    -------
    stamp_variance
        ``variance`` at each stamp pixel, shape (N, S, S); 0 at stamp pixels beyond the image, where
        the models are zero and the task's stamps hold nothing observed.
    """
    height, width = variance.shape
    offsets = np.arange(models.stamp_size)
    rows = models.y0.numpy()[:, None] + offsets[None, :]
    cols = models.x0.numpy()[:, None] + offsets[None, :]
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
    stamp_variance = variance[
        np.clip(rows, 0, height - 1)[:, :, None], np.clip(cols, 0, width - 1)[:, None, :]
    ]
    return np.where(inside, stamp_variance, 0.0)


def _true_snr(
    truth: Any,
    conditions: SurveyConditions,
    variance: np.ndarray,
    height: int,
    width: int,
    chunk_size: int = 256,
) -> np.ndarray:
    """``sqrt(sum I^2 / Var)`` of each true source drawn alone with its PSF (I in nJy, ``variance``
    the calexp's in nJy^2, shape (H, W)), shape (N,); rendered in chunks, so that memory stays
    bounded on large detectors."""
    snr = np.zeros(len(truth))
    for start in range(0, len(truth), chunk_size):
        chunk = truth[start : start + chunk_size]
        catalog = _truth_catalog(chunk, height, width)
        fwhm_pix = torch.as_tensor(np.asarray(chunk["psf_fwhm"]) / conditions.pixel_scale_arcsec)
        models = render_source_models(catalog, fwhm_pix, conditions, height, width)
        # The floor only avoids 0/0 beyond the image, where the models are zero.
        pixel_variance = np.maximum(_stamp_variance(models, variance), 1e-30)
        stamps = models.models.double().numpy()
        snr[start : start + chunk_size] = np.sqrt((stamps**2 / pixel_variance).sum(axis=(1, 2)))
    return snr


@dataclasses.dataclass(frozen=True)
class _AloneGalaxies:
    """True galaxies drawn alone and without noise, as the reference shapes measure them.

    Attributes
    ----------
    models
        Each galaxy rendered from its true parameters with the PSF at its position, on the stamp
        and pixels of the detector, nJy per pixel, stamps of shape (N, S, S).
    psf_images
        The exact PSF at each galaxy (GalSim's Moffat or Gaussian through the pixel; centred, unit
        sum, pixels of the image), shape (N, P, P).
    """

    models: SourceModels
    psf_images: np.ndarray


def _draw_alone(truth: Any, conditions: SurveyConditions, height: int, width: int) -> _AloneGalaxies:
    """Draw each true galaxy of ``truth`` (N rows) alone and without noise, with its exact PSF."""
    catalog = _truth_catalog(truth, height, width)
    fwhm_pix = np.asarray(truth["psf_fwhm"], dtype=np.float64) / conditions.pixel_scale_arcsec
    models = render_source_models(catalog, torch.as_tensor(fwhm_pix), conditions, height, width)
    psf = conditions.psf(fwhm_pix * conditions.pixel_scale_arcsec)
    side = 2 * math.ceil(float(psf.radius_pix().max())) + 1
    psf_images = np.stack(
        [galsim_psf(psf, index).drawImage(nx=side, ny=side, scale=1.0).array for index in range(len(truth))]
    )
    return _AloneGalaxies(models, psf_images)


def _alone_shapes(
    alone: _AloneGalaxies, sky_variance_njy2: float, noise: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """`psf_corrected_shapes` of the galaxies drawn alone, with ``noise`` added, shape (N,) each.

    Parameters
    ----------
    alone
        The galaxies drawn alone (`_draw_alone`).
    sky_variance_njy2
        Typical per-pixel variance of the image, nJy^2 (for HSM's uncertainty only).
    noise
        Noise added to each stamp, nJy per pixel, shape (N, S, S) as ``alone.models.models``; None
        for none.

    Returns
    -------
    shapes
        The output of `psf_corrected_shapes`: ``e1``, ``e2``, ``sigma``, ``resolution``, ``flag``.
    """
    models = alone.models.models
    images = models if noise is None else models + torch.as_tensor(noise, dtype=models.dtype)
    # Every pixel counts as observed: the galaxy alone has no masked pixels to fill with its model.
    drawn = DeblendedSources(
        images, torch.zeros_like(models), alone.models, torch.ones_like(models, dtype=torch.bool)
    )
    return psf_corrected_shapes(drawn, alone.psf_images, sky_variance_njy2)


def _noise_floor_shapes(
    alone: _AloneGalaxies, variance: np.ndarray, sky_variance_njy2: float, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """`psf_corrected_shapes` of the galaxies drawn alone plus the image's pixel noise, shape (N,) each.

    Parameters
    ----------
    alone
        The galaxies drawn alone, as for the noiseless reference (`_draw_alone`).
    variance
        The image's variance, nJy^2, shape (H, W); each stamp pixel gets independent Gaussian noise
        of the variance at that pixel (none beyond the image).
    sky_variance_njy2
        Typical per-pixel variance of the image, nJy^2 (for HSM's uncertainty only).
    rng
        Source of the noise.

    Returns
    -------
    shapes
        The output of `psf_corrected_shapes`: ``e1``, ``e2``, ``sigma``, ``resolution``, ``flag``.

    Notes
    -----
    Scored against the noiseless reference, these shapes give the scatter that the pixel noise
    alone causes, without neighbours, deblending or modelling: the floor of the task's figure.
    """
    sigma = np.sqrt(_stamp_variance(alone.models, variance))
    return _alone_shapes(alone, sky_variance_njy2, rng.standard_normal(sigma.shape) * sigma)


def _intrinsic_distortion(truth: Any) -> np.ndarray:
    """The flux-weighted mean of the true disk's and bulge's pre-PSF distortions, shape (N, 2).

    ``(1 - q^2) / (1 + q^2)`` along twice the position angle for each component; exact for a
    galaxy of one component, a convention for two of different axis ratios.
    """

    def distortion(axis_ratio: np.ndarray) -> np.ndarray:
        return (1.0 - axis_ratio**2) / (1.0 + axis_ratio**2)

    disk_frac = np.asarray(truth["disk_frac"], dtype=np.float64)
    magnitude = disk_frac * distortion(np.asarray(truth["disk_q"], dtype=np.float64)) + (
        1.0 - disk_frac
    ) * distortion(np.asarray(truth["bulge_q"], dtype=np.float64))
    twice_angle = 2.0 * np.radians(np.asarray(truth["position_angle"], dtype=np.float64))
    return np.stack([magnitude * np.cos(twice_angle), magnitude * np.sin(twice_angle)], axis=1)


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
    variance = _variance_njy2(calexp)
    is_galaxy = np.asarray(truth["is_galaxy"], dtype=bool)
    snr = np.zeros(len(truth))
    snr[is_galaxy] = _true_snr(truth[is_galaxy], model.conditions, variance, height, width)
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
    sky_variance = float(np.median(variance))
    # One rendering serves the noiseless reference and the noise floor: same stamps, PSFs and knots.
    alone = _draw_alone(chosen, model.conditions, height, width)
    reference = _alone_shapes(alone, sky_variance)
    floor = _noise_floor_shapes(
        alone, variance, sky_variance, np.random.default_rng((args.seed, _NOISE_FLOOR_STREAM))
    )
    scored = ~reference["flag"]
    true_e = np.stack([reference["e1"], reference["e2"]], axis=1)[scored]
    est_e = np.stack(
        [np.ma.getdata(detected[name])[est_index] for name in ("hsmShapeRegauss_e1", "hsmShapeRegauss_e2")],
        axis=1,
    )[scored]
    residuals = est_e - true_e
    resolved = np.ma.getdata(detected["hsmShapeRegauss_resolution"])[est_index][scored] >= _MIN_RESOLUTION
    results["n_galaxies_snr20"] = int(galaxies.sum())
    results["n_galaxies_snr20_matched"] = int(match.n_matched)
    results["n_galaxies_snr20_hsm_failed"] = int((~measured).sum())
    results["n_galaxies_snr20_reference_failed"] = int((~scored).sum())
    results["n_galaxies_snr20_scored"] = int(scored.sum())
    results["hsm_e_scatter_snr20"] = robust_scatter(residuals)
    results["hsm_e_scatter_snr20_stderr"] = robust_scatter_stderr(residuals)
    results["hsm_e_rms_snr20"] = float(np.sqrt(np.mean(residuals**2))) if residuals.size else math.nan
    results["n_galaxies_snr20_resolved"] = int(resolved.sum())
    results["hsm_resolved_fraction_snr20"] = float(resolved.mean()) if resolved.size else math.nan
    results["hsm_e_scatter_snr20_resolved"] = robust_scatter(residuals[resolved])
    results["hsm_e_scatter_snr20_intrinsic"] = robust_scatter(est_e - _intrinsic_distortion(chosen)[scored])
    # The noise floor: the same scored galaxies alone with the calexp's pixel noise, against the same
    # reference; a failed noisy measurement leaves only this figure, and the resolved sample is the
    # task's (by its measured resolution), so that both figures cover the same galaxies.
    floor_measured = ~floor["flag"][scored]
    floor_residuals = np.stack([floor["e1"], floor["e2"]], axis=1)[scored] - true_e
    results["n_galaxies_snr20_noise_floor_failed"] = int((~floor_measured).sum())
    results["hsm_e_scatter_snr20_noise_floor"] = robust_scatter(floor_residuals[floor_measured])
    results["hsm_e_scatter_snr20_noise_floor_stderr"] = robust_scatter_stderr(floor_residuals[floor_measured])
    results["hsm_e_scatter_snr20_resolved_noise_floor"] = robust_scatter(
        floor_residuals[floor_measured & resolved]
    )
    noise_floor = results["hsm_e_scatter_snr20_noise_floor"]
    results["hsm_e_scatter_snr20_over_noise_floor"] = (
        results["hsm_e_scatter_snr20"] / noise_floor if noise_floor > 0 else math.nan
    )
    results["summary"] = (
        f"tables on {size}x{size}: missing_dp1_columns = {results['missing_dp1_columns']}, felis_valid = "
        f"{results['felis_valid']}, models_bytes_over_calexp_bytes = "
        f"{results['models_bytes_over_calexp_bytes']:.4f}, parent_child_consistent = "
        f"{results['parent_child_consistent']}, hsm_e_scatter_snr20 = {results['hsm_e_scatter_snr20']:.3f} "
        f"(resolved, {results['hsm_resolved_fraction_snr20']:.0%} of them: "
        f"{results['hsm_e_scatter_snr20_resolved']:.3f}), noise floor "
        f"{results['hsm_e_scatter_snr20_noise_floor']:.3f} (resolved "
        f"{results['hsm_e_scatter_snr20_resolved_noise_floor']:.3f}; task / floor "
        f"{results['hsm_e_scatter_snr20_over_noise_floor']:.2f})"
    )
    return results
