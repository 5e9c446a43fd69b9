"""Astropy tables of the ``bliss_source`` and ``bliss_catalog_samples`` datasets.

Column names, units and types follow the Rubin DP1 ``Source`` table where the
quantity is the same (``sourceId``, ``parentSourceId``, ``coord_ra``, ``raErr``,
``x``, ``xErr``, ``deblend_nChild``, ``pixelFlags_*``, ``ixx``,
``hsmShapeRegauss_*``, ...) and carry a ``bliss_`` prefix otherwise.  Every
column has a unit (None for dimensionless numbers) and a description; the
package's Felis schema (``data/bliss_schema.yaml``) lists them all.
"""

from __future__ import annotations

__all__ = [
    "DEBLEND_COLUMNS",
    "MODELS_FORMAT_VERSION",
    "PIXEL_FLAG_PLANES",
    "SAMPLE_COLUMNS",
    "SOURCE_COLUMNS",
    "TRUTH_COLUMNS",
    "add_blend_families",
    "add_deblend_columns",
    "add_pixel_flag_columns",
    "add_sample_families",
    "children",
    "deblended_models_table",
    "models_from_table",
    "samples_table",
    "scene_model_from_table",
    "source_table",
    "truth_table",
]

import dataclasses
import math
from collections.abc import Callable

import astropy.units as u
import numpy as np
import torch
from astropy.coordinates import SkyCoord
from astropy.table import Column, MaskedColumn, Table, vstack

from ..catalog import SOURCE_FIELDS, FullCatalog
from ..deblend import BlendFamilies, GalaxyLatents, SourceModels, models_from_parameters
from ..inference import FrameResult
from ..network import GalaxyAutoencoder
from ..rendering import KNOT_FIELD_DESCRIPTIONS
from ..survey import SurveyConditions, flux_njy_to_mag

# (column, unit, description, value of a catalog) with the catalog's positions already in parent pixels.
_ColumnSpec = tuple[str, u.UnitBase | None, str, Callable[[FullCatalog], np.ndarray]]


def _field(name: str, scale: float = 1.0) -> Callable[[FullCatalog], np.ndarray]:
    def value(catalog: FullCatalog) -> np.ndarray:
        n = int(catalog.n_sources[0])
        return catalog.fields[name][0, :n].double().numpy() * scale

    return value


def _position(axis: str) -> Callable[[FullCatalog], np.ndarray]:
    def value(catalog: FullCatalog) -> np.ndarray:
        n = int(catalog.n_sources[0])
        return getattr(catalog, axis)[0, :n].double().numpy()

    return value


def _flag(name: str) -> Callable[[FullCatalog], np.ndarray]:
    def value(catalog: FullCatalog) -> np.ndarray:
        n = int(catalog.n_sources[0])
        return catalog.fields[name][0, :n].bool().numpy()

    return value


_SHAPE_COLUMNS: tuple[_ColumnSpec, ...] = (
    ("bliss_disk_frac", None, "Fraction of a galaxy's flux in its exponential disk.", _field("disk_frac")),
    ("bliss_disk_hlr", u.arcsec, "Half-light radius of the galaxy's disk.", _field("disk_hlr_arcsec")),
    ("bliss_disk_q", None, "Axis ratio (minor/major) of the galaxy's disk.", _field("disk_q")),
    ("bliss_bulge_hlr", u.arcsec, "Half-light radius of the galaxy's bulge.", _field("bulge_hlr_arcsec")),
    ("bliss_bulge_q", None, "Axis ratio (minor/major) of the galaxy's bulge.", _field("bulge_q")),
    (
        "bliss_position_angle",
        u.deg,
        "Major-axis angle of the galaxy, counter-clockwise from the +x pixel axis.",
        _field("position_angle_rad", 180.0 / math.pi),
    ),
)

SOURCE_COLUMNS: tuple[_ColumnSpec, ...] = (
    ("x", u.pix, "Column position (parent pixels, pixel centres at integers).", _position("x")),
    ("y", u.pix, "Row position (parent pixels, pixel centres at integers).", _position("y")),
    ("xErr", u.pix, "Posterior standard deviation of x.", _field("x_err")),
    ("yErr", u.pix, "Posterior standard deviation of y.", _field("y_err")),
    (
        "bliss_detect_prob",
        None,
        "Posterior probability that the source's tile holds a source.",
        _field("detection_prob"),
    ),
    ("bliss_galaxy_prob", None, "Posterior probability that the source is a galaxy.", _field("galaxy_prob")),
    ("bliss_flux", u.nJy, "Posterior point estimate (median) of the total flux.", _field("flux_njy")),
    ("bliss_fluxErr", u.nJy, "Posterior standard deviation of the total flux.", _field("flux_err_njy")),
    ("bliss_flux_q16", u.nJy, "16% posterior quantile of the total flux.", _field("flux_q16_njy")),
    ("bliss_flux_q84", u.nJy, "84% posterior quantile of the total flux.", _field("flux_q84_njy")),
    *_SHAPE_COLUMNS,
    (
        "bliss_masked_flag",
        None,
        "The source's footprint touches pixels that were invalid network inputs (masked, non-finite "
        "or with non-positive variance).",
        _flag("flag_masked"),
    ),
    (
        "bliss_image_edge_flag",
        None,
        "The source's footprint reaches beyond the image.",
        _flag("flag_image_edge"),
    ),
    (
        "extendedness",
        None,
        "1 for a galaxy (bliss_galaxy_prob > 0.5), 0 for a point source; bliss_galaxy_prob is the "
        "probability itself.",
        lambda catalog: (_field("galaxy_prob")(catalog) > 0.5).astype(np.float64),
    ),
    (
        "bliss_out_of_range_flag",
        None,
        "The exposure lies outside the model's trained conditions (pixel scale, band, PSF size or depth) "
        "and was processed anyway (inference.out_of_range='flag').",
        _flag("flag_out_of_range"),
    ),
)
"""Columns of ``bliss_source`` computed from the catalog (besides ids and sky coordinates)."""

