"""The Butler-side part of ``bliss-bench robustness``: the catalog of an exposure stored in
instrumental counts with its photometric calibration against that of its nJy twin."""

from __future__ import annotations

__all__ = ["UNITS_COMPARED_COLUMNS", "units_max_rel_diff"]

import numpy as np

from ...io import BlissModel
from .. import BlissDeblendMeasureConfig, BlissDeblendMeasureTask
from ._visit_image_factory import LinearPsfField, make_visit_image

UNITS_COMPARED_COLUMNS: tuple[str, ...] = (
    "x",
    "y",
    "bliss_flux",
    "bliss_fluxErr",
    "bliss_detect_prob",
    "bliss_galaxy_prob",
)
"""Columns of ``bliss_source`` compared between the two exposures."""


def units_max_rel_diff(
    model: BlissModel,
    image_njy: np.ndarray,
    variance_njy2: np.ndarray,
    psf_fwhm_arcsec: float,
    counts_per_njy: float,
) -> float:
    """Largest relative difference of the catalog of an exposure in counts from its nJy twin's.

    The same pixels are stored once in nJy and once in instrumental counts
    (``counts_per_njy`` counts per nJy, with the photometric scaling that
    calibrates them back), and `BlissDeblendMeasureTask` (catalogs only, no
    samples) runs on both.

    Parameters
    ----------
    model
        The model.
    image_njy, variance_njy2
        Background-subtracted image (nJy) and its variance (nJy^2), shape (H, W).
    psf_fwhm_arcsec
        PSF FWHM of the exposure (constant over it), arcsec.
    counts_per_njy
        Calibration of the counts exposure.

    Returns
    -------
    max_rel_diff
        Over the columns `UNITS_COMPARED_COLUMNS` and every source:
        ``|counts - njy| / max(|njy|, 1e-30)``; infinite if the two catalogs
        differ in length, NaN if both are empty.
    """
    conditions = model.conditions
    common = {
        "instrument": "BlissBench",
        "visit": 1,
        "detector": 0,
        "physical_filter": f"{conditions.band}_bench",
        "band": conditions.band,
        "pointing_deg": (150.0, 2.0),
        "pixel_scale_arcsec": conditions.pixel_scale_arcsec,
        "psf_model": conditions.psf_model,
        "moffat_beta": conditions.moffat_beta,
    }
    psf = LinearPsfField(psf_fwhm_arcsec, 0.0, 0.0)
    exposures = [
        make_visit_image(image_njy, variance_njy2, {}, psf, **common, counts_per_njy=per_njy)
        for per_njy in (None, counts_per_njy)
    ]
    config = BlissDeblendMeasureConfig()
    config.do_deblend = False
    config.inference.n_samples = 0
    config.inference.device = "cpu"
    task = BlissDeblendMeasureTask(config=config)
    reference, counts = (task.run(exposure, model).bliss_source for exposure in exposures)
    if len(reference) != len(counts):
        return float("inf")
    if len(reference) == 0:
        return float("nan")
    differences = []
    for column in UNITS_COMPARED_COLUMNS:
        expected = np.asarray(reference[column], dtype=np.float64)
        got = np.asarray(counts[column], dtype=np.float64)
        differences.append(np.max(np.abs(got - expected) / np.maximum(np.abs(expected), 1e-30)))
    return float(max(differences))
