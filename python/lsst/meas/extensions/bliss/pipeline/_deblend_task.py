"""`BlissDeblendMeasureTask`: probabilistic detection, deblending and measurement of one calexp."""

from __future__ import annotations

__all__ = [
    "BLISS_INVALID_PLANE",
    "BlissDeblendMeasureConfig",
    "BlissDeblendMeasureConnections",
    "BlissDeblendMeasureTask",
    "IncompatibleExposureError",
    "IncompatibleModelError",
    "NonFiniteOutputError",
]

import dataclasses
import time
from typing import Any

import numpy as np
import torch
from astropy.table import Table

from lsst.images import VisitImage
from lsst.pex.config import ChoiceField, ConfigField, Field, FieldValidationError
from lsst.pipe.base import (
    AlgorithmError,
    AnnotatedPartialOutputsError,
    InputQuantizedConnection,
    InvalidQuantumError,
    NoWorkFound,
    OutputQuantizedConnection,
    PipelineTask,
    PipelineTaskConfig,
    PipelineTaskConnections,
    QuantumContext,
    Struct,
    UnprocessableDataError,
)
from lsst.pipe.base import connectionTypes as cT

from ..deblend import (
    FLUX_FOOTPRINT_NSIGMA,
    BlendFamilies,
    SourceModels,
    blend_families,
    blendedness_abs,
    deblend_sources,
    footprint_touches,
    measure_deblended,
    median_noise_njy,
    model_sources,
    psf_corrected_shapes,
    source_footprints,
)
from ..inference import (
    FrameConfig,
    FrameResult,
    InputConditions,
    OutOfTrainedRangeError,
    infer_frame,
    out_of_range_problems,
    representable_signal_to_noise,
)
from ..io import BlissModel
from ..network import GalaxyAutoencoder, unrepresentable_pixels
from ..survey import SurveyConditions
from ._compatibility import measure_exposure_conditions
from ._core_config import FramePexConfig, ModelFitPexConfig
from ._exposure import ExposurePixels, calibrated_exposure, exposure_pixels, psf_kernel_function
from ._ids import SourceIdGenerator, SourceIdGeneratorConfig
from ._model_dataset import DEFAULT_MODEL_DATASET_TYPE, MODEL_STORAGE_CLASS
from ._tables import (
    PIXEL_FLAG_PLANES,
    add_blend_families,
    add_deblend_columns,
    add_pixel_flag_columns,
    add_sample_families,
    deblended_models_table,
    samples_table,
    source_table,
)

BLISS_INVALID_PLANE = "BLISS_INVALID"
"""Single plane of the boolean invalid-pixel map handed to the core."""


class IncompatibleExposureError(UnprocessableDataError):
    """This exposure lies outside the conditions the model was trained for (its PSF size or depth)
    or cannot be characterized; other exposures of the same data may still be processed."""


class IncompatibleModelError(InvalidQuantumError):
    """The model cannot process this data at all: another band or pixel scale than it was trained
    for, or pixels in units without a usable calibration.  Every quantum of the run would fail
    alike, so the run fails (``pipetask run`` exits non-zero) instead of ending without outputs."""


class NonFiniteOutputError(AlgorithmError):
    """An output table holds non-finite values where none are allowed."""

    def __init__(self, dataset: str, columns: list[str]) -> None:
        super().__init__(f"{dataset} has non-finite values in column(s) {columns}.")
        self._metadata = {"dataset": dataset, "columns": ",".join(columns)}
        self.partial_outputs: Struct | None = None
        """Outputs that are complete despite the failure (set by `BlissDeblendMeasureTask.run`)."""

    @property
    def metadata(self) -> dict[str, Any]:
        return self._metadata


