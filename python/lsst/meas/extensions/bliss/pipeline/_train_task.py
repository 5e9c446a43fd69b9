"""`BlissTrainTask`: train a BLISS model on simulations, optionally matched to real calexps."""

from __future__ import annotations

__all__ = ["BlissTrainConfig", "BlissTrainConnections", "BlissTrainTask", "conditions_from_exposures"]

import math
import tempfile
from collections.abc import Sequence
from typing import Any

import astropy.units as u
import numpy as np

from lsst.images import VisitImage
from lsst.pex.config import Field, FieldValidationError, ListField
from lsst.pipe.base import (
    InputQuantizedConnection,
    OutputQuantizedConnection,
    PipelineTask,
    PipelineTaskConfig,
    PipelineTaskConnections,
    QuantumContext,
    Struct,
    UnprocessableDataError,
)
from lsst.pipe.base import connectionTypes as cT

from ..io import BlissModel
from ..network import STEMS, EncoderConfig
from ..survey import SurveyConditions, flux_njy_to_mag
from ..training import TrainingRun, train
from ._compatibility import ExposureConditions, measure_exposure_conditions
from ._model_dataset import DEFAULT_MODEL_DATASET_TYPE, MODEL_STORAGE_CLASS


class BlissTrainConnections(PipelineTaskConnections, dimensions=()):
    calexps = cT.Input(
        doc="Calibrated exposures whose pixel scale, PSF sizes, noise and band the simulations match "
        "(used only when use_calexp_conditions is True).",
        name="calexp",
        storageClass="VisitImage",
        dimensions=("instrument", "visit", "detector"),
        multiple=True,
    )
    bliss_model = cT.Output(
        doc="Trained BLISS model (safetensors weights and the JSON description of its training).",
        name=DEFAULT_MODEL_DATASET_TYPE,
        storageClass=MODEL_STORAGE_CLASS,
        dimensions=(),
    )

    def __init__(self, *, config: BlissTrainConfig | None = None) -> None:
        super().__init__(config=config)
        if config is not None and not config.use_calexp_conditions:
            del self.calexps


