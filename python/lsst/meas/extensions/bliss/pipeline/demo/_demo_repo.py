"""A Butler repo of simulated calexps with truth tables, built from scratch (``bliss-make-demo-repo``)."""

from __future__ import annotations

__all__ = ["DEMO_REPO_MARKER", "DemoRepoConfig", "build_demo_repo"]

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lsst.daf.butler import Butler, Config, DatasetType

from ...catalog import SOURCE_FIELDS, FullCatalog
from ...deblend import render_source_models, scene_model
from ...inference import trained_psf_fwhm_range_arcsec
from ...io import BlissModel, atomic_write_path, load_default_model
from ...simulation import (
    ImageSimulator,
    SimulatorConfig,
    add_detector_defects,
    saturated_pixels,
)
from ...survey import MASK_PLANES, SurveyConditions, mag_to_flux_njy
from .. import truth_table
from ._visit_image_factory import DEMO_MASK_PLANES, LinearPsfField, make_visit_image

DEMO_REPO_MARKER = "bliss_demo_repo.json"
"""File that `build_demo_repo` writes at the root of every repo it makes (its config, as JSON);
only a directory holding it (and a ``butler.yaml``) may be replaced with ``overwrite``."""

_DAY_OBS = 20261124
_FIRST_VISIT = 1000