SAMPLE_COLUMNS: tuple[_ColumnSpec, ...] = (
    ("x", u.pix, "Column position (parent pixels, pixel centres at integers).", _position("x")),
    ("y", u.pix, "Row position (parent pixels, pixel centres at integers).", _position("y")),
    ("bliss_flux", u.nJy, "Total flux of the source in this sample.", _field("flux_njy")),
    ("bliss_is_galaxy", None, "The source is a galaxy in this sample.", _flag("is_galaxy")),
    *_SHAPE_COLUMNS,
)
"""Columns of ``bliss_catalog_samples`` computed from each sample catalog."""

TRUTH_COLUMNS: tuple[_ColumnSpec, ...] = tuple(
    (name.removeprefix("bliss_"), unit, description.replace(" in this sample", ""), value)
    for name, unit, description, value in SAMPLE_COLUMNS
)
"""Columns of a simulation's truth table (``bliss_truth``): the sample columns without prefix."""


def _shifted(catalog: FullCatalog, x0: int, y0: int) -> FullCatalog:
    return FullCatalog(
        catalog.height, catalog.width, catalog.n_sources, catalog.x + x0, catalog.y + y0, catalog.fields
    )


def _fill(
    table: Table,
    catalogs: list[FullCatalog],
    columns: tuple[_ColumnSpec, ...],
    pixel_to_sky: Callable[..., SkyCoord],
) -> None:
    """Add ``columns`` (concatenated over ``catalogs``, at least one) and sky coordinates to ``table``."""
    for name, unit, description, value in columns:
        table[name] = np.concatenate([value(catalog) for catalog in catalogs])
        table[name].unit = unit
        table[name].description = description
    if len(table):
        coord = pixel_to_sky(x=np.asarray(table["x"], dtype=float), y=np.asarray(table["y"], dtype=float))
        ra, dec = np.atleast_1d(coord.ra.to_value(u.deg)), np.atleast_1d(coord.dec.to_value(u.deg))
    else:
        ra = dec = np.zeros(0)  # AST refuses to transform zero points
    for name, angle, axis in (("coord_ra", ra, "Right ascension"), ("coord_dec", dec, "Declination")):
        table[name] = angle
        table[name].unit = u.deg
        table[name].description = f"{axis} (ICRS) of the position, from the exposure's WCS."


def _data_id_columns(table: Table, n: int, visit: int, detector: int) -> None:
    table["visit"] = np.full(n, visit, dtype=np.int64)
    table["visit"].description = "Visit of the exposure."
    table["detector"] = np.full(n, detector, dtype=np.int32)
    table["detector"].description = "Detector of the exposure."


def _sky_errors(table: Table, pixel_to_sky: Callable[..., SkyCoord]) -> None:
    """Add ``raErr``, ``decErr`` and ``ra_dec_Cov`` (degrees of right ascension and declination)
    from ``xErr``, ``yErr`` through the local Jacobian of the WCS (central differences of half a
    pixel); the posterior's x and y are independent."""
    n = len(table)
    if n:
        x, y = np.asarray(table["x"], dtype=float), np.asarray(table["y"], dtype=float)
        step = 0.5
        offsets = ((step, 0.0), (-step, 0.0), (0.0, step), (0.0, -step))
        sky = [pixel_to_sky(x=x + dx, y=y + dy) for dx, dy in offsets]
        ra = [np.atleast_1d(coord.ra.to_value(u.deg)) for coord in sky]
        dec = [np.atleast_1d(coord.dec.to_value(u.deg)) for coord in sky]
        # Right ascension wraps at 360 degrees.
        dra_dx = ((ra[0] - ra[1] + 180.0) % 360.0 - 180.0) / (2 * step)
        dra_dy = ((ra[2] - ra[3] + 180.0) % 360.0 - 180.0) / (2 * step)
        ddec_dx, ddec_dy = (dec[0] - dec[1]) / (2 * step), (dec[2] - dec[3]) / (2 * step)
        var_x = np.asarray(table["xErr"], dtype=float) ** 2
        var_y = np.asarray(table["yErr"], dtype=float) ** 2
        var_ra = dra_dx**2 * var_x + dra_dy**2 * var_y
        var_dec = ddec_dx**2 * var_x + ddec_dy**2 * var_y
        cov = dra_dx * ddec_dx * var_x + dra_dy * ddec_dy * var_y
    else:
        var_ra = var_dec = cov = np.zeros(0)
    for name, values, unit, description in (
        ("raErr", np.sqrt(var_ra), u.deg, "Posterior standard deviation of the right ascension."),
        ("decErr", np.sqrt(var_dec), u.deg, "Posterior standard deviation of the declination."),
        ("ra_dec_Cov", cov, u.deg**2, "Posterior covariance of right ascension and declination."),
    ):
        table[name] = values.astype(np.float32)
        table[name].unit = unit
        table[name].description = description


