"""Astropy tables of the ``bliss_source`` and ``bliss_catalog_samples`` datasets.

Column names follow the DPDD/SDM where a quantity has a name there (``id``,
``coord_ra``, ``x``, ``xErr``, ``*_flag``) and carry a ``bliss_`` prefix
otherwise.  Every column has a unit (None for dimensionless numbers) and a
description.
"""

from __future__ import annotations

__all__ = [
    "DEBLEND_COLUMNS",
    "SAMPLE_COLUMNS",
    "SOURCE_COLUMNS",
    "TRUTH_COLUMNS",
    "add_deblend_columns",
    "deblended_models_table",
    "samples_table",
    "scene_model_from_table",
    "source_table",
    "truth_table",
]

import math
from collections.abc import Callable

import astropy.units as u
import numpy as np
import torch
from astropy.coordinates import SkyCoord
from astropy.table import MaskedColumn, Table

from ..catalog import FullCatalog
from ..deblend import GalaxyLatents, SourceModels
from ..inference import FrameResult
from ..survey import flux_njy_to_mag

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
) -> Table:
    """The ``bliss_source`` table of one exposure.

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

    Returns
    -------
    table
        One row per source; columns ``id``, ``coord_ra``, ``coord_dec``,
        `SOURCE_COLUMNS`, ``visit``, ``detector``.
    """
    catalog = _shifted(result.catalog, x0, y0)
    n = int(catalog.n_sources[0])
    if len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} sources.")
    table = Table()
    table["id"] = np.asarray(ids, dtype=np.int64)
    table["id"].description = "Unique source ID (visit, detector and a counter packed into 64 bits)."
    _fill(table, [catalog], SOURCE_COLUMNS, pixel_to_sky)
    _data_id_columns(table, n, visit, detector)
    return _ordered(table, ["id", "coord_ra", "coord_dec"])


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
    _data_id_columns(table, n, visit, detector)
    return _ordered(table, ["id", "coord_ra", "coord_dec"])


DEBLEND_COLUMNS: tuple[tuple[str, str, u.UnitBase | None, str], ...] = (
    (
        "bliss_deblend_flux",
        "flux_njy",
        u.nJy,
        "Flux of the deblended image in the source's footprint "
        "(model isophote at 1 sigma of the noise), scaled by the model's total over its footprint flux.",
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
    """Add `DEBLEND_COLUMNS` to a ``bliss_source`` table; undefined values are masked, never NaN."""
    for name, key, unit, description in DEBLEND_COLUMNS:
        values = np.asarray(measurements[key])
        if values.dtype.kind == "f":
            table[name] = MaskedColumn(values, mask=~np.isfinite(values), fill_value=np.nan)
        else:
            table[name] = values
        table[name].unit = unit
        table[name].description = description


def deblended_models_table(
    models: SourceModels, ids: np.ndarray, x0: int, y0: int, latents: GalaxyLatents | None = None
) -> Table:
    """The ``bliss_deblended_models`` table: one model stamp per source.

    Parameters
    ----------
    models
        Model stamps (local image coordinates).
    ids
        Source IDs (as in ``bliss_source``), shape (N,).
    x0, y0
        Parent-pixel coordinates of the first array element of the image.
    latents
        The galaxy autoencoder's posteriors, when it modelled the galaxies.

    Returns
    -------
    table
        Columns ``id``, ``stamp_x0``, ``stamp_y0`` (parent pixel of stamp
        element [0, 0]), ``stamp_half_size``, ``model`` (N, S, S), nJy per
        pixel, ``model_type`` and, with latents, ``ae_latent_mean`` and
        ``ae_latent_std`` (N, D; masked where the source has none) and
        ``ae_flux`` (nJy).
    """
    table = Table()
    table["id"] = np.asarray(ids, dtype=np.int64)
    table["id"].description = "Source ID, as in bliss_source."
    table["stamp_x0"] = models.x0.numpy() + x0
    table["stamp_x0"].unit = u.pix
    table["stamp_x0"].description = "Parent column of the stamp's first pixel (model[:, 0, 0])."
    table["stamp_y0"] = models.y0.numpy() + y0
    table["stamp_y0"].unit = u.pix
    table["stamp_y0"].description = "Parent row of the stamp's first pixel."
    table["stamp_half_size"] = models.half_size.numpy()
    table["stamp_half_size"].unit = u.pix
    table[
        "stamp_half_size"
    ].description = "Half-size h of the source's own stamp: the centred 2h+1 square of the stored stamp."
    table["model"] = models.models.numpy().astype(np.float32)
    table["model"].unit = u.nJy
    table["model"].description = "PSF-convolved model of the source per pixel (zero beyond the image)."
    modelled = np.zeros(len(table), dtype=bool) if latents is None else latents.modelled.numpy()
    table["model_type"] = np.where(modelled, "autoencoder", "parametric")
    table["model_type"].description = (
        "'autoencoder': galaxy rendered by the autoencoder's decoder; 'parametric': the PSF for a star, "
        "the bulge+disk estimate for a galaxy."
    )
    if latents is not None:
        for name, values, description in (
            (
                "ae_latent_mean",
                latents.latent_mean,
                "Posterior mean of the autoencoder latent code.",
            ),
            ("ae_latent_std", latents.latent_std, "Posterior standard deviation of the latent code."),
            ("ae_flux", latents.flux_njy, "The autoencoder's posterior median flux of the galaxy."),
        ):
            array = values.double().numpy()
            table[name] = MaskedColumn(array, mask=~np.isfinite(array), fill_value=np.nan)
            table[name].description = description
        table["ae_flux"].unit = u.nJy
    return table


def scene_model_from_table(table: Table, x0: int, y0: int, height: int, width: int) -> np.ndarray:
    """Rebuild the scene model image (sum of all source models) from a ``bliss_deblended_models`` table.

    Parameters
    ----------
    table
        The table.
    x0, y0, height, width
        Parent-pixel box of the output image.

    Returns
    -------
    scene
        Shape (height, width), nJy per pixel.
    """
    stamps = np.asarray(table["model"], dtype=np.float64)
    scene = np.zeros((height, width))
    if len(table) == 0:
        return scene
    size = stamps.shape[-1]
    offsets = np.arange(size)
    rows = np.asarray(table["stamp_y0"])[:, None, None] - y0 + offsets[None, :, None]
    cols = np.asarray(table["stamp_x0"])[:, None, None] - x0 + offsets[None, None, :]
    rows, cols = np.broadcast_arrays(rows, cols)
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    np.add.at(scene, (rows[inside], cols[inside]), stamps[inside])
    return scene