@dataclasses.dataclass(frozen=True)
class DemoRepoConfig:
    """What `build_demo_repo` simulates.

    Attributes
    ----------
    n_visits, n_detectors
        Visits, and detectors per visit.
    height, width
        Detector size in pixels (any size of at least 64 x 64).
    seed
        Seed of the whole repo (sources, noise, PSFs, defects).
    instrument, physical_filter
        Names of the simulated instrument and its filter (the band is the model's).
    calexp_collection
        RUN collection of the calexps and truth tables.
    psf_fwhm_range_arcsec
        Range within which each detector's linearly varying PSF FWHM stays;
        None uses the model's trained range narrowed by 10% at each end.
    defects
        Add bad columns, saturated cores, cosmic rays, a NO_DATA corner and
        EDGE pixels.
    saturated_star_mag
        Add one star this bright (AB mag) per detector, saturated at the
        full well with its excess charge bled along its columns (SAT), and
        list it in the truth; None for none.
    counts_calexps
        How many calexps (the last ones, in visit then detector order) are
        stored in instrumental counts with the photometric scaling that
        calibrates them, as DC2 and DP0.2 calexps are, instead of in nJy.
    visit_bands
        Band of each visit, repeated in turn over the visits (each a band the
        model was trained for; the filters are then named ``<band>_sim``);
        empty (the default): every visit in the model's nominal band, with
        the filter ``physical_filter``.
    """

    n_visits: int = 2
    n_detectors: int = 2
    height: int = 1024
    width: int = 1024
    seed: int = 20261124
    instrument: str = "BlissSim"
    physical_filter: str = "r_sim"
    calexp_collection: str = "BlissSim/calexp"
    psf_fwhm_range_arcsec: tuple[float, float] | None = None
    defects: bool = True
    saturated_star_mag: float | None = 13.5
    counts_calexps: int = 1
    visit_bands: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("n_visits", "n_detectors"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1.")
        if not 0 <= self.counts_calexps <= self.n_visits * self.n_detectors:
            raise ValueError(
                f"counts_calexps={self.counts_calexps} must lie between 0 and the number of calexps, "
                f"{self.n_visits * self.n_detectors}."
            )
        for name in ("height", "width"):
            if getattr(self, name) < 64:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 64 pixels.")
        if self.psf_fwhm_range_arcsec is not None:
            low, high = self.psf_fwhm_range_arcsec
            if not 0 < low <= high:
                raise ValueError(
                    f"psf_fwhm_range_arcsec={self.psf_fwhm_range_arcsec} must satisfy 0 < low <= high."
                )


def _psf_field(
    rng: np.random.Generator, fwhm_range: tuple[float, float], height: int, width: int
) -> LinearPsfField:
    """A PSF whose FWHM changes linearly by up to a quarter of the range along each axis, within the range."""
    low, high = fwhm_range
    quarter = 0.25 * (high - low)
    change_x, change_y = rng.uniform(-quarter, quarter, size=2)
    origin_low = low - min(0.0, change_x) - min(0.0, change_y)
    origin_high = high - max(0.0, change_x) - max(0.0, change_y)
    return LinearPsfField(
        fwhm_origin_arcsec=float(rng.uniform(origin_low, origin_high)),
        gradient_x=float(change_x / max(width - 1, 1)),
        gradient_y=float(change_y / max(height - 1, 1)),
    )


def _bright_star(
    rng: np.random.Generator, config: DemoRepoConfig, conditions: SurveyConditions
) -> FullCatalog:
    """One star of ``config.saturated_star_mag`` at a random position away from the edges."""
    margin = min(config.height, config.width) // 8
    fields = {name: torch.zeros(1, 1) for name in SOURCE_FIELDS}
    fields["flux_njy"][0, 0] = float(mag_to_flux_njy(config.saturated_star_mag))
    fields["is_galaxy"] = torch.zeros(1, 1, dtype=torch.bool)
    fields["disk_q"] = fields["bulge_q"] = torch.ones(1, 1)
    x = torch.tensor([[float(rng.uniform(margin, config.width - margin))]])
    y = torch.tensor([[float(rng.uniform(margin, config.height - margin))]])
    return FullCatalog(config.height, config.width, torch.ones(1, dtype=torch.int64), x, y, fields)


def _add_saturated_star(
    star: FullCatalog,
    field: LinearPsfField,
    conditions: SurveyConditions,
    image: np.ndarray,
    variance: np.ndarray,
    mask_bits: np.ndarray,
    noiseless: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """Add a star with noise, clip it at the full well and bleed the excess along its columns (in place)."""
    height, width = image.shape
    fwhm_pix = field.fwhm_at(star.x[0].numpy(), star.y[0].numpy()) / conditions.pixel_scale_arcsec
    models = render_source_models(star, torch.as_tensor(fwhm_pix), conditions, height, width)
    light = scene_model(models, height, width).numpy()
    gain = conditions.njy_to_electrons
    image += (light + rng.normal(size=light.shape) * np.sqrt(np.clip(light, 0, None) / gain)).astype(
        image.dtype
    )
    variance += light / gain
    # A pixel holds at most the full well (sky plus sources); the excess bleeds along the columns.
    charge_e = (noiseless + light + conditions.sky_level_njy) * gain
    saturated = saturated_pixels(torch.from_numpy(charge_e), conditions.full_well_e).numpy()
    image[saturated] = conditions.full_well_e / gain - conditions.sky_level_njy
    mask_bits[saturated] |= 1 << MASK_PLANES["SAT"]


def _mask_planes(mask_bits: np.ndarray) -> dict[str, np.ndarray]:
    return {
        name: (mask_bits & (1 << bit)) != 0 for name, bit in MASK_PLANES.items() if name in DEMO_MASK_PLANES
    }


def _visit_filters(config: DemoRepoConfig, model: BlissModel) -> list[tuple[str, str]]:
    """(band, physical filter) of each visit.

    Raises
    ------
    ValueError
        If a band of ``config.visit_bands`` is not one the model was trained for.
    """
    if not config.visit_bands:
        return [(model.conditions.band, config.physical_filter)] * config.n_visits
    untrained = [band for band in config.visit_bands if band not in model.trained_bands]
    if untrained:
        raise ValueError(
            f"visit_bands={list(config.visit_bands)}: the model was not trained for band(s) {untrained} "
            f"(its bands: {list(model.trained_bands)}); use a model trained for them."
        )
    bands = [config.visit_bands[index % len(config.visit_bands)] for index in range(config.n_visits)]
    return [(band, f"{band}_sim") for band in bands]


def _register(butler: Butler, config: DemoRepoConfig, filters: list[tuple[str, str]]) -> None:
    registry = butler.registry
    registry.insertDimensionData(
        "instrument",
        {
            "name": config.instrument,
            "visit_max": _FIRST_VISIT + config.n_visits,
            "detector_max": config.n_detectors,
            "exposure_max": _FIRST_VISIT + config.n_visits,
        },
    )
    for band, physical_filter in sorted(set(filters)):
        registry.insertDimensionData(
            "physical_filter", {"instrument": config.instrument, "name": physical_filter, "band": band}
        )
    registry.insertDimensionData("day_obs", {"instrument": config.instrument, "id": _DAY_OBS})
    for detector in range(config.n_detectors):
        registry.insertDimensionData(
            "detector", {"instrument": config.instrument, "id": detector, "full_name": f"S{detector:02d}"}
        )
    for index in range(config.n_visits):
        visit = _FIRST_VISIT + index
        registry.insertDimensionData(
            "visit",
            {
                "instrument": config.instrument,
                "id": visit,
                "name": f"sim{visit}",
                "physical_filter": filters[index][1],
                "day_obs": _DAY_OBS,
            },
        )
        for detector in range(config.n_detectors):
            # pipetask's graph builder needs the visit-detector join rows (regions may be empty).
            registry.insertDimensionData(
                "visit_detector_region",
                {"instrument": config.instrument, "visit": visit, "detector": detector},
            )
    dimensions = ("instrument", "visit", "detector")
    registry.registerDatasetType(DatasetType("calexp", dimensions, "VisitImage", universe=butler.dimensions))
    registry.registerDatasetType(
        DatasetType("bliss_truth", dimensions, "ArrowAstropy", universe=butler.dimensions)
    )


def _write_demo_repo_marker(root: Path, config: DemoRepoConfig) -> None:
    """Mark ``root`` as a repo made by `build_demo_repo`, which ``overwrite`` may then replace."""
    record = {"made_by": "lsst.meas.extensions.bliss build_demo_repo", "config": dataclasses.asdict(config)}
    with atomic_write_path(root / DEMO_REPO_MARKER) as temporary:
        temporary.write_text(json.dumps(record, indent=1) + "\n")


def _check_replaceable_demo_repo(root: Path) -> None:
    """Refuse to delete ``root`` unless it is a Butler repo made by `build_demo_repo`.

    Overwriting deletes the whole directory tree, so it is allowed only for a
    real directory (not a symbolic link) holding both a ``butler.yaml`` and
    the `DEMO_REPO_MARKER` that `build_demo_repo` writes into every repo it
    makes.

    Raises
    ------
    FileExistsError
        Naming ``root`` and what it lacks.
    """
    if root.is_symlink() or not root.is_dir():
        kind = "a symbolic link" if root.is_symlink() else "not a directory"
        raise FileExistsError(
            f"{root} is {kind}; overwrite replaces only a demo repo directory made by "
            "bliss-make-demo-repo. Choose a new directory."
        )
    missing = [name for name in ("butler.yaml", DEMO_REPO_MARKER) if not (root / name).is_file()]
    if missing:
        raise FileExistsError(
            f"{root} is not a Butler repo made by bliss-make-demo-repo (it has no {' or '.join(missing)}); "
            "overwrite would delete everything in it, so it was left untouched. Choose a new directory, "
            "or delete this one yourself if it is really meant to go."
        )


def build_demo_repo(
    root: str | Path,
    config: DemoRepoConfig | None = None,
    model: BlissModel | None = None,
    overwrite: bool = False,
    log: Any = None,
    registry_db: str | None = None,
) -> dict[str, Any]:
    """Create a Butler repo of simulated calexps and their truth.

    Each detector image is simulated with the core simulator at the model's
    conditions and prior; every source is rendered with the PSF at its own
    position (a FWHM varying linearly across the detector, stored in the
    calexp as a Piff model), then sky noise, and optionally detector defects.

    Parameters
    ----------
    root
        Directory of the new repo (its configuration, file datastore and, by default, SQLite registry).
    config
        What to simulate; default `DemoRepoConfig()`.
    model
        Model whose conditions, prior and band the simulations follow;
        default the packaged model.
    overwrite
        Replace an existing repo at ``root``.
    log
        Receives progress lines (e.g. `print`); default silent.
    registry_db
        SQLAlchemy URL of the registry database (e.g.
        ``postgresql://user@host:port/database``, an empty database or one
        whose schema this repo may create); default a SQLite file in ``root``.

    Returns
    -------
    summary
        ``root``, ``calexp_collection``, ``data_ids`` (list of dicts),
        ``n_truth`` (sources per data ID) and ``counts_data_ids`` (the data
        IDs of the calexps stored in instrumental counts).

    Raises
    ------
    FileExistsError
        If ``root`` is not empty and ``overwrite`` is False, or ``overwrite``
        is True but ``root`` is not a repo that this function made (it
        carries `DEMO_REPO_MARKER`; see `_check_replaceable_demo_repo`).
    ValueError
        If the configured PSF range leaves the model's trained range.
    """
    config = config or DemoRepoConfig()
    model = model or load_default_model()
    root = Path(root)
    trained = trained_psf_fwhm_range_arcsec(model)
    if config.psf_fwhm_range_arcsec is None:
        margin = 0.1 * (trained[1] - trained[0])
        fwhm_range = (trained[0] + margin, trained[1] - margin)
    else:
        fwhm_range = config.psf_fwhm_range_arcsec
        if fwhm_range[0] < trained[0] or fwhm_range[1] > trained[1]:
            raise ValueError(
                f"psf_fwhm_range_arcsec={fwhm_range} leaves the model's trained range {trained}; the "
                "demo would then fail the deblend task's compatibility check."
            )
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        if not overwrite:
            raise FileExistsError(f"{root} is not empty; choose a new directory or pass overwrite=True.")
        _check_replaceable_demo_repo(root)
        shutil.rmtree(root)
    conditions = model.conditions
    tile = model.encoder.config.tile_size
    Butler.makeRepo(str(root), config=Config({"registry": {"db": registry_db}}) if registry_db else None)
    _write_demo_repo_marker(root, config)
    butler = Butler.from_config(str(root), writeable=True, run=config.calexp_collection)
    summary: dict[str, Any] = {
        "root": str(root),
        "calexp_collection": config.calexp_collection,
        "data_ids": [],
    }
    summary["n_truth"] = []
    summary["counts_data_ids"] = []
    try:
        filters = _visit_filters(config, model)
        _register(butler, config, filters)
        simulators = {
            band: ImageSimulator(
                model.conditions_for_band(band),
                model.prior.without_bright_stars(),
                SimulatorConfig(
                    image_height=tile * math.ceil(config.height / tile),
                    image_width=tile * math.ceil(config.width / tile),
                    tile_size=tile,
                ),
                device="cpu",
            )
            for band in {band for band, _ in filters}
        }
        exposures = [
            (_FIRST_VISIT + index, detector)
            for index in range(config.n_visits)
            for detector in range(config.n_detectors)
        ]
        in_counts = set(exposures[len(exposures) - config.counts_calexps :])
        for index in range(config.n_visits):
            visit = _FIRST_VISIT + index
            band, physical_filter = filters[index]
            conditions = model.conditions_for_band(band)
            simulator = simulators[band]
            # Instrumental counts at the band's zero point and the survey's gain (ADU per nJy).
            counts_per_njy = conditions.njy_to_electrons / conditions.gain_e_per_adu
            for detector in range(config.n_detectors):
                rng = np.random.default_rng([config.seed, visit, detector])
                field = _psf_field(rng, fwhm_range, config.height, config.width)
                batch = simulator.sample(1, seed=int(rng.integers(2**62)), psf_fwhm_at=field.fwhm_at)
                image = batch.image[0, : config.height, : config.width].numpy().astype(np.float32)
                variance = batch.variance[0, : config.height, : config.width].numpy()
                mask_bits = batch.mask[0, : config.height, : config.width].numpy().astype(np.int64)
                # The simulation covers whole tiles; the truth keeps what falls on the detector.
                truth = batch.truth
                on_detector = (truth.x < config.width - 0.5) & (truth.y < config.height - 0.5)
                truth = truth.select(on_detector)
                truth = dataclasses.replace(truth, height=config.height, width=config.width)
                if config.saturated_star_mag is not None:
                    star = _bright_star(rng, config, conditions)
                    noiseless = batch.noiseless[0, : config.height, : config.width].numpy()
                    _add_saturated_star(star, field, conditions, image, variance, mask_bits, noiseless, rng)
                    # Fields the prior adds (a realistic population's knots) are zero for the star.
                    extra = {
                        name: torch.zeros(star.x.shape, dtype=value.dtype)
                        for name, value in truth.fields.items()
                        if name not in star.fields
                    }
                    truth = truth.concatenate(dataclasses.replace(star, fields={**star.fields, **extra}))
                if config.defects:
                    add_detector_defects(mask_bits, image, rng)
                pointing = (
                    150.0 + 0.2 * index,
                    2.0 + detector * 1.05 * config.height * conditions.pixel_scale_arcsec / 3600,
                )
                calexp = make_visit_image(
                    image,
                    variance,
                    _mask_planes(mask_bits),
                    field,
                    instrument=config.instrument,
                    visit=visit,
                    detector=detector,
                    physical_filter=physical_filter,
                    band=band,
                    pointing_deg=pointing,
                    pixel_scale_arcsec=conditions.pixel_scale_arcsec,
                    psf_model=conditions.psf_model,
                    moffat_beta=conditions.moffat_beta,
                    counts_per_njy=counts_per_njy if (visit, detector) in in_counts else None,
                )
                n_truth = int(truth.n_sources[0])
                table = truth_table(
                    truth,
                    calexp.sky_projection.pixel_to_sky,
                    field.fwhm_at(truth.x[0, :n_truth].numpy(), truth.y[0, :n_truth].numpy()),
                    visit,
                    detector,
                )
                data_id = {"instrument": config.instrument, "visit": visit, "detector": detector}
                butler.put(calexp, "calexp", data_id)
                butler.put(table, "bliss_truth", data_id)
                summary["data_ids"].append(data_id)
                if (visit, detector) in in_counts:
                    summary["counts_data_ids"].append(data_id)
                summary["n_truth"].append(len(table))
                if log is not None:
                    corner = field.fwhm_at(config.width - 1, config.height - 1)
                    log(
                        f"visit {visit} detector {detector}: {len(table)} sources, PSF FWHM "
                        f'{field.fwhm_at(0, 0):.2f}" at (0, 0) to {corner:.2f}" at the far corner'
                    )
    finally:
        butler.close()
    return summary