def _family_columns(table: Table, n: int) -> None:
    table["parentSourceId"] = np.zeros(n, dtype=np.int64)
    table[
        "parentSourceId"
    ].description = (
        "sourceId of the source's blend family (its parent row); 0 for an isolated source and for a parent."
    )
    table["deblend_nChild"] = np.zeros(n, dtype=np.int32)
    table[
        "deblend_nChild"
    ].description = (
        "Number of children of a parent row (a blend family); 0 for every source detected by BLISS."
    )


def _filter_columns(table: Table, n: int, band: str, physical_filter: str) -> None:
    table["band"] = np.full(n, band, dtype=f"U{max(len(band), 1)}")
    table["band"].description = "Band of the exposure."
    table["physical_filter"] = np.full(n, physical_filter, dtype=f"U{max(len(physical_filter), 1)}")
    table["physical_filter"].description = "Physical filter of the exposure."


def _ordered(table: Table, first: list[str]) -> Table:
    return table[first + [name for name in table.colnames if name not in first]]


def source_table(
    result: FrameResult,
    ids: np.ndarray,
    x0: int,
    y0: int,
    pixel_to_sky: Callable[..., SkyCoord],
    visit: int,
    detector: int,
    band: str = "",
    physical_filter: str = "",
) -> Table:
    """The ``bliss_source`` table of one exposure, before deblending (no parent rows).

    Parameters
    ----------
    result
        Output of `infer_frame` on the exposure's pixels.
    ids
        Source IDs, shape (n_sources,), int64.
    x0, y0
        Parent-pixel coordinates of the first array element.
    pixel_to_sky
        ``(x=, y=) -> SkyCoord`` of parent-pixel positions (the exposure's
        sky projection).
    visit, detector
        Data ID values stored in every row.
    band, physical_filter
        The exposure's band and physical filter, stored in every row.

    Returns
    -------
    table
        One row per source; columns ``sourceId``, ``coord_ra``, ``coord_dec``,
        ``raErr``, ``decErr``, ``ra_dec_Cov``, ``parentSourceId`` and
        ``deblend_nChild`` (0 until `add_blend_families`), `SOURCE_COLUMNS`,
        ``visit``, ``detector``, ``band``, ``physical_filter``.
    """
    catalog = _shifted(result.catalog, x0, y0)
    n = int(catalog.n_sources[0])
    if len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} sources.")
    table = Table()
    table["sourceId"] = np.asarray(ids, dtype=np.int64)
    table["sourceId"].description = "Unique source ID (visit, detector and a counter packed into 64 bits)."
    _fill(table, [catalog], SOURCE_COLUMNS, pixel_to_sky)
    _sky_errors(table, pixel_to_sky)
    _family_columns(table, n)
    _data_id_columns(table, n, visit, detector)
    _filter_columns(table, n, band, physical_filter)
    return _ordered(
        table,
        [
            "sourceId",
            "coord_ra",
            "coord_dec",
            "raErr",
            "decErr",
            "ra_dec_Cov",
            "parentSourceId",
            "deblend_nChild",
        ],
    )


def samples_table(
    result: FrameResult, x0: int, y0: int, pixel_to_sky: Callable[..., SkyCoord], visit: int, detector: int
) -> Table:
    """The ``bliss_catalog_samples`` table: all posterior catalog samples, stacked.

    Parameters
    ----------
    result, x0, y0, pixel_to_sky, visit, detector
        As in `source_table`.

    Returns
    -------
    table
        One row per source per sample; columns ``sample`` (index of the
        sample, 0 to K-1), ``coord_ra``, ``coord_dec``, `SAMPLE_COLUMNS`,
        ``visit``, ``detector``.  A sample without sources has no rows, so
        count sources per sample with the ``sample`` column and the number
        of samples stored in the task metadata.
    """
    catalogs = [_shifted(sample, x0, y0) for sample in result.samples]
    table = Table()
    table["sample"] = np.concatenate(
        [np.zeros(0, dtype=np.int32)]
        + [
            np.full(int(catalog.n_sources[0]), index, dtype=np.int32)
            for index, catalog in enumerate(catalogs)
        ]
    )
    # Without samples the columns still exist (empty), taken from the point-estimate catalog's layout.
    no_sources = FullCatalog(
        result.catalog.height,
        result.catalog.width,
        torch.zeros_like(result.catalog.n_sources),
        result.catalog.x,
        result.catalog.y,
        result.catalog.fields,
    )
    _fill(table, catalogs or [no_sources], SAMPLE_COLUMNS, pixel_to_sky)
    table["sample"].description = "Index of the posterior catalog sample (0 to K-1)."
    _data_id_columns(table, len(table), visit, detector)
    return _ordered(table, ["sample", "coord_ra", "coord_dec"])