class BlissDeblendMeasureConnections(PipelineTaskConnections, dimensions=("instrument", "visit", "detector")):
    calexp = cT.Input(
        doc="Calibrated single-visit image (image in nJy, mask, variance, PSF, WCS).",
        name="calexp",
        storageClass="VisitImage",
        dimensions=("instrument", "visit", "detector"),
    )
    bliss_model = cT.PrerequisiteInput(
        doc="Trained BLISS model; chosen by putting its RUN collection (e.g. bliss/models/default) in -i.",
        name=DEFAULT_MODEL_DATASET_TYPE,
        storageClass=MODEL_STORAGE_CLASS,
        dimensions=(),
    )
    bliss_source = cT.Output(
        doc="Detected sources (Rubin DP1 Source columns where the quantity is the same): posterior point "
        "estimates, uncertainties, probabilities, pixel flags, deblended measurements and blend families "
        "(parent rows with deblend_nChild > 0).",
        name="bliss_source",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "visit", "detector"),
    )
    bliss_catalog_samples = cT.Output(
        doc="Posterior catalog samples, stacked with a 'sample' column.",
        name="bliss_catalog_samples",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "visit", "detector"),
    )

    bliss_deblended_models = cT.Output(
        doc="Model parameters of every detected source of bliss_source (render the stamps with "
        "models_from_table, the scene with scene_model_from_table); deblended images are the calexp's "
        "pixels in proportion to the models.",
        name="bliss_deblended_models",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "visit", "detector"),
    )

    def __init__(self, *, config: BlissDeblendMeasureConfig | None = None) -> None:
        super().__init__(config=config)
        if config is None:
            return
        if config.inference.n_samples == 0:
            del self.bliss_catalog_samples
        if not config.do_deblend:
            del self.bliss_deblended_models
        if config.model_from_pipeline:
            # A prerequisite must exist before the pipeline runs; a regular input may be made by an
            # earlier task of the same pipeline (BlissTrainTask).
            self.bliss_model = cT.Input(
                doc="Trained BLISS model, produced earlier in the same pipeline.",
                name=config.connections.bliss_model,
                storageClass=MODEL_STORAGE_CLASS,
                dimensions=(),
            )


class BlissDeblendMeasureConfig(PipelineTaskConfig, pipelineConnections=BlissDeblendMeasureConnections):
    """Configuration of `BlissDeblendMeasureTask`."""

    inference = ConfigField[FramePexConfig](
        doc="Inference options of the core (`FrameConfig`): detection threshold, posterior samples, "
        "chunking, device and arithmetic. ``inference.seed`` is combined with the visit and detector, "
        "so reruns reproduce the samples; mask planes of ``inference.invalid_mask_planes`` that the "
        "exposure's mask lacks are ignored (logged)."
    )
    progress_interval_s = Field[float](
        doc="Minimum seconds between progress log lines on large images.", default=30.0
    )
    do_deblend = Field[bool](
        doc="Render a model of every source, split the image among the sources in proportion to their "
        "models, measure flux, adaptive moments and PSF-corrected shape on each share, group the sources "
        "into blend families, and write bliss_deblended_models. Without it pixel flags look at each "
        "source's central 3x3 pixels only and there are no blend families.",
        default=True,
    )
    max_stamp_half_size = Field[int](
        doc="Largest half-size of a source's model stamp, pixels (stamps are 2h+1 wide).", default=20
    )
    galaxy_model = ChoiceField[str](
        doc="How galaxies are modelled for deblending. The default is parametric because, with the "
        "packaged model, it gives the less biased deblended fluxes (the autoencoder gives faint "
        "galaxies too much light in their wings; see "
        "doc/lsst.meas.extensions.bliss/autoencoder.rst).",
        allowed={
            "autoencoder": "rendered by the model package's galaxy autoencoder from the latent code it "
            "infers from each galaxy's stamp (the package must include one)",
            "parametric": "the bulge+disk estimate of the encoder convolved with the PSF",
        },
        default="parametric",
    )
    autoencoder_iterations = Field[int](
        doc="Passes of encoding each galaxy with its neighbours' current models subtracted.", default=2
    )
    fit_blended_models = Field[bool](
        doc="Fit the parametric models of blended sources (0.3-sigma footprints that touch) jointly to the "
        "image, with the encoder's estimates as the prior's centre, before deblending (fit_source_models; "
        "it lowers the blended pairs' flux scatter in bliss-bench deblend). The catalog's posterior "
        "columns keep the encoder's estimates.",
        default=True,
    )
    model_fit = ConfigField[ModelFitPexConfig](
        doc="The blended sources' joint fit (`ModelFitConfig`), used when fit_blended_models is set."
    )
    flux_footprint_nsigma = Field[float](
        doc="Isophote, in units of the image's median noise, of the footprint over which a source's "
        "deblended flux (bliss_deblend_flux) is summed; the model gives the light beyond it. Below the "
        "1-sigma footprints of the pixel flags and blend families so that less of the flux rests on the "
        "model's wings (measure_deblended).",
        default=FLUX_FOOTPRINT_NSIGMA,
    )
    model_from_pipeline = Field[bool](
        doc="Read bliss_model as a regular input instead of a prerequisite, so that a BlissTrainTask in "
        "the same pipeline can produce it.",
        default=False,
    )
    id_generator = ConfigField[SourceIdGeneratorConfig](doc="Source ID packing.")

    def validate(self) -> None:
        # The nested core configs validate themselves (their dataclasses' checks).
        super().validate()
        cls = type(self)
        if self.max_stamp_half_size < 2:
            raise FieldValidationError(cls.max_stamp_half_size, self, "must be at least 2")
        if self.autoencoder_iterations < 1:
            raise FieldValidationError(cls.autoencoder_iterations, self, "must be at least 1")
        if not self.flux_footprint_nsigma > 0:
            raise FieldValidationError(cls.flux_footprint_nsigma, self, "must be positive")

    def frame_config(self, seed: int) -> FrameConfig:
        """The core's inference options for one exposure: ``inference`` with the exposure's seed and
        the single invalid-pixel plane that the task builds from the exposure's mask."""
        return self.inference.to_core(seed=seed, invalid_mask_planes=(BLISS_INVALID_PLANE,))


