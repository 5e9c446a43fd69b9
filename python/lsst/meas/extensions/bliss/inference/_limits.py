"""The conditions a model was trained for, and the check of an image's conditions against them.

A network trained on simulations has seen a range of pixel scales, PSF sizes, noise levels and one
band; outside them its posterior is an extrapolation that nothing validated.  `infer_frame` measures
an image's PSF size and noise level, takes its pixel scale and band from the caller
(`InputConditions`), and refuses what lies outside the model's trained ranges (widened by the
tolerances of `FrameConfig`) with an error that names the quantity, its value and the range, unless
the caller overrides the check (then every catalog row carries ``flag_out_of_range``).  The pipeline
task runs the same check.

The trained ranges, from what the model file records:

* pixel scale: the model's, within ``pixel_scale_rtol``;
* PSF FWHM: the simulator's range of training PSFs (or the nominal FWHM), widened by
  ``psf_fwhm_margin_arcsec`` on both sides;
* noise level (depth): the median per-pixel noise of the training images is the sky noise of the
  band's nominal conditions (over the simulator's range of exposure times and variance-plane
  conventions, where it draws them); an image whose median noise lies more than
  ``depth_margin_mag`` magnitudes (a factor ``10^(0.4 depth_margin_mag)``) beyond that range is
  deeper or shallower than anything trained.  An image of unknown band is held to the union of the
  trained bands' ranges;
* band: one of the model's trained bands (`BlissModel.trained_bands`), or one of ``extra_bands``.
"""

from __future__ import annotations

__all__ = [
    "InputConditions",
    "OutOfRange",
    "OutOfTrainedRangeError",
    "TrainedRange",
    "out_of_range_problems",
    "representable_signal_to_noise",
    "trained_noise_range_njy",
    "trained_psf_fwhm_range_arcsec",
    "trained_ranges",
]

import dataclasses
import math

from ..io import BlissModel
from ..network import max_representable_signal_to_noise
from ..survey import SurveyConditions

_GAIN_CONVENTION_NOISE_FACTORS = {"gain_x0.5": math.sqrt(2.0), "gain_x2": math.sqrt(0.5)}
"""Factor by which a variance convention (`VARIANCE_CONVENTIONS`) scales an image's median noise."""


@dataclasses.dataclass(frozen=True)
class InputConditions:
    """What the caller knows of an image's observing conditions besides its pixels.

    Attributes
    ----------
    pixel_scale_arcsec
        Pixel scale, arcsec per pixel (from the image's WCS); None assumes the model's (unchecked).
    band
        Filter band of the image; None when unknown (unchecked).
    """

    pixel_scale_arcsec: float | None = None
    band: str | None = None

    def __post_init__(self) -> None:
        if self.pixel_scale_arcsec is not None and not (
            math.isfinite(self.pixel_scale_arcsec) and self.pixel_scale_arcsec > 0
        ):
            raise ValueError(
                f"pixel_scale_arcsec={self.pixel_scale_arcsec} must be a positive number of arcsec per pixel."
            )


@dataclasses.dataclass(frozen=True)
class TrainedRange:
    """The values of one quantity a model was trained for, tolerances included.

    Attributes
    ----------
    quantity
        What is measured, as the messages name it (``"pixel scale"``, ``"PSF FWHM"``, ...).
    low, high
        The range's bounds, in ``unit``.
    unit
        Unit of the bounds and of the values checked against them.
    """

    quantity: str
    low: float
    high: float
    unit: str

    def contains(self, value: float) -> bool:
        """Whether ``value`` (in `unit`) lies within the range (a non-finite value does not)."""
        return math.isfinite(value) and self.low <= value <= self.high

    def problem(self, value: float) -> str:
        """The sentence that names ``value`` and the range."""
        return (
            f"{self.quantity} {value:.4g} {self.unit} is outside the model's trained range "
            f"{self.low:.4g}-{self.high:.4g} {self.unit}"
        )


@dataclasses.dataclass(frozen=True)
class OutOfRange:
    """One quantity of an image outside the model's trained range.

    Attributes
    ----------
    quantity
        ``"pixel_scale"``, ``"band"``, ``"psf_fwhm"`` or ``"noise"``.
    message
        The sentence naming the quantity, its value, the range and the
        tolerance that widens it.
    """

    quantity: str
    message: str

    @property
    def model_mismatch(self) -> bool:
        """True for a property of the whole data set rather than of one exposure (pixel scale,
        band): no exposure of it can be processed with this model."""
        return self.quantity in ("pixel_scale", "band")


class OutOfTrainedRangeError(ValueError):
    """An image's conditions lie outside what the model was trained for.

    Parameters
    ----------
    problems
        The quantities out of range.
    """

    def __init__(self, problems: list[OutOfRange]) -> None:
        self.problems = list(problems)
        super().__init__(
            "The image is outside the model's training conditions: "
            + "; ".join(problem.message for problem in problems)
            + ". Widen the tolerance named in parentheses, or set out_of_range='flag' to run anyway "
            "with every source flagged."
        )


def trained_psf_fwhm_range_arcsec(model: BlissModel) -> tuple[float, float]:
    """PSF FWHM range of a model's training simulations, arcsec."""
    fwhm_range = model.simulator.psf_fwhm_range_arcsec
    if fwhm_range is None:
        return (model.conditions.psf_fwhm_arcsec, model.conditions.psf_fwhm_arcsec)
    return (float(fwhm_range[0]), float(fwhm_range[1]))