def truth_table(
    catalog: FullCatalog,
    pixel_to_sky: Callable[..., SkyCoord],
    psf_fwhm_arcsec: np.ndarray,
    visit: int,
    detector: int,
) -> Table:
    """The truth table of a simulated exposure (the ``bliss_truth`` dataset of demo repos).

    Parameters
    ----------
    catalog
        True sources of one image (batch of one), positions in parent pixels.
    pixel_to_sky
        As in `source_table`.
    psf_fwhm_arcsec
        PSF FWHM at each source, shape (n_sources,), arcsec.
    visit, detector
        Data ID values stored in every row.

    Returns
    -------
    table
        Columns ``id`` (1..n), ``coord_ra``, ``coord_dec``, `TRUTH_COLUMNS`,
        ``mag`` (AB), ``psf_fwhm``, ``visit``, ``detector``.
    """
    table = Table()
    n = int(catalog.n_sources[0])
    table["id"] = np.arange(1, n + 1, dtype=np.int64)
    table["id"].description = "Index of the simulated source in this exposure."
    _fill(table, [catalog], TRUTH_COLUMNS, pixel_to_sky)
    table["mag"] = flux_njy_to_mag(np.asarray(table["flux"]))
    table["mag"].unit = u.mag
    table["mag"].description = "AB magnitude of the total flux."
    table["psf_fwhm"] = np.asarray(psf_fwhm_arcsec, dtype=float)
    table["psf_fwhm"].unit = u.arcsec
    table["psf_fwhm"].description = "FWHM of the PSF at the source."
    # A realistic population's star-forming knots, which the four fields define (the renderers draw
    # the same knots from them): kept so that each true galaxy can be drawn again as it was.
    for name, description in KNOT_FIELD_DESCRIPTIONS.items():
        if name in catalog.fields:
            table[name] = catalog.fields[name][0, :n].cpu().numpy().astype(np.float64)
            table[name].description = description
    _data_id_columns(table, n, visit, detector)
    return _ordered(table, ["id", "coord_ra", "coord_dec"])


DEBLEND_COLUMNS: tuple[tuple[str, str, u.UnitBase | None, str], ...] = (
    (
        "bliss_deblend_flux",
        "flux_njy",
        u.nJy,
        "Flux of the deblended image within the model's isophote at flux_footprint_nsigma (default 0.3) "
        "times the noise (below 1 sigma only where the source dominates and the scene model fits), "
        "scaled by the model's total over its flux there.",
    ),
    ("bliss_deblend_fluxErr", "flux_err_njy", u.nJy, "Standard deviation of bliss_deblend_flux."),
    (
        "bliss_e1",
        "e1",
        None,
        "Adaptive-moment (GalSim HSM) distortion e1 of the deblended image, "
        "(a^2 - b^2)/(a^2 + b^2) cos 2 theta, theta from the +x pixel axis (PSF not removed).",
    ),
    ("bliss_e2", "e2", None, "Adaptive-moment distortion e2 of the deblended image (sin 2 theta)."),
    ("bliss_moments_sigma", "sigma_pix", u.pix, "Adaptive-moment size det(M)^(1/4) of the deblended image."),
    (
        "ixx",
        "ixx",
        u.pix**2,
        "Adaptive second moment M_xx of the deblended image (GalSim HSM, PSF not removed).",
    ),
    (
        "iyy",
        "iyy",
        u.pix**2,
        "Adaptive second moment M_yy of the deblended image (GalSim HSM, PSF not removed).",
    ),
    (
        "ixy",
        "ixy",
        u.pix**2,
        "Adaptive second moment M_xy of the deblended image (GalSim HSM, PSF not removed).",
    ),
    (
        "hsmShapeRegauss_e1",
        "hsm_e1",
        None,
        "PSF-corrected distortion e1 of the deblended image: GalSim HSM re-Gaussianization with the "
        "exposure's PSF at the source, axes of the pixel grid.",
    ),
    ("hsmShapeRegauss_e2", "hsm_e2", None, "PSF-corrected distortion e2 of the deblended image."),
    (
        "hsmShapeRegauss_sigma",
        "hsm_sigma",
        None,
        "Per-component uncertainty of hsmShapeRegauss_e1 and hsmShapeRegauss_e2 from the pixel noise.",
    ),
    (
        "hsmShapeRegauss_resolution",
        "hsm_resolution",
        None,
        "Resolution factor R2 = 1 - T_psf / T_gal of the re-Gaussianization, in [0, 1]: 0 for an "
        "unresolved source, towards 1 for one much larger than the PSF (weak-lensing samples commonly "
        "keep R2 >= 0.3).",
    ),
    (
        "hsmShapeRegauss_flag",
        "hsm_flag",
        None,
        "The PSF-corrected shape failed; hsmShapeRegauss_e1, _e2, _sigma and _resolution are null.",
    ),
    (
        "blendedness_abs",
        "blendedness_abs",
        None,
        "How much the neighbours' light adds to the source's: 1 - <m, m> / <m, |scene|> over the "
        "source's stamp, with m its model and scene all sources' models (0 when isolated).",
    ),
    (
        "bliss_stamp_clipped_flag",
        "flag_stamp_clipped",
        None,
        "The source's model stamp reaches beyond the image.",
    ),
    (
        "bliss_moments_failed_flag",
        "flag_moments_failed",
        None,
        "Adaptive moments of the deblended image failed.",
    ),
    ("bliss_no_model_flag", "flag_no_model", None, "The source's model stamp is empty or not finite."),
    (
        "bliss_latent_invalid_flag",
        "flag_latent_invalid",
        None,
        "The galaxy autoencoder gave a non-finite latent posterior or stamp; the parametric model was used.",
    ),
    (
        "bliss_fit_failed_flag",
        "flag_fit_failed",
        None,
        "The fit of the blended source's model to the image failed; the encoder's estimate was used.",
    ),
)
"""Deblending columns of ``bliss_source``: (column, key of `measure_deblended`, unit, description)."""