class BlissTrainConfig(PipelineTaskConfig, pipelineConnections=BlissTrainConnections):
    """Configuration of `BlissTrainTask`; the fields map onto a ``bliss-train`` config file."""

    survey = Field[str](
        doc="Survey whose nominal conditions (surveycodex) the simulations use.", default="LSST"
    )
    band = Field[str](doc="Filter band of the simulations.", default="r")
    use_calexp_conditions = Field[bool](
        doc="Measure pixel scale, PSF FWHM range, sky noise and band on the input calexps and simulate "
        "those conditions.",
        default=False,
    )
    psf_fwhm_range_arcsec = ListField[float](
        doc="Smallest and largest PSF FWHM (arcsec) of the simulated images (replaced by the calexps' range "
        "when use_calexp_conditions is True).",
        default=[0.6, 1.2],
    )
    psf_fwhm_padding_arcsec = Field[float](
        doc="Margin added on both sides of the PSF FWHM range measured on calexps.", default=0.05
    )
    image_size = Field[int](doc="Side of the simulated training images, pixels.", default=64)
    tile_size = Field[int](doc="Tile side, pixels.", default=4)
    checkerboard_groups = Field[int](
        doc="Colour groups of the autoregressive checkerboard (2 or 4).", default=4
    )
    downsample_kernel = Field[int](
        doc="Kernel of the encoder's two stride-2 convolutions: 3, or 4 to centre each tile's features "
        "on the tile (see EncoderConfig.downsample_kernel).",
        default=3,
    )
    stem = Field[str](
        doc="How the encoder's backbone starts: 'convolution' (full-resolution layers) or 'space_to_depth' "
        "(2x2 pixel blocks to half-resolution channels; see EncoderConfig.stem).",
        default="space_to_depth",
    )
    pixel_channels = ListField[int](
        doc="Encoder widths from the stem's resolution down to tile resolution (log2(tile_size) + 1 "
        "widths with the convolution stem, one fewer with space_to_depth).",
        default=[16, 32],
    )
    head_channels = Field[int](doc="Width of the encoder's checkerboard head.", default=32)
    bright_star_density_per_arcmin2 = Field[float](
        doc="Saturated, bleeding stars added to the simulated field per arcmin^2, far above the sky's "
        "density so that training sees them (see PriorConfig.bright_star_density_per_arcmin2); 0 adds none.",
        default=0.0,
    )
    bright_star_mag_range = ListField[float](
        doc="AB magnitudes (brightest, faintest) of the added bright stars.", default=[12.0, 16.0]
    )
    masked_regions_per_image = Field[float](
        doc="Mean number of masked regions (BAD columns, NO_DATA squares) hiding sources in each simulated "
        "image (see SimulatorConfig.masked_regions_per_image); 0 adds none.",
        default=0.0,
    )
    n_steps = Field[int](doc="Optimizer steps.", default=34000)
    batch_size = Field[int](doc="Simulated images per step.", default=32)
    learning_rate = Field[float](doc="Peak Adam learning rate.", default=1e-3)
    warmup_steps = Field[int](doc="Steps of linear learning-rate warm-up.", default=300)
    detection_loss_weight = Field[float](
        doc="Weight of the detection term of the training loss (validation losses stay unweighted).",
        default=1.0,
    )
    validation_images = Field[int](doc="Held-out simulated validation images.", default=256)
    validation_every = Field[int](doc="Steps between validation passes.", default=1000)
    log_every = Field[int](doc="Steps between progress log lines.", default=100)
    max_minutes = Field[float](doc="Stop training after this many minutes.", default=None, optional=True)
    seed = Field[int](doc="Seed of the training simulations and initialization.", default=20261124)
    autoencoder_steps = Field[int](
        doc="Optimizer steps of the galaxy autoencoder, trained after the encoder on isolated simulated "
        "galaxies and stored in the same model package; 0 trains none (the model then serves catalogs "
        "and parametric deblending only).",
        default=5000,
    )
    autoencoder_batch_size = Field[int](doc="Galaxy stamps per autoencoder step.", default=64)
    autoencoder_stamp_size = Field[int](
        doc="Side of the autoencoder's galaxy stamps, pixels (odd).", default=31
    )
    autoencoder_latent_dim = Field[int](doc="Dimension of the autoencoder's latent code.", default=8)
    device = Field[str](
        doc="Torch device: 'auto' (CUDA when available), 'cpu' or 'cuda[:N]'.", default="auto"
    )

    def validate(self) -> None:
        super().validate()
        cls = type(self)
        if (
            len(self.psf_fwhm_range_arcsec) != 2
            or not 0 < self.psf_fwhm_range_arcsec[0] <= (self.psf_fwhm_range_arcsec[1])
        ):
            raise FieldValidationError(
                cls.psf_fwhm_range_arcsec, self, "must be [low, high] with 0 < low <= high"
            )
        for name in ("image_size", "tile_size", "n_steps", "batch_size", "validation_images"):
            if getattr(self, name) < 1:
                raise FieldValidationError(getattr(cls, name), self, "must be positive")
        if self.tile_size & (self.tile_size - 1):
            raise FieldValidationError(cls.tile_size, self, "must be a power of two")
        if self.image_size % self.tile_size:
            raise FieldValidationError(
                cls.image_size, self, f"must be a multiple of tile_size={self.tile_size}"
            )
        if self.autoencoder_steps < 0:
            raise FieldValidationError(cls.autoencoder_steps, self, "must be >= 0")
        for name in ("autoencoder_batch_size", "autoencoder_latent_dim"):
            if getattr(self, name) < 1:
                raise FieldValidationError(getattr(cls, name), self, "must be positive")
        if self.autoencoder_stamp_size < 9 or self.autoencoder_stamp_size % 2 == 0:
            raise FieldValidationError(cls.autoencoder_stamp_size, self, "must be odd and at least 9")
        if self.checkerboard_groups not in (1, 2, 4):
            raise FieldValidationError(cls.checkerboard_groups, self, "must be 1, 2 or 4")
        if self.downsample_kernel not in (3, 4):
            raise FieldValidationError(cls.downsample_kernel, self, "must be 3 or 4")
        if self.stem not in STEMS:
            raise FieldValidationError(cls.stem, self, f"must be one of {', '.join(STEMS)}")
        if self.head_channels < 1:
            raise FieldValidationError(cls.head_channels, self, "must be positive")
        try:  # the widths must match the stem and the tile size
            EncoderConfig.from_dict(self._encoder_section())
        except ValueError as error:
            raise FieldValidationError(cls.pixel_channels, self, str(error)) from None
        if not (
            self.bright_star_density_per_arcmin2 >= 0 and math.isfinite(self.bright_star_density_per_arcmin2)
        ):
            raise FieldValidationError(cls.bright_star_density_per_arcmin2, self, "must be >= 0 and finite")
        if not (self.masked_regions_per_image >= 0 and math.isfinite(self.masked_regions_per_image)):
            raise FieldValidationError(cls.masked_regions_per_image, self, "must be >= 0 and finite")
        magnitudes = self.bright_star_mag_range
        if len(magnitudes) != 2 or not all(map(math.isfinite, magnitudes)) or magnitudes[0] > magnitudes[1]:
            raise FieldValidationError(
                cls.bright_star_mag_range, self, "must be [brightest, faintest] finite AB magnitudes"
            )
        if not (self.detection_loss_weight > 0 and math.isfinite(self.detection_loss_weight)):
            raise FieldValidationError(cls.detection_loss_weight, self, "must be > 0 and finite")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise FieldValidationError(cls.device, self, "must be 'auto', 'cpu', 'cuda' or 'cuda:N'")

    def _encoder_section(self) -> dict[str, Any]:
        return {
            "tile_size": self.tile_size,
            "checkerboard_groups": self.checkerboard_groups,
            "downsample_kernel": self.downsample_kernel,
            "stem": self.stem,
            "pixel_channels": list(self.pixel_channels),
            "head_channels": self.head_channels,
        }

    def training_run(self, measured: Sequence[ExposureConditions] = ()) -> TrainingRun:
        """The core's training definition, with conditions measured on calexps when given."""
        conditions: dict[str, Any] = {"survey": self.survey, "band": self.band}
        fwhm_range = tuple(self.psf_fwhm_range_arcsec)
        if measured:
            bands = {item.band for item in measured if item.band is not None} - {self.band}
            if bands:
                raise ValueError(
                    f"the calexps are in band(s) {sorted(bands)} but config.band is {self.band!r}"
                )
            nominal = SurveyConditions.from_survey(self.survey, self.band)
            conditions.update(conditions_from_exposures(measured, nominal))
            low = min(item.psf_fwhm_arcsec[0] for item in measured) - self.psf_fwhm_padding_arcsec
            high = max(item.psf_fwhm_arcsec[1] for item in measured) + self.psf_fwhm_padding_arcsec
            fwhm_range = (max(low, 0.05), high)
            conditions["psf_fwhm_arcsec"] = 0.5 * (fwhm_range[0] + fwhm_range[1])
        autoencoder_sections: dict[str, Any] = {}
        if self.autoencoder_steps:
            autoencoder_sections = {
                "autoencoder": {
                    "stamp_size": self.autoencoder_stamp_size,
                    "latent_dim": self.autoencoder_latent_dim,
                },
                "autoencoder_training": {
                    "seed": self.seed,
                    "n_steps": self.autoencoder_steps,
                    "batch_size": self.autoencoder_batch_size,
                    "learning_rate": 2 * self.learning_rate,
                    "warmup_steps": min(100, self.autoencoder_steps),
                    "validation_every": max(1, min(500, self.autoencoder_steps)),
                    "log_every": self.log_every,
                    "max_minutes": self.max_minutes,
                    "device": self.device,
                },
            }
        return TrainingRun.from_dict(
            {
                **autoencoder_sections,
                "conditions": conditions,
                "prior": {
                    "bright_star_density_per_arcmin2": self.bright_star_density_per_arcmin2,
                    "bright_star_mag_range": tuple(self.bright_star_mag_range),
                },
                "simulator": {
                    "image_height": self.image_size,
                    "image_width": self.image_size,
                    "tile_size": self.tile_size,
                    "psf_fwhm_range_arcsec": fwhm_range,
                    "masked_regions_per_image": self.masked_regions_per_image,
                },
                "encoder": self._encoder_section(),
                "training": {
                    "seed": self.seed,
                    "n_steps": self.n_steps,
                    "batch_size": self.batch_size,
                    "learning_rate": self.learning_rate,
                    "warmup_steps": min(self.warmup_steps, self.n_steps),
                    "detection_loss_weight": self.detection_loss_weight,
                    "validation_images": self.validation_images,
                    "validation_every": self.validation_every,
                    "checkpoint_every": self.validation_every,
                    "log_every": self.log_every,
                    "max_minutes": self.max_minutes,
                    "device": self.device,
                },
            }
        )