class BlissDeblendMeasureTask(PipelineTask):
    """Detect, deblend and measure the sources of a calexp with a BLISS model.

    The model's encoder gives, for every 4x4-pixel tile, an approximate
    posterior over the source it holds (presence, position, star/galaxy,
    flux, galaxy shape).  ``bliss_source`` lists the tiles whose detection
    probability passes ``detection_threshold`` with posterior point
    estimates and uncertainties; ``bliss_catalog_samples`` holds whole
    catalogs drawn from the posterior, for propagating uncertainty.  With
    ``do_deblend`` every source is rendered from its estimate, the image is
    split among the sources in proportion to their models, and each share is
    measured (fluxes, adaptive moments and PSF-corrected shapes in
    ``bliss_source``, model parameters in ``bliss_deblended_models``); sources
    whose footprints join form blend families, each with a parent row.
    """

    ConfigClass = BlissDeblendMeasureConfig
    _DefaultName = "blissDeblendMeasure"
    config: BlissDeblendMeasureConfig

    def runQuantum(
        self,
        butlerQC: QuantumContext,
        inputRefs: InputQuantizedConnection,
        outputRefs: OutputQuantizedConnection,
    ) -> None:
        inputs = butlerQC.get(inputRefs)
        data_id = butlerQC.quantum.dataId
        assert data_id is not None
        try:
            outputs = self.run(
                **inputs,
                id_generator=self.config.id_generator.apply(data_id),
                visit=int(data_id["visit"]),
                detector=int(data_id["detector"]),
            )
        except AlgorithmError as err:
            partial = err.partial_outputs if isinstance(err, NonFiniteOutputError) else None
            if partial is None:
                raise
            # bliss_source is complete; only the samples are missing.
            butlerQC.put(partial.bliss_source, outputRefs.bliss_source)
            if partial.bliss_deblended_models is not None:
                butlerQC.put(partial.bliss_deblended_models, outputRefs.bliss_deblended_models)
            raise AnnotatedPartialOutputsError.annotate(err, self, log=self.log) from err
        butlerQC.put(outputs.bliss_source, outputRefs.bliss_source)
        if outputs.bliss_deblended_models is not None:
            butlerQC.put(outputs.bliss_deblended_models, outputRefs.bliss_deblended_models)
        if outputs.bliss_catalog_samples is not None:
            butlerQC.put(outputs.bliss_catalog_samples, outputRefs.bliss_catalog_samples)

    def run(
        self,
        calexp: VisitImage,
        bliss_model: BlissModel,
        id_generator: SourceIdGenerator | None = None,
        visit: int = 0,
        detector: int = 0,
    ) -> Struct:
        """Run on one exposure outside a Butler.

        Parameters
        ----------
        calexp
            Calibrated image (nJy) with mask, variance, PSF and WCS.
        bliss_model
            Trained model.
        id_generator
            Source IDs; default numbers the sources 1..n.
        visit, detector
            Data ID values stored in the tables and used to seed the samples.

        Returns
        -------
        result
            ``bliss_source``, ``bliss_catalog_samples`` (None when
            ``n_samples`` is 0) and ``bliss_deblended_models`` (None when
            ``do_deblend`` is False) tables, ``frame``, the core's `FrameResult`,
            and ``source_models``, the `SourceModels` deblended with (None
            without ``do_deblend``).

        Raises
        ------
        NoWorkFound
            If no pixel of the image is a valid input.
        IncompatibleExposureError
            If the exposure's PSF size or depth lies outside the model's
            trained ranges and ``inference.out_of_range`` is ``"error"``, or
            the exposure cannot be characterized.
        IncompatibleModelError
            If the exposure's band or pixel scale is not the model's (and
            ``inference.out_of_range`` is ``"error"``), or its pixels are not
            in calibrated flux units.
        NonFiniteOutputError
            If a table would hold non-finite values; when only the samples
            do, the exception's ``partial_outputs`` holds the complete
            ``bliss_source``.
        """
        autoencoder = None
        if self.config.do_deblend and self.config.galaxy_model == "autoencoder":
            # Before any work: a package without an autoencoder cannot give the requested outputs.
            autoencoder = bliss_model.require_autoencoder(
                "Deblending with galaxy_model='autoencoder' (do_deblend=True)"
            )
        calexp = self._calibrated(calexp)
        conditions = self.check_compatibility(calexp, bliss_model)
        pixels = self._pixels(calexp)
        frame = self._infer_pixels(calexp, bliss_model, pixels, visit, detector, conditions)
        id_generator = id_generator or SourceIdGenerator(0, 0)
        sources = self.make_source_table(frame, calexp, id_generator, visit, detector)
        deblended_models = source_models = families = None
        if self.config.do_deblend:
            deblended_models, source_models, families = self.deblend(
                frame, calexp, pixels, sources, bliss_model.conditions, autoencoder
            )
        else:
            add_pixel_flag_columns(sources, self.pixel_flags(calexp, _centre_boxes(frame), None))
        n_sources = len(sources)
        n_families = 0 if families is None else families.n_families
        # The parents are numbered after the children, by the same generator: unique across exposures.
        parent_ids = id_generator.arange(n_sources + n_families)[n_sources:]
        if families is not None:
            sources = add_blend_families(sources, families, parent_ids, calexp.sky_projection.pixel_to_sky)
            self.metadata["n_blend_families"] = n_families
        _check_finite(sources, "bliss_source")
        samples = None
        if self.config.inference.n_samples:
            try:
                samples = self.make_samples_table(frame, calexp, visit, detector, families, parent_ids)
            except NonFiniteOutputError as err:
                err.partial_outputs = Struct(
                    bliss_source=sources, bliss_deblended_models=deblended_models, frame=frame
                )
                raise
        return Struct(
            bliss_source=sources,
            bliss_catalog_samples=samples,
            bliss_deblended_models=deblended_models,
            frame=frame,
            source_models=source_models,
        )

    def deblend(
        self,
        frame: FrameResult,
        calexp: VisitImage,
        pixels: ExposurePixels,
        sources: Table,
        conditions: SurveyConditions,
        autoencoder: GalaxyAutoencoder | None = None,
    ) -> tuple[Table, SourceModels, BlendFamilies]:
        """Model every source, add the deblended measurements and pixel flags to ``sources``, and
        return the model table, the models and the blend families.

        Stars are rendered with the PSF at their position, galaxies (galaxy
        probability > 0.5) by the autoencoder (or, without one, from their
        posterior bulge+disk shape); each source's deblended image is its
        model's share of the observed pixels.  PSF-corrected shapes use the
        exposure's PSF model at each source.
        """
        start = time.perf_counter()
        catalog = frame.catalog
        height, width = pixels.image.shape
        is_galaxy = catalog.fields["galaxy_prob"] > 0.5
        estimate = dataclasses.replace(catalog, fields={**catalog.fields, "is_galaxy": is_galaxy})
        n_sources = int(catalog.n_sources[0])
        image, variance = torch.from_numpy(pixels.image), torch.from_numpy(pixels.variance)
        valid = torch.from_numpy(~pixels.invalid)
        fit = None
        if self.config.fit_blended_models:
            fit = self.config.model_fit.to_core()
        models, latents = model_sources(
            estimate,
            catalog.fields["psf_fwhm_pix"][0, :n_sources],
            conditions,
            image,
            variance,
            valid,
            autoencoder,
            self.config.max_stamp_half_size,
            self.config.autoencoder_iterations,
            fit=fit,
        )
        deblended = deblend_sources(image, variance, models, valid)
        noise = median_noise_njy(variance, valid)
        measurements = measure_deblended(deblended, noise, self.config.flux_footprint_nsigma, latents=latents)
        shapes = psf_corrected_shapes(deblended, self.psf_images(calexp, models), noise**2)
        measurements.update({f"hsm_{name}": values for name, values in shapes.items()})
        measurements["blendedness_abs"] = blendedness_abs(models, height, width)
        add_deblend_columns(sources, measurements)
        footprints = source_footprints(models, noise)
        add_pixel_flag_columns(sources, self.pixel_flags(calexp, models, footprints))
        families = blend_families(models, footprints, height, width)
        self.metadata["time_deblend_s"] = time.perf_counter() - start
        self.metadata["n_moments_failed"] = int(np.sum(sources["bliss_moments_failed_flag"]))
        self.metadata["n_hsm_failed"] = int(np.sum(sources["hsmShapeRegauss_flag"]))
        self.metadata["n_fit_failed"] = int(np.sum(sources["bliss_fit_failed_flag"]))
        if latents is not None:
            self.metadata["n_autoencoder_models"] = int(latents.modelled.sum())
            self.metadata["n_latent_invalid"] = int(latents.invalid.sum())
        table = deblended_models_table(
            models,
            np.asarray(sources["sourceId"]),
            int(calexp.bbox.x.start),
            int(calexp.bbox.y.start),
            conditions,
            self.config.max_stamp_half_size,
            latents,
        )
        return table, models, families

    def psf_images(self, calexp: VisitImage, models: SourceModels) -> np.ndarray:
        """The exposure's PSF kernel image at each modelled source, shape (N, P, P), unit sum.

        Raises
        ------
        ValueError
            If the models do not carry their positions.
        """
        if models.parameters is None:
            raise ValueError("The source models do not carry their positions.")
        kernel_at = psf_kernel_function(calexp)
        n_sources = len(models)
        x = models.parameters.x[0, :n_sources].double().numpy()
        y = models.parameters.y[0, :n_sources].double().numpy()
        if n_sources == 0:
            return np.zeros((0, 1, 1))
        kernels = [kernel_at(x[index], y[index]) for index in range(n_sources)]
        sizes = {kernel.shape for kernel in kernels}
        if len(sizes) > 1:
            # A PSF model may give kernels of different sizes; pad them to the largest, centred.
            side = max(max(shape) for shape in sizes)
            kernels = [_padded(kernel, side) for kernel in kernels]
        stacked = np.stack(kernels)
        return stacked / stacked.sum(axis=(1, 2), keepdims=True)

    def pixel_flags(
        self, calexp: VisitImage, models: SourceModels, footprints: torch.Tensor | None
    ) -> dict[str, np.ndarray]:
        """The `PIXEL_FLAG_PLANES` flags of each source: a mask plane in its footprint (all its
        stamp pixels when ``footprints`` is None) or in its central 3x3 pixels.  Planes the
        exposure's mask lacks give false flags (logged)."""
        mask = calexp.mask
        centre = models.stamp_size // 2
        centre_box = torch.zeros(models.models.shape, dtype=torch.bool)
        centre_box[:, centre - 1 : centre + 2, centre - 1 : centre + 2] = True
        footprints = torch.ones_like(centre_box) if footprints is None else footprints
        planes: dict[str, np.ndarray] = {}
        missing = []
        flags = {}
        for name, plane, at_centre, _ in PIXEL_FLAG_PLANES:
            if plane not in mask.schema.names:
                missing.append(plane)
                flags[name] = np.zeros(len(models), dtype=bool)
                continue
            if plane not in planes:
                planes[plane] = np.asarray(mask.get(plane), dtype=bool)
            flags[name] = footprint_touches(
                models, centre_box if at_centre else footprints, planes[plane]
            ).numpy()
        if missing:
            self.log.info(
                "Mask planes %s are not in the exposure's mask; their pixel flags are false.",
                sorted(set(missing)),
            )
        return flags

    def check_compatibility(self, calexp: VisitImage, model: BlissModel) -> InputConditions:
        """Compare the exposure with the model's trained conditions (the core's check,
        `out_of_range_problems`, with the tolerances of ``config.inference``).

        Returns
        -------
        conditions
            The exposure's pixel scale and band, for `infer_frame`.

        Raises
        ------
        IncompatibleModelError
            If the band or the pixel scale is not the model's (``inference.out_of_range="error"``).
        IncompatibleExposureError
            If the PSF size or depth lies outside the trained ranges, or the exposure cannot be
            characterized.
        """
        try:
            measured = measure_exposure_conditions(calexp, model.conditions)
        except ValueError as err:
            raise IncompatibleExposureError(f"Cannot characterize the exposure: {err}") from err
        conditions = InputConditions(measured.pixel_scale_arcsec, measured.band)
        inference = self.config.inference
        psf_fwhm_pix = tuple(fwhm / measured.pixel_scale_arcsec for fwhm in measured.psf_fwhm_arcsec)
        problems = out_of_range_problems(
            model,
            conditions,
            (psf_fwhm_pix[0], psf_fwhm_pix[1]),
            measured.noise_njy,
            inference.pixel_scale_rtol,
            inference.psf_fwhm_margin_arcsec,
            inference.depth_margin_mag,
            tuple(inference.extra_bands),
        )
        self.metadata["pixel_scale_arcsec"] = measured.pixel_scale_arcsec
        self.metadata["psf_fwhm_min_arcsec"] = measured.psf_fwhm_arcsec[0]
        self.metadata["psf_fwhm_max_arcsec"] = measured.psf_fwhm_arcsec[1]
        self.metadata["compatibility_problems"] = len(problems)
        if problems:
            error = OutOfTrainedRangeError(problems)
            if self.config.inference.out_of_range == "error":
                raise self._refusal(error)
            self.log.warning(
                "%s Proceeding because inference.out_of_range='flag': every source has "
                "bliss_out_of_range_flag set.",
                "; ".join(problem.message for problem in problems).capitalize() + ".",
            )
        return conditions

    @staticmethod
    def _refusal(error: OutOfTrainedRangeError) -> IncompatibleModelError | IncompatibleExposureError:
        """The pipeline's error for conditions out of range: the whole run's for another band or
        pixel scale (saying how to provide a model for it), this exposure's for its PSF size or depth."""
        if any(problem.quantity == "band" for problem in error.problems):
            return IncompatibleModelError(
                f"{error} To process this band, train a model for it (bliss-train with the band in "
                "conditions.bands) and ingest it with 'butler bliss-ingest-model REPO --model FILE', then "
                "pass its RUN collection to 'pipetask run -i'."
            )
        if any(problem.model_mismatch for problem in error.problems):
            return IncompatibleModelError(str(error))
        return IncompatibleExposureError(str(error))

    def infer(self, calexp: VisitImage, model: BlissModel, visit: int = 0, detector: int = 0) -> FrameResult:
        """Check compatibility and run the core's full-frame inference.

        Raises
        ------
        NoWorkFound
            If no pixel is a valid input.
        IncompatibleExposureError, IncompatibleModelError
            See `check_compatibility`; the latter also if the pixels are not in flux units.
        """
        calexp = self._calibrated(calexp)
        conditions = self.check_compatibility(calexp, model)
        return self._infer_pixels(calexp, model, self._pixels(calexp), visit, detector, conditions)

    @staticmethod
    def _calibrated(calexp: VisitImage) -> VisitImage:
        """The exposure in nJy (see `calibrated_exposure`): counts and electrons through its
        photometric scaling."""
        try:
            return calibrated_exposure(calexp)
        except ValueError as err:
            # Units without a calibration to nJy: no exposure of these data can be processed.
            raise IncompatibleModelError(str(err)) from err

    def _pixels(self, calexp: VisitImage) -> ExposurePixels:
        """The exposure's pixels in nJy and its invalid-pixel map (see `exposure_pixels`)."""
        pixels = exposure_pixels(calexp, self.config.inference.invalid_mask_planes)
        if pixels.missing_planes:
            self.log.info("Mask planes %s are not in the exposure's mask; ignored.", pixels.missing_planes)
        return pixels

    def _infer_pixels(
        self,
        calexp: VisitImage,
        model: BlissModel,
        pixels: ExposurePixels,
        visit: int,
        detector: int,
        conditions: InputConditions | None = None,
    ) -> FrameResult:
        """`infer` on pixels already taken from ``calexp``."""
        inference = self.config.inference
        seed = int(np.random.SeedSequence([inference.seed, visit, detector]).generate_state(1)[0])
        height, width = pixels.image.shape
        # Pixels the model's inputs cannot represent (a hot pixel, a missed cosmic ray, a variance far too
        # small) are invalid for the deblending as they are for the network, and count as invalid.
        max_snr = representable_signal_to_noise(model, None if conditions is None else conditions.band)
        np.logical_or(
            pixels.invalid, unrepresentable_pixels(pixels.image, pixels.variance, max_snr), out=pixels.invalid
        )
        self.log.info("Running BLISS on a %dx%d image (%d samples).", width, height, inference.n_samples)
        last_log = [time.monotonic()]

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if now - last_log[0] >= self.config.progress_interval_s and done < total:
                self.log.info("BLISS inference: %d of %d chunks done.", done, total)
                last_log[0] = now

        try:
            frame = infer_frame(
                model,
                pixels.image,
                pixels.variance,
                pixels.invalid.astype(np.uint8),
                psf_kernel_function(calexp),
                self.config.frame_config(seed),
                mask_plane_bits={BLISS_INVALID_PLANE: 0},
                progress=progress,
                conditions=conditions,
            )
        except OutOfTrainedRangeError as err:
            # The core measures the PSF and the depth on its own (a finer PSF grid, the valid pixels'
            # noise), which can differ slightly from the exposure's summary in check_compatibility.
            raise self._refusal(err) from err
        invalid_fraction = float(pixels.invalid.mean())
        self.metadata["torch_threads"] = torch.get_num_threads()
        self.metadata["invalid_pixel_fraction"] = invalid_fraction
        for stage, seconds in frame.timings.items():
            self.metadata[f"time_{stage}_s"] = seconds
        if frame.status == "no_valid_pixels":
            raise NoWorkFound(
                f"No valid pixel in the {width}x{height} image (all masked in "
                f"{list(inference.invalid_mask_planes)}, non-finite, with non-positive variance, or "
                "beyond the signal-to-noise the model represents)."
            )
        n_sources = int(frame.catalog.n_sources[0])
        self.metadata["n_sources"] = n_sources
        self.metadata["n_samples"] = len(frame.samples)
        if frame.samples:
            self.metadata["mean_sources_per_sample"] = float(
                np.mean([int(sample.n_sources[0]) for sample in frame.samples])
            )
        self.log.info(
            "BLISS found %d sources (detection probability > %.2f) in %.1f s; %.1f%% of pixels invalid.",
            n_sources,
            self.config.inference.detection_threshold,
            frame.timings.get("total", float("nan")),
            100 * invalid_fraction,
        )
        return frame

    def make_source_table(
        self,
        frame: FrameResult,
        calexp: VisitImage,
        id_generator: SourceIdGenerator,
        visit: int,
        detector: int,
    ) -> Table:
        """The ``bliss_source`` table (see `source_table`); raises `NonFiniteOutputError`."""
        x0, y0 = int(calexp.bbox.x.start), int(calexp.bbox.y.start)
        ids = id_generator.arange(int(frame.catalog.n_sources[0]))
        obs_info = getattr(calexp, "obs_info", None)
        table = source_table(
            frame,
            ids,
            x0,
            y0,
            calexp.sky_projection.pixel_to_sky,
            visit,
            detector,
            band=calexp.band or "",
            physical_filter=getattr(obs_info, "physical_filter", None) or "",
        )
        _check_finite(table, "bliss_source")
        return table

    def make_samples_table(
        self,
        frame: FrameResult,
        calexp: VisitImage,
        visit: int,
        detector: int,
        families: BlendFamilies | None = None,
        parent_ids: np.ndarray | None = None,
    ) -> Table:
        """The ``bliss_catalog_samples`` table (see `samples_table`) with each sample source's blend
        family (`add_sample_families`); raises `NonFiniteOutputError`."""
        x0, y0 = int(calexp.bbox.x.start), int(calexp.bbox.y.start)
        table = samples_table(frame, x0, y0, calexp.sky_projection.pixel_to_sky, visit, detector)
        parent_ids = np.zeros(0, dtype=np.int64) if parent_ids is None else parent_ids
        add_sample_families(table, families, parent_ids, x0, y0)
        _check_finite(table, "bliss_catalog_samples")
        return table


