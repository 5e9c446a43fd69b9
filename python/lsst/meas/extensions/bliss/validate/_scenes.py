"""Held-out validation scenes and the three methods' results on them.

Each `Variation` changes one thing about the model's own simulation (the PSF
FWHM, or the source density); `run_methods_on_scenes` simulates its scenes
with a seed apart from the training seeds and runs BLISS (point estimates and
tile posteriors), SEP and photutils on the same background-subtracted images.
What it keeps is what the metrics need: per-image true and estimated source
lists, and per-tile posterior quantities for calibration.
"""

from __future__ import annotations

__all__ = ["VARIATIONS", "SceneResults", "Variation", "run_methods_on_scenes"]

import dataclasses
import math
import time

import numpy as np
import torch

from ..baselines import run_photutils, run_sep_batch
from ..catalog import FullCatalog, TileCatalog
from ..inference import posterior_to_catalog, run_encoder
from ..io import BlissModel
from ..metrics import ellipticity_from_shape, source_snr_and_blendedness
from ..network import LocationFactor, LogNormalFactor, TilePosterior
from ..simulation import ImageSimulator, SimulatedBatch, SimulatorConfig

METHODS: tuple[str, ...] = ("bliss", "sep", "photutils")
"""The methods compared, in report order."""


@dataclasses.dataclass(frozen=True)
class Variation:
    """One set of validation scenes.

    Attributes
    ----------
    name
        Key in the report (``"default"``, ``"psf_0.6"``, ``"density_x2"``, ...).
    psf_fwhm_arcsec
        PSF FWHM of every scene; `None` for the model conditions' nominal FWHM.
    density_factor
        Multiplies the prior's source density.
    """

    name: str
    psf_fwhm_arcsec: float | None = None
    density_factor: float = 1.0


VARIATIONS: tuple[Variation, ...] = (
    Variation("default"),
    Variation("psf_0.6", psf_fwhm_arcsec=0.6),
    Variation("psf_0.8", psf_fwhm_arcsec=0.8),
    Variation("psf_1.1", psf_fwhm_arcsec=1.1),
    Variation("density_x0.5", density_factor=0.5),
    Variation("density_x2", density_factor=2.0),
)
"""The default conditions, three PSF FWHMs and half and double the source density."""


@dataclasses.dataclass
class SceneResults:
    """What the metrics need from one variation's scenes.

    Per-image lists (one array per scene) are keyed ``true_*`` (``x``, ``y``,
    ``flux`` in nJy, ``is_galaxy``, ``snr``, ``blendedness``, ``e1``, ``e2``
    of the disk, zero for stars) and ``<method>_*`` (``x``, ``y``,
    ``flux`` in nJy, ``snr``; BLISS also ``flux_q16``, ``flux_q84``,
    ``galaxy_prob``, ``detection_prob``, ``e1``, ``e2``).

    Per-tile arrays (concatenated over scenes) are keyed ``tile_*``:
    ``detection_prob`` and ``has_source`` for every tile; for tiles holding a
    true source that BLISS reports (probability > 0.5), the posterior CDF at
    the truth of ``flux``, ``x`` and ``y`` (``pit_*``) and the true SNR of
    the source (``pit_snr``).

    Attributes
    ----------
    variation
        What was simulated.
    psf_fwhm_arcsec
        PSF FWHM of each scene, shape (n_scenes,).
    per_image
        The per-image lists.
    tiles
        The per-tile arrays.
    seconds
        Wall time of each method, seconds.
    example
        The first scene (``image``, ``variance`` as numpy (H, W)) with its
        truth and BLISS estimate, for the example figure.
    """

    variation: Variation
    psf_fwhm_arcsec: np.ndarray
    per_image: dict[str, list[np.ndarray]]
    tiles: dict[str, np.ndarray]
    seconds: dict[str, float]
    example: dict[str, np.ndarray]

    @property
    def n_scenes(self) -> int:
        return len(self.per_image["true_x"])