def conditions_from_exposures(
    measured: Sequence[ExposureConditions], nominal: SurveyConditions
) -> dict[str, Any]:
    """`SurveyConditions` overrides matching a set of exposures.

    The pixel scale is the median of the exposures'; the sky brightness is
    the one whose Poisson noise (sky-limited, with the nominal zero point and
    exposure time) equals the median per-pixel noise.

    Parameters
    ----------
    measured
        Conditions measured on each exposure (at least one).
    nominal
        Survey conditions providing the zero point and exposure time.

    Raises
    ------
    ValueError
        If the exposures disagree on the band, are not in flux-density units,
        or none has a usable noise level.
    """
    not_flux = sorted({item.unit for item in measured if not u.Unit(item.unit).is_equivalent(u.nJy)})
    if not_flux:
        raise ValueError(
            f"calexp pixels in {not_flux} are not flux densities; train on calibrated (nJy) exposures."
        )
    bands = {item.band for item in measured if item.band is not None}
    if len(bands) > 1:
        raise ValueError(f"The calexps mix bands {sorted(bands)}; train one model per band.")
    noise = np.array([item.noise_njy for item in measured])
    noise = noise[np.isfinite(noise) & (noise > 0)]
    if noise.size == 0:
        raise ValueError("No calexp has a finite positive variance; cannot measure the sky noise.")
    pixel_scale = float(np.median([item.pixel_scale_arcsec for item in measured]))
    njy_to_electrons = nominal.replace(pixel_scale_arcsec=pixel_scale).njy_to_electrons
    # Sky-limited Poisson noise: sigma^2 = sky_e / k^2 with sky_e = sky_njy * k.
    sky_level_njy = float(np.median(noise)) ** 2 * njy_to_electrons
    sky_mag = float(flux_njy_to_mag(sky_level_njy / pixel_scale**2))
    overrides: dict[str, Any] = {
        "pixel_scale_arcsec": pixel_scale,
        "sky_brightness_mag_per_arcsec2": sky_mag,
    }
    return overrides