def _band_noise_range_njy(model: BlissModel, conditions: SurveyConditions) -> tuple[float, float]:
    """Median per-pixel noise range (nJy) of a band's training images: its sky noise over the
    simulator's exposure times and variance conventions."""
    times = model.simulator.exposure_time_range_s or (conditions.exposure_time_s,)
    noises = [conditions.replace(exposure_time_s=float(time)).background_noise_njy for time in times]
    factors = [_GAIN_CONVENTION_NOISE_FACTORS.get(name, 1.0) for name in model.simulator.variance_conventions]
    return min(noises) * min(factors, default=1.0), max(noises) * max(factors, default=1.0)


def trained_noise_range_njy(model: BlissModel, band: str | None = None) -> tuple[float, float]:
    """Median per-pixel noise range of a model's training images, nJy, without tolerance.

    Parameters
    ----------
    model
        The model.
    band
        A trained band: its range; None or a band not trained: the union of every trained band's.
    """
    if band in model.trained_bands:
        return _band_noise_range_njy(model, model.conditions_for_band(band))
    ranges = [_band_noise_range_njy(model, item) for item in model.band_conditions or (model.conditions,)]
    return min(low for low, _ in ranges), max(high for _, high in ranges)


def representable_signal_to_noise(model: BlissModel, band: str | None = None) -> float:
    """`max_representable_signal_to_noise` of an image of ``band`` (a trained band's conditions);
    the largest over the trained bands for None or a band not trained."""
    if band in model.trained_bands:
        return max_representable_signal_to_noise(model.conditions_for_band(band))
    return max(
        max_representable_signal_to_noise(item) for item in model.band_conditions or (model.conditions,)
    )


def trained_ranges(
    model: BlissModel,
    pixel_scale_rtol: float,
    psf_fwhm_margin_arcsec: float,
    depth_margin_mag: float,
    band: str | None = None,
) -> dict[str, TrainedRange]:
    """The model's trained pixel scale, PSF FWHM and noise ranges, widened by the tolerances.

    Parameters
    ----------
    model
        The model.
    pixel_scale_rtol, psf_fwhm_margin_arcsec, depth_margin_mag
        Tolerances (see `FrameConfig`).
    band
        The band whose noise range is given (see `trained_noise_range_njy`).

    Returns
    -------
    ranges
        ``pixel_scale_arcsec``, ``psf_fwhm_arcsec`` and ``noise_njy`` (median per-pixel noise).
    """
    conditions = model.conditions
    scale = conditions.pixel_scale_arcsec
    low, high = trained_psf_fwhm_range_arcsec(model)
    noise_low, noise_high = trained_noise_range_njy(model, band)
    factor = 10.0 ** (0.4 * depth_margin_mag)
    return {
        "pixel_scale_arcsec": TrainedRange(
            "pixel scale", scale * (1.0 - pixel_scale_rtol), scale * (1.0 + pixel_scale_rtol), "arcsec/px"
        ),
        "psf_fwhm_arcsec": TrainedRange(
            "PSF FWHM", max(low - psf_fwhm_margin_arcsec, 0.0), high + psf_fwhm_margin_arcsec, "arcsec"
        ),
        "noise_njy": TrainedRange("median pixel noise", noise_low / factor, noise_high * factor, "nJy"),
    }


def out_of_range_problems(
    model: BlissModel,
    conditions: InputConditions,
    psf_fwhm_pix: tuple[float, float],
    noise_njy: float,
    pixel_scale_rtol: float,
    psf_fwhm_margin_arcsec: float,
    depth_margin_mag: float,
    extra_bands: tuple[str, ...] = (),
) -> list[OutOfRange]:
    """Where an image's conditions leave the model's trained ranges.

    Parameters
    ----------
    model
        The model and its recorded training conditions.
    conditions
        The image's pixel scale and band, where known.
    psf_fwhm_pix
        Smallest and largest PSF FWHM over the image, pixels.
    noise_njy
        Median per-pixel noise of the image's valid pixels, nJy.
    pixel_scale_rtol, psf_fwhm_margin_arcsec, depth_margin_mag, extra_bands
        Tolerances (see `FrameConfig`).

    Returns
    -------
    problems
        One per quantity out of range, naming it, its value and the range
        (and the config field that widens it); empty when all lie within.
    """
    ranges = trained_ranges(
        model, pixel_scale_rtol, psf_fwhm_margin_arcsec, depth_margin_mag, conditions.band
    )
    problems = []
    scale = model.conditions.pixel_scale_arcsec
    if conditions.pixel_scale_arcsec is not None:
        scale = conditions.pixel_scale_arcsec
        if not ranges["pixel_scale_arcsec"].contains(scale):
            message = ranges["pixel_scale_arcsec"].problem(scale) + " (pixel_scale_rtol)"
            problems.append(OutOfRange("pixel_scale", message))
    trained = model.trained_bands
    if conditions.band is not None and conditions.band not in trained and conditions.band not in extra_bands:
        message = (
            f"band {conditions.band!r} is not among the model's trained bands {list(trained)}: use a model "
            f"trained for band {conditions.band!r} (extra_bands={list(extra_bands)})"
        )
        problems.append(OutOfRange("band", message))
    for fwhm in sorted({psf_fwhm_pix[0] * scale, psf_fwhm_pix[1] * scale}):
        if not ranges["psf_fwhm_arcsec"].contains(fwhm):
            message = ranges["psf_fwhm_arcsec"].problem(fwhm) + " (psf_fwhm_margin_arcsec)"
            problems.append(OutOfRange("psf_fwhm", message))
    if not ranges["noise_njy"].contains(noise_njy):
        message = ranges["noise_njy"].problem(noise_njy) + " (depth_margin_mag)"
        problems.append(OutOfRange("noise", message))
    return problems