def _rows(catalog: FullCatalog, index: int, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    count = int(catalog.n_sources[index])
    rows = {"x": catalog.x[index, :count], "y": catalog.y[index, :count]}
    rows.update({name: catalog.fields[name][index, :count] for name in names})
    return {name: value.detach().cpu().numpy().astype(np.float64) for name, value in rows.items()}


def _disk_ellipticity(rows: dict[str, np.ndarray], is_galaxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = np.where(is_galaxy, np.clip(rows["disk_q"], 1e-6, 1.0), 1.0)
    return ellipticity_from_shape(q, rows["position_angle_rad"])


def run_methods_on_scenes(
    model: BlissModel,
    variation: Variation,
    n_scenes: int,
    seed: int,
    scene_size: int = 128,
    batch_size: int = 8,
) -> SceneResults:
    """Simulate one variation's scenes and run BLISS, SEP and photutils on them.

    Parameters
    ----------
    model
        The model to validate; scenes follow its conditions and prior.
    variation
        What to change.
    n_scenes
        Number of ``scene_size x scene_size`` scenes.
    seed
        Seed of the scenes; must differ from the model's training and
        validation seeds.
    scene_size
        Scene side in pixels, a multiple of the tile size.
    batch_size
        Scenes per simulation and inference batch.

    Raises
    ------
    ValueError
        If the seed was used in training, or the sizes are invalid.
    """
    model.require_held_out_seed(seed)
    if n_scenes < 1 or batch_size < 1:
        raise ValueError(f"n_scenes={n_scenes} and batch_size={batch_size} must be >= 1.")
    conditions, encoder = model.conditions, model.encoder
    tile_size = encoder.config.tile_size
    fwhm = variation.psf_fwhm_arcsec or conditions.psf_fwhm_arcsec
    prior = dataclasses.replace(
        model.prior.without_bright_stars(),
        source_density_per_arcmin2=model.prior.source_density_per_arcmin2 * variation.density_factor,
    )
    simulator = ImageSimulator(
        conditions,
        prior,
        SimulatorConfig(
            image_height=scene_size,
            image_width=scene_size,
            tile_size=tile_size,
            psf_fwhm_range_arcsec=(fwhm, fwhm),
        ),
        device="cpu",
    )
    factors = {factor.name: factor for factor in encoder.factors}
    flux_factor, location_factor = factors["flux"], factors["location"]
    assert isinstance(flux_factor, LogNormalFactor) and isinstance(location_factor, LocationFactor)
    generator = torch.Generator().manual_seed(seed)
    per_image: dict[str, list[np.ndarray]] = {}
    tiles: dict[str, list[np.ndarray]] = {}
    seconds = dict.fromkeys(METHODS, 0.0)
    fwhm_all: list[np.ndarray] = []
    example: dict[str, np.ndarray] = {}

    def keep(name: str, values: np.ndarray) -> None:
        per_image.setdefault(name, []).append(np.asarray(values, dtype=np.float64))

    estimate_names = ("flux_njy", "flux_q16_njy", "flux_q84_njy", "flux_err_njy", "galaxy_prob")
    estimate_names += ("detection_prob", "disk_q", "position_angle_rad", "is_galaxy")
    done = 0
    while done < n_scenes:
        size = min(batch_size, n_scenes - done)
        batch = simulator.sample(size, generator=generator)
        truth = batch.truth
        psf_fwhm_pix = batch.psf_fwhm_arcsec / conditions.pixel_scale_arcsec
        snr, blendedness = source_snr_and_blendedness(
            truth, conditions.psf(batch.psf_fwhm_arcsec.numpy()), conditions, batch.noiseless
        )
        start = time.perf_counter()
        with torch.no_grad():
            # One encoder pass gives both the catalog and the tile posteriors of the calibration checks.
            posterior = run_encoder(encoder, batch.image, batch.variance, batch.mask, psf_fwhm_pix)
            estimate = posterior_to_catalog(
                posterior, encoder, conditions.pixel_scale_arcsec, scene_size, scene_size
            )
        seconds["bliss"] += time.perf_counter() - start
        start = time.perf_counter()
        sep_catalogs = run_sep_batch(batch.image, batch.variance, batch.mask)
        seconds["sep"] += time.perf_counter() - start
        start = time.perf_counter()
        photutils_catalogs = [
            run_photutils(batch.image[i], batch.variance[i], batch.mask[i], float(psf_fwhm_pix[i]))
            for i in range(size)
        ]
        seconds["photutils"] += time.perf_counter() - start

        for index in range(size):
            true_rows = _rows(truth, index, ("flux_njy", "is_galaxy", "disk_q", "position_angle_rad"))
            est_rows = _rows(estimate, index, estimate_names)
            count = len(true_rows["x"])
            true_galaxy = true_rows["is_galaxy"] > 0.5
            true_e1, true_e2 = _disk_ellipticity(true_rows, true_galaxy)
            est_e1, est_e2 = _disk_ellipticity(est_rows, est_rows["is_galaxy"] > 0.5)
            for name, values in (
                ("true_x", true_rows["x"]),
                ("true_y", true_rows["y"]),
                ("true_flux", true_rows["flux_njy"]),
                ("true_is_galaxy", true_galaxy),
                ("true_snr", snr[index, :count]),
                ("true_blendedness", blendedness[index, :count]),
                ("true_e1", true_e1),
                ("true_e2", true_e2),
                ("bliss_x", est_rows["x"]),
                ("bliss_y", est_rows["y"]),
                ("bliss_flux", est_rows["flux_njy"]),
                ("bliss_snr", est_rows["flux_njy"] / np.clip(est_rows["flux_err_njy"], 1e-30, None)),
                ("bliss_flux_q16", est_rows["flux_q16_njy"]),
                ("bliss_flux_q84", est_rows["flux_q84_njy"]),
                ("bliss_galaxy_prob", est_rows["galaxy_prob"]),
                ("bliss_detection_prob", est_rows["detection_prob"]),
                ("bliss_e1", est_e1),
                ("bliss_e2", est_e2),
            ):
                keep(name, values)
            for method, found in (("sep", sep_catalogs[index]), ("photutils", photutils_catalogs[index])):
                keep(f"{method}_x", found.x)
                keep(f"{method}_y", found.y)
                keep(f"{method}_flux", found.flux_njy)
                keep(f"{method}_snr", found.snr)
            if not example:
                example = {
                    "image": batch.image[index].numpy().copy(),
                    "variance": batch.variance[index].numpy().copy(),
                    "mask": batch.mask[index].numpy().copy(),
                    "psf_fwhm_pix": np.array(float(psf_fwhm_pix[index])),
                }
        fwhm_all.append(batch.psf_fwhm_arcsec.numpy())
        _keep_tile_calibration(tiles, posterior, batch, snr, truth, flux_factor, location_factor)
        done += size

    return SceneResults(
        variation=variation,
        psf_fwhm_arcsec=np.concatenate(fwhm_all),
        per_image=per_image,
        tiles={name: np.concatenate(values) for name, values in tiles.items()},
        seconds=seconds,
        example=example,
    )


def _keep_tile_calibration(
    tiles: dict[str, list[np.ndarray]],
    posterior: TilePosterior,
    batch: SimulatedBatch,
    snr: np.ndarray,
    truth: FullCatalog,
    flux_factor: LogNormalFactor,
    location_factor: LocationFactor,
) -> None:
    """Per-tile detection probabilities and, where a true source is reported, its posterior CDFs."""
    params = posterior.params
    truth_tiles = batch.truth_tiles
    n_h, n_w = truth_tiles.n_tiles_h, truth_tiles.n_tiles_w
    detection_prob = torch.sigmoid(params["detection"][:, :n_h, :n_w, 0])
    has_source = truth_tiles.n_sources > 0
    tiles.setdefault("tile_detection_prob", []).append(detection_prob.flatten().numpy().astype(np.float64))
    tiles.setdefault("tile_has_source", []).append(has_source.flatten().numpy())
    reported = has_source & (detection_prob > 0.5)
    flux_true = truth_tiles.fields["flux_njy"][..., :1] / posterior.flux_scale_njy[:, None, None, None]
    flux_pit = flux_factor.cdf(params["flux"][:, :n_h, :n_w], flux_true)[..., 0]
    location_pit = location_factor.cdf(params["location"][:, :n_h, :n_w], truth_tiles.locations[..., 0, :])
    tiles.setdefault("tile_pit_flux", []).append(flux_pit[reported].numpy().astype(np.float64))
    tiles.setdefault("tile_pit_x", []).append(location_pit[..., 0][reported].numpy().astype(np.float64))
    tiles.setdefault("tile_pit_y", []).append(location_pit[..., 1][reported].numpy().astype(np.float64))
    tiles.setdefault("tile_pit_snr", []).append(_tile_snr(truth_tiles, truth, snr)[reported.numpy()])


def _tile_snr(truth_tiles: TileCatalog, truth: FullCatalog, snr: np.ndarray) -> np.ndarray:
    """True SNR of the source held by each tile (NaN for empty tiles), shape (B, Ht, Wt)."""
    tile_x, tile_y = (values[..., 0].numpy() for values in truth_tiles.pixel_positions())
    has_source = truth_tiles.n_sources.numpy() > 0
    result = np.full(has_source.shape, math.nan)
    for index in range(truth.batch_size):
        count = int(truth.n_sources[index])
        where = np.nonzero(has_source[index])
        # The tile catalog holds the very positions of the full catalog: the nearest true source is it.
        distance = np.hypot(
            tile_x[index][where][:, None] - truth.x[index, :count].numpy()[None, :],
            tile_y[index][where][:, None] - truth.y[index, :count].numpy()[None, :],
        )
        if count:
            result[index][where] = snr[index, :count][distance.argmin(axis=1)]
    return result