class BlissTrainTask(PipelineTask):
    """Train a BLISS encoder on images simulated on the fly (GPU when available).

    The simulations use the survey's nominal conditions from surveycodex, or,
    with ``use_calexp_conditions``, the pixel scale, PSF FWHM range and sky
    noise measured on the input calexps.  Progress and validation losses go
    to the task log; the training summary to the task metadata.
    """

    ConfigClass = BlissTrainConfig
    _DefaultName = "blissTrain"
    config: BlissTrainConfig

    def runQuantum(
        self,
        butlerQC: QuantumContext,
        inputRefs: InputQuantizedConnection,
        outputRefs: OutputQuantizedConnection,
    ) -> None:
        inputs = butlerQC.get(inputRefs)
        outputs = self.run(calexps=inputs.get("calexps", []))
        butlerQC.put(outputs, outputRefs)

    def run(self, calexps: Sequence[VisitImage] = ()) -> Struct:
        """Train a model.

        Parameters
        ----------
        calexps
            Exposures to measure conditions on (used when
            ``use_calexp_conditions`` is True).

        Returns
        -------
        result
            ``bliss_model``, the trained `BlissModel`.

        Raises
        ------
        UnprocessableDataError
            If ``use_calexp_conditions`` is True and the calexps cannot be
            characterized (no PSF or WCS, mixed bands, no usable variance).
        """
        measured = []
        if self.config.use_calexp_conditions:
            nominal = SurveyConditions.from_survey(self.config.survey, self.config.band)
            try:
                measured = [measure_exposure_conditions(calexp, nominal) for calexp in calexps]
                run = self.config.training_run(measured)
            except ValueError as err:
                raise UnprocessableDataError(
                    f"Cannot derive training conditions from the calexps: {err}"
                ) from err
            self.log.info(
                'Conditions from %d calexps: %.4f"/px, PSF FWHM %.2f"-%.2f", sky %.2f mag/arcsec^2.',
                len(measured),
                run.conditions.pixel_scale_arcsec,
                *run.simulator.psf_fwhm_range_arcsec,
                run.conditions.sky_brightness_mag_per_arcsec2,
            )
        else:
            run = self.config.training_run()
        with tempfile.TemporaryDirectory(prefix="bliss-train-") as workdir:
            model = train(run, workdir, log=self.log.info, command=f"BlissTrainTask ({self._DefaultName})")
        self._record_summary(model)
        return Struct(bliss_model=model)

    def _record_summary(self, model: BlissModel) -> None:
        for key, value in model.training.items():
            if isinstance(value, bool | int | float | str) and not (
                isinstance(value, float) and math.isnan(value)
            ):
                self.metadata[key] = value
        wall_time = model.training.get("wall_time_s") or 0.0
        if wall_time > 0:
            self.metadata["images_per_s"] = model.training.get("images_seen", 0) / wall_time
        history = model.training.get("history", [])
        self.metadata["validation_steps"] = [int(entry["step"]) for entry in history]
        self.metadata["validation_losses"] = [float(entry["validation_loss"]) for entry in history]
        autoencoder = model.training.get("autoencoder")
        if autoencoder is not None:
            self.metadata["autoencoder_steps"] = int(autoencoder["steps"])
            self.metadata["autoencoder_wall_time_s"] = float(autoencoder["wall_time_s"])
            self.metadata["autoencoder_validation_loss"] = float(autoencoder["final_validation_loss"])
            self.metadata["autoencoder_chi2_median_snr10"] = float(autoencoder["final_chi2_median_snr10"])