def add_deblend_columns(table: Table, measurements: dict[str, np.ndarray]) -> None:
    """Add `DEBLEND_COLUMNS` to a ``bliss_source`` table; undefined values are masked, never NaN.

    ``measurements`` holds `measure_deblended`'s values, `psf_corrected_shapes`'s as ``hsm_e1``,
    ``hsm_e2``, ``hsm_sigma``, ``hsm_resolution``, ``hsm_flag``, and `blendedness_abs`'s as
    ``blendedness_abs``.
    """
    for name, key, unit, description in DEBLEND_COLUMNS:
        values = np.asarray(measurements[key])
        if values.dtype.kind == "f":
            table[name] = MaskedColumn(values, mask=~np.isfinite(values), fill_value=np.nan)
        else:
            table[name] = values
        table[name].unit = unit
        table[name].description = description


PIXEL_FLAG_PLANES: tuple[tuple[str, str, bool, str], ...] = (
    ("pixelFlags_bad", "BAD", False, "Bad pixel in the source's footprint."),
    ("pixelFlags_cr", "CR", False, "Cosmic ray in the source's footprint."),
    ("pixelFlags_crCenter", "CR", True, "Cosmic ray in the source's centre (3x3 pixels)."),
    ("pixelFlags_edge", "EDGE", False, "The source's footprint holds EDGE pixels."),
    ("pixelFlags_interpolated", "INTRP", False, "Interpolated pixel in the source's footprint."),
    (
        "pixelFlags_interpolatedCenter",
        "INTRP",
        True,
        "Interpolated pixel in the source's centre (3x3 pixels).",
    ),
    ("pixelFlags_nodata", "NO_DATA", False, "The source's footprint holds NO_DATA pixels."),
    ("pixelFlags_saturated", "SAT", False, "Saturated pixel in the source's footprint."),
    ("pixelFlags_saturatedCenter", "SAT", True, "Saturated pixel in the source's centre (3x3 pixels)."),
    ("pixelFlags_suspect", "SUSPECT", False, "Suspect pixel in the source's footprint."),
    ("pixelFlags_suspectCenter", "SUSPECT", True, "Suspect pixel in the source's centre (3x3 pixels)."),
)
"""Per-plane pixel flags of ``bliss_source``: (column, mask plane, centre only, description).
The footprint is where the source's model exceeds the median pixel noise (its centre pixel
always), or the centre alone without deblending."""


def add_pixel_flag_columns(table: Table, flags: dict[str, np.ndarray]) -> None:
    """Add the `PIXEL_FLAG_PLANES` columns; ``flags`` maps each column name to a (N,) bool array."""
    for name, _, _, description in PIXEL_FLAG_PLANES:
        table[name] = np.asarray(flags[name], dtype=bool)
        table[name].description = description


def children(table: Table) -> Table:
    """The rows of a ``bliss_source`` table that are sources BLISS detected: all but the parents
    of blend families (``deblend_nChild > 0``)."""
    if "deblend_nChild" not in table.colnames:
        return table
    return table[np.asarray(table["deblend_nChild"]) == 0]


