"""`BlissTrainTask`: train a BLISS model on simulations, optionally matched to real calexps."""

from __future__ import annotations

__all__ = ["BlissTrainConfig", "BlissTrainConnections", "BlissTrainTask", "conditions_from_exposures"]

import dataclasses
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np

from lsst.images import VisitImage
from lsst.pex.config import ConfigField, Field, FieldValidationError
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

from ..io import BlissModel, default_training_recipe_path
from ..survey import SurveyConditions, flux_njy_to_mag
from ..training import AutoencoderTrainingConfig, TrainingRun, load_run_config, train
from ._compatibility import ExposureConditions, measure_exposure_conditions
from ._core_config import (
    AutoencoderPexConfig,
    AutoencoderTrainingPexConfig,
    ConditionsPexConfig,
    EncoderPexConfig,
    PriorPexConfig,
    SimulatorPexConfig,
    TrainingPexConfig,
)
from ._exposure import calibrated_exposure
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
    """Configuration of `BlissTrainTask`.

    Its sections are those of a ``bliss-train`` config file (`TrainingRun`), field for field:
    ``conditions``, ``prior``, ``simulator``, ``encoder``, ``training``, ``autoencoder`` and
    ``autoencoder_training`` (used when ``train_autoencoder`` is set).  The defaults are the packaged
    model's recipe (`default_training_recipe_path`); `load_training_file` reads any such file.
    """

    conditions = ConfigField[ConditionsPexConfig](doc="Survey conditions of the simulations.")
    prior = ConfigField[PriorPexConfig](doc="The source prior (`PriorConfig`).")
    simulator = ConfigField[SimulatorPexConfig](doc="How images are simulated (`SimulatorConfig`).")
    encoder = ConfigField[EncoderPexConfig](doc="The encoder's architecture (`EncoderConfig`).")
    training = ConfigField[TrainingPexConfig](doc="The encoder's optimization (`TrainingConfig`).")
    autoencoder = ConfigField[AutoencoderPexConfig](doc="The galaxy autoencoder (`AutoencoderConfig`).")
    autoencoder_training = ConfigField[AutoencoderTrainingPexConfig](
        doc="The galaxy autoencoder's optimization (`AutoencoderTrainingConfig`)."
    )
    train_autoencoder = Field[bool](
        doc="Train the galaxy autoencoder after the encoder, on isolated simulated galaxies, into the same "
        "model package; without it the model serves catalogs and parametric deblending only.",
        default=True,
    )
    use_calexp_conditions = Field[bool](
        doc="Measure pixel scale, PSF FWHM range, sky noise and band on the input calexps and simulate "
        "those conditions (replacing conditions.pixel_scale_arcsec, "
        "conditions.sky_brightness_mag_per_arcsec2 and simulator.psf_fwhm_range_arcsec).",
        default=False,
    )
    psf_fwhm_padding_arcsec = Field[float](
        doc="Margin added on both sides of the PSF FWHM range measured on calexps.", default=0.05
    )

    def setDefaults(self) -> None:
        super().setDefaults()
        self.load_training_file(default_training_recipe_path())

    def load_training_file(self, path: str | Path) -> None:
        """Set every section from a ``bliss-train`` config file (YAML or JSON).

        Sections the file leaves out get the core's defaults, as ``bliss-train`` gives them.

        Raises
        ------
        ValueError
            If the file cannot be read or is not a valid training config.
        """
        self.from_training_run(load_run_config(Path(path)))

    def from_training_run(self, run: TrainingRun) -> None:
        """Set every section from a core `TrainingRun`."""
        nominal = SurveyConditions.from_survey(run.conditions.survey, run.conditions.band)
        self.conditions.survey, self.conditions.band = run.conditions.survey, run.conditions.band
        self.conditions.bands = [item.band for item in run.band_conditions]
        for name in self.conditions._fields:
            if name not in ("survey", "band", "bands"):
                value = getattr(run.conditions, name)
                setattr(self.conditions, name, None if value == getattr(nominal, name) else value)
        for section in ("prior", "simulator", "encoder", "training", "autoencoder"):
            getattr(self, section).from_core(getattr(run, section))
        self.train_autoencoder = run.autoencoder_training is not None
        self.autoencoder_training.from_core(run.autoencoder_training or AutoencoderTrainingConfig())

    def validate(self) -> None:
        # Each section validates itself (its dataclass's checks); this checks how they fit together.
        super().validate()
        cls = type(self)
        if not (self.psf_fwhm_padding_arcsec >= 0 and math.isfinite(self.psf_fwhm_padding_arcsec)):
            raise FieldValidationError(cls.psf_fwhm_padding_arcsec, self, "must be >= 0 and finite")
        try:
            self.training_run()
        except ValueError as err:
            raise FieldValidationError(cls.encoder, self, str(err)) from err

    def training_run(self, measured: Sequence[ExposureConditions] = ()) -> TrainingRun:
        """The core's training definition, with conditions measured on calexps when given.

        Raises
        ------
        ValueError
            If the calexps are not in one of the configured bands, cannot be characterized, or
            the sections do not fit together.
        """
        simulator = self.simulator.to_core()
        if not measured:
            conditions, band_conditions = self.conditions.to_core(), self.conditions.band_conditions()
        else:
            # A model matched to calexps is trained for their one band: one of the configured ones.
            configured = [self.conditions.band, *(self.conditions.bands or ())]
            calexp_bands = sorted({item.band for item in measured if item.band is not None})
            band = calexp_bands[0] if len(calexp_bands) == 1 else self.conditions.band
            if len(calexp_bands) > 1 or band not in configured:
                raise ValueError(
                    f"the calexps are in band(s) {calexp_bands} but the config's bands are "
                    f"{sorted(set(configured))}; train from calexps of one configured band"
                )
            condition_overrides = conditions_from_exposures(measured, self.conditions.to_core(band))
            low = min(item.psf_fwhm_arcsec[0] for item in measured) - self.psf_fwhm_padding_arcsec
            high = max(item.psf_fwhm_arcsec[1] for item in measured) + self.psf_fwhm_padding_arcsec
            fwhm_range = (max(low, 0.05), high)
            condition_overrides["psf_fwhm_arcsec"] = 0.5 * (fwhm_range[0] + fwhm_range[1])
            simulator = dataclasses.replace(simulator, psf_fwhm_range_arcsec=fwhm_range)
            conditions, band_conditions = self.conditions.to_core(band, **condition_overrides), ()
        return TrainingRun(
            conditions=conditions,
            prior=self.prior.to_core(),
            simulator=simulator,
            encoder=self.encoder.to_core(),
            training=self.training.to_core(),
            autoencoder=self.autoencoder.to_core(),
            autoencoder_training=self.autoencoder_training.to_core() if self.train_autoencoder else None,
            band_conditions=band_conditions,
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
            nominal = self.config.conditions.to_core()
            try:
                measured = [
                    measure_exposure_conditions(calibrated_exposure(calexp), nominal) for calexp in calexps
                ]
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