def _centre_boxes(frame: FrameResult) -> SourceModels:
    """Empty 3x3 stamps centred on each detected source (local pixels), for pixel flags without models."""
    catalog = frame.catalog
    n_sources = int(catalog.n_sources[0])
    x0 = torch.round(catalog.x[0, :n_sources].double()).long() - 1
    y0 = torch.round(catalog.y[0, :n_sources].double()).long() - 1
    return SourceModels(
        torch.zeros(n_sources, 3, 3),
        torch.ones(n_sources, dtype=torch.int64),
        x0,
        y0,
        torch.zeros(n_sources, dtype=torch.bool),
    )


def _padded(kernel: np.ndarray, side: int) -> np.ndarray:
    """A kernel image zero-padded to ``side`` x ``side``, keeping its centre pixel at the centre."""
    rows, cols = kernel.shape
    top, left = (side - rows) // 2, (side - cols) // 2
    out = np.zeros((side, side))
    out[top : top + rows, left : left + cols] = kernel
    return out


def _check_finite(table: Table, dataset: str) -> None:
    bad = [
        name
        for name in table.colnames
        if table[name].dtype.kind == "f"
        and not np.isfinite(np.ma.getdata(table[name])[~np.ma.getmaskarray(table[name])]).all()
    ]
    if bad:
        raise NonFiniteOutputError(dataset, bad)