def add_blend_families(
    table: Table, families: BlendFamilies, parent_ids: np.ndarray, pixel_to_sky: Callable[..., SkyCoord]
) -> Table:
    """Link the sources of each blend family to a new parent row, as Rubin's deblender does.

    Parameters
    ----------
    table
        ``bliss_source`` rows of the detected sources, in the order of ``families.family``.
    families
        The families (`blend_families`).
    parent_ids
        sourceId of each family's parent, shape (F,), int64.
    pixel_to_sky
        As in `source_table`.

    Returns
    -------
    table
        The sources with ``parentSourceId`` set, followed by one parent row per family:
        ``deblend_nChild`` children, the flux-weighted mean position of its children, the
        data-ID and filter columns, each pixel flag set where a child's is, other flags false
        and every other measurement null.
    """
    n_families = families.n_families
    if len(parent_ids) != n_families:
        raise ValueError(f"{len(parent_ids)} parent IDs for {n_families} blend families.")
    if len(families.family) != len(table):
        raise ValueError(f"{len(families.family)} family indices for {len(table)} sources.")
    table = table.copy()
    member = families.family >= 0
    parent_of = np.zeros(len(table), dtype=np.int64)
    parent_of[member] = np.asarray(parent_ids, dtype=np.int64)[families.family[member]]
    table["parentSourceId"][:] = parent_of
    if n_families == 0:
        return table
    n_children = np.bincount(families.family[member], minlength=n_families)
    weight = np.clip(np.asarray(table["bliss_flux"], dtype=float), 0.0, None)[member] + 1e-12
    family = families.family[member]
    mean_x = np.bincount(family, weight * np.asarray(table["x"])[member], n_families) / np.bincount(
        family, weight, n_families
    )
    mean_y = np.bincount(family, weight * np.asarray(table["y"])[member], n_families) / np.bincount(
        family, weight, n_families
    )
    coord = pixel_to_sky(x=mean_x, y=mean_y)
    given: dict[str, np.ndarray] = {
        "sourceId": np.asarray(parent_ids, dtype=np.int64),
        "parentSourceId": np.zeros(n_families, dtype=np.int64),
        "deblend_nChild": n_children.astype(np.int32),
        "x": mean_x,
        "y": mean_y,
        "coord_ra": np.atleast_1d(coord.ra.to_value(u.deg)),
        "coord_dec": np.atleast_1d(coord.dec.to_value(u.deg)),
    }
    # Properties of the whole exposure, the same on every row (the out-of-range flag among them).
    for name in ("visit", "detector", "band", "physical_filter", "bliss_out_of_range_flag"):
        if name in table.colnames:
            given[name] = np.full(n_families, table[name][0], dtype=table[name].dtype)
    for name, *_ in PIXEL_FLAG_PLANES:
        if name in table.colnames:
            given[name] = np.bincount(family, np.asarray(table[name])[member], n_families) > 0
    parents = Table()
    for name in table.colnames:
        column = table[name]
        if name in given:
            values = given[name].astype(column.dtype)
            parents[name] = Column(values) if not isinstance(column, MaskedColumn) else MaskedColumn(values)
        elif column.dtype.kind == "b":
            parents[name] = np.zeros(n_families, dtype=bool)
        else:
            shape = (n_families, *column.shape[1:])
            parents[name] = MaskedColumn(np.zeros(shape, dtype=column.dtype), mask=np.ones(shape, dtype=bool))
        parents[name].unit = column.unit
        parents[name].description = column.description
    stacked = vstack([table, parents], join_type="exact", metadata_conflicts="silent")
    for name in table.colnames:
        stacked[name].unit = table[name].unit
        stacked[name].description = table[name].description
    return stacked


def add_sample_families(
    table: Table, families: BlendFamilies | None, parent_ids: np.ndarray, x0: int, y0: int
) -> None:
    """Add ``parentSourceId`` to a ``bliss_catalog_samples`` table: the parent of the blend family
    whose region (`BlendFamilies.labels`) holds the sample source's pixel, 0 elsewhere or without
    families."""
    parent_of = np.zeros(len(table), dtype=np.int64)
    if families is not None and len(table) and families.n_families:
        height, width = families.labels.shape
        cols = np.clip(np.round(np.asarray(table["x"], dtype=float)).astype(np.int64) - x0, 0, width - 1)
        rows = np.clip(np.round(np.asarray(table["y"], dtype=float)).astype(np.int64) - y0, 0, height - 1)
        label = families.labels[rows, cols]
        inside = label > 0
        parent_of[inside] = np.asarray(parent_ids, dtype=np.int64)[label[inside] - 1]
    table["parentSourceId"] = parent_of
    table["parentSourceId"].description = (
        "sourceId of the bliss_source blend family whose region holds the source in this sample; 0 "
        "outside every family."
    )


MODELS_FORMAT_VERSION = 2
"""Layout of ``bliss_deblended_models``: 2 stores each source's model parameters (rendered again
on read by `models_from_table`); 1 stored a dense stamp per source."""

_MODEL_PARAMETER_COLUMNS: tuple[tuple[str, str, u.UnitBase | None, str], ...] = (
    ("flux", "flux_njy", u.nJy, "Total flux of the parametric model."),
    ("is_galaxy", "is_galaxy", None, "The parametric model is a galaxy (bulge+disk), else the PSF."),
    ("disk_frac", "disk_frac", None, "Fraction of the galaxy's flux in its exponential disk."),
    ("disk_hlr", "disk_hlr_arcsec", u.arcsec, "Half-light radius of the disk."),
    ("disk_q", "disk_q", None, "Axis ratio (minor/major) of the disk."),
    ("bulge_hlr", "bulge_hlr_arcsec", u.arcsec, "Half-light radius of the bulge."),
    ("bulge_q", "bulge_q", None, "Axis ratio (minor/major) of the bulge."),
    (
        "position_angle",
        "position_angle_rad",
        u.rad,
        "Major-axis angle, counter-clockwise from the +x pixel axis.",
    ),
)
"""Parametric-model columns of ``bliss_deblended_models``: (column, catalog field, unit, description)."""


def deblended_models_table(
    models: SourceModels,
    ids: np.ndarray,
    x0: int,
    y0: int,
    conditions: SurveyConditions,
    max_half_size: int,
    latents: GalaxyLatents | None = None,
) -> Table:
    """The ``bliss_deblended_models`` table: the parameters of every source's model.

    The stamps are not stored; `models_from_table` renders them again (the PSF family, pixel
    scale and image box are in the table's metadata).

    Parameters
    ----------
    models
        The source models (`model_sources`; local image coordinates), with their parameters.
    ids
        Source IDs (as in ``bliss_source``), shape (N,).
    x0, y0
        Parent-pixel coordinates of the first array element of the image.
    conditions
        The model's survey conditions (PSF family, pixel scale) the stamps were rendered with.
    max_half_size
        Largest stamp half-size the models were rendered with, pixels.
    latents
        The galaxy autoencoder's posteriors, when it modelled the galaxies.

    Returns
    -------
    table
        Columns ``sourceId``, ``model_type``, ``x``, ``y`` (parent pixels), the parametric
        parameters, ``psf_fwhm`` (pixels, the FWHM of the conditions' PSF family at the source),
        ``flux_scale``, ``stamp_half_size`` and, with latents, ``ae_latent_mean`` and
        ``ae_latent_std`` (N, D; masked where the source has none) and ``ae_flux`` (nJy).

    Raises
    ------
    ValueError
        If ``models`` do not carry their parameters or ``ids`` does not match them.
    """
    if models.parameters is None or models.psf_fwhm_pix is None:
        raise ValueError("The source models do not carry the parameters they were rendered from.")
    n_sources = len(models)
    if len(ids) != n_sources:
        raise ValueError(f"{len(ids)} ids for {n_sources} source models.")
    catalog = models.parameters
    table = Table()
    table["sourceId"] = np.asarray(ids, dtype=np.int64)
    table["sourceId"].description = "Source ID, as in bliss_source."
    modelled = np.zeros(n_sources, dtype=bool) if latents is None else latents.modelled.numpy()
    table["model_type"] = np.where(modelled, "autoencoder", "parametric")
    table["model_type"].description = (
        "'autoencoder': galaxy rendered by the autoencoder's decoder; 'parametric': the PSF for a star, "
        "the bulge+disk model for a galaxy."
    )
    for name, offset, values in (("x", x0, catalog.x), ("y", y0, catalog.y)):
        table[name] = values[0, :n_sources].double().numpy() + offset
        table[name].unit = u.pix
        table[name].description = f"Model position {name} (parent pixels)."
    for name, field, unit, description in _MODEL_PARAMETER_COLUMNS:
        values = catalog.fields[field][0, :n_sources]
        table[name] = values.bool().numpy() if field == "is_galaxy" else values.float().numpy()
        table[name].unit = unit
        table[name].description = description
    table["psf_fwhm"] = models.psf_fwhm_pix.double().numpy()
    table["psf_fwhm"].unit = u.pix
    table["psf_fwhm"].description = "FWHM of the PSF model (the conditions' PSF family) at the source."
    flux_scale = torch.ones(n_sources) if models.flux_scale is None else models.flux_scale
    table["flux_scale"] = flux_scale.float().numpy()
    table[
        "flux_scale"
    ].description = (
        "Factor applied to the rendered parametric model (a star refitted to its unmasked pixels)."
    )
    table["stamp_half_size"] = models.half_size.numpy().astype(np.int16)
    table["stamp_half_size"].unit = u.pix
    table["stamp_half_size"].description = "Half-size h of the source's model stamp (2h+1 pixels wide)."
    if latents is not None:
        for name, values, description in (
            ("ae_latent_mean", latents.latent_mean, "Posterior mean of the autoencoder latent code."),
            ("ae_latent_std", latents.latent_std, "Posterior standard deviation of the latent code."),
            ("ae_flux", latents.flux_njy, "The autoencoder's posterior median flux of the galaxy."),
        ):
            array = values.float().numpy()
            table[name] = MaskedColumn(array, mask=~np.isfinite(array), fill_value=np.nan)
            table[name].description = description
        table["ae_flux"].unit = u.nJy
    height, width = catalog.height, catalog.width
    table.meta.update(
        {
            "bliss_models_format": MODELS_FORMAT_VERSION,
            "image_x0": int(x0),
            "image_y0": int(y0),
            "image_height": int(height),
            "image_width": int(width),
            "max_half_size": int(max_half_size),
            "conditions": dataclasses.asdict(conditions),
        }
    )
    return table


def models_from_table(table: Table, autoencoder: GalaxyAutoencoder | None = None) -> SourceModels:
    """Render the model stamps of a ``bliss_deblended_models`` table again.

    Parameters
    ----------
    table
        The table (`deblended_models_table`).
    autoencoder
        The model package's galaxy autoencoder (`BlissModel.autoencoder`); needed only when
        rows have ``model_type`` 'autoencoder'.

    Returns
    -------
    models
        The stamps, in the local coordinates of the image box of the table's metadata
        (``image_x0``, ``image_y0``): the stamps the task deblended with, within float32 rounding.

    Raises
    ------
    ValueError
        If the table is not of this layout (`MODELS_FORMAT_VERSION`), or has autoencoder rows
        and no autoencoder is given.
    """
    meta = table.meta
    if meta.get("bliss_models_format") != MODELS_FORMAT_VERSION:
        raise ValueError(
            f"The table has bliss_models_format={meta.get('bliss_models_format')!r}; this version reads "
            f"{MODELS_FORMAT_VERSION} (model parameters). Rerun BlissDeblendMeasureTask to rewrite it."
        )
    x0, y0 = int(meta["image_x0"]), int(meta["image_y0"])
    height, width = int(meta["image_height"]), int(meta["image_width"])
    n_sources = len(table)

    def row_tensor(name: str, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(np.asarray(table[name]), dtype=dtype)[None, :]

    fields = {
        field: row_tensor(name, torch.bool if field == "is_galaxy" else torch.float32)
        for name, field, _, _ in _MODEL_PARAMETER_COLUMNS
    }
    missing = [name for name in SOURCE_FIELDS if name not in fields]
    if missing:
        raise ValueError(f"bliss_deblended_models lacks the fields {missing}.")
    catalog = FullCatalog(
        height,
        width,
        torch.tensor([n_sources]),
        (row_tensor("x", torch.float64) - x0).float(),
        (row_tensor("y", torch.float64) - y0).float(),
        fields,
    )
    latents = None
    if "ae_latent_mean" in table.colnames:
        mean = np.ma.filled(np.ma.asarray(table["ae_latent_mean"], dtype=np.float32), np.nan)
        std = np.ma.filled(np.ma.asarray(table["ae_latent_std"], dtype=np.float32), np.nan)
        flux = np.ma.filled(np.ma.asarray(table["ae_flux"], dtype=np.float32), np.nan)
        modelled = torch.from_numpy(np.asarray(table["model_type"]) == "autoencoder")
        latents = GalaxyLatents(
            torch.from_numpy(mean),
            torch.from_numpy(std),
            torch.from_numpy(flux),
            modelled,
            torch.zeros_like(modelled),
        )
    return models_from_parameters(
        catalog,
        torch.as_tensor(np.asarray(table["psf_fwhm"], dtype=np.float64)),
        SurveyConditions(**meta["conditions"]),
        height,
        width,
        int(meta["max_half_size"]),
        torch.as_tensor(np.asarray(table["flux_scale"], dtype=np.float32)),
        latents,
        autoencoder,
    )


def scene_model_from_table(
    table: Table, x0: int, y0: int, height: int, width: int, autoencoder: GalaxyAutoencoder | None = None
) -> np.ndarray:
    """Rebuild the scene model image (sum of all source models) from a ``bliss_deblended_models`` table.

    Parameters
    ----------
    table
        The table.
    x0, y0, height, width
        Parent-pixel box of the output image.
    autoencoder
        As in `models_from_table`.

    Returns
    -------
    scene
        Shape (height, width), nJy per pixel.
    """
    scene = np.zeros((height, width))
    if len(table) == 0:
        return scene
    models = models_from_table(table, autoencoder)
    stamps = models.models.double().numpy()
    offsets = np.arange(models.stamp_size)
    stamp_x0 = models.x0.numpy() + int(table.meta["image_x0"])
    stamp_y0 = models.y0.numpy() + int(table.meta["image_y0"])
    rows = stamp_y0[:, None, None] - y0 + offsets[None, :, None]
    cols = stamp_x0[:, None, None] - x0 + offsets[None, None, :]
    rows, cols = np.broadcast_arrays(rows, cols)
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    np.add.at(scene, (rows[inside], cols[inside]), stamps[inside])
    return scene
