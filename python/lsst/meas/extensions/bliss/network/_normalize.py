"""Survey-agnostic network inputs: noise units, validity, PSF conditioning."""

from __future__ import annotations

__all__ = [
    "INPUT_NOISE_MODES",
    "N_INPUT_CHANNELS",
    "NetworkInputs",
    "check_input_noise",
    "max_representable_signal_to_noise",
    "noise_scale",
    "prepare_inputs",
    "unrepresentable_pixels",
]

import dataclasses
import math
from types import ModuleType

import numpy as np
import torch

from ..survey import DEFAULT_INVALID_MASK_PLANES, SurveyConditions, invalid_mask_bits

ASINH_SOFTENING = (1.0, 10.0)
"""Softening scales (noise units) of the ``asinh`` data channels: the first resolves faint sources,
the second stays nearly linear up to bright peaks so that their fluxes are not compressed away."""
N_INPUT_CHANNELS = len(ASINH_SOFTENING) + 2
REPRESENTABLE_HEADROOM = 4.0
"""Factor between `max_representable_signal_to_noise` and the largest signal-to-noise an unsaturated
pixel can have at the model's nominal conditions: room for skies up to 16 times darker (in electrons)
than the nominal one."""
INPUT_NOISE_MODES: tuple[str, ...] = ("pixel_variance", "background")
"""Noise units of the data channels (`prepare_inputs`'s ``input_noise``): each pixel's own
``sqrt(variance)``, or the image's background noise (its median per-pixel noise) for every pixel."""
PSF_FWHM_REFERENCE_PIX = 4.0
PSF_FWHM_SCALE_PIX = 1.0


def max_representable_signal_to_noise(conditions: SurveyConditions) -> float:
    """The largest ``|image| / sqrt(variance)`` of a pixel that the model's inputs can represent.

    A pixel below the full well holds at most ``full_well_e`` electrons, so
    its signal-to-noise is at most ``full_well_e / sqrt(sky_e + read_noise_e^2)``
    even for a variance plane without the source's own photon noise (with it,
    as in the training images, the bound is ``sqrt(full_well_e)``, far
    lower); brighter pixels are saturated, which the mask flags and the
    training images never showed unmasked.  `REPRESENTABLE_HEADROOM` times
    that bound leaves room for darker skies than the nominal one.  A pixel
    beyond it is a hot pixel, a missed cosmic ray, or a variance far too
    small: the network never saw such an input, and its posterior there
    (fluxes of 10^10 nJy and more, spurious detections all around) means
    nothing, so `prepare_inputs` and `noise_scale` treat it as invalid, like a
    masked pixel.

    Parameters
    ----------
    conditions
        The model's nominal conditions (full well, sky level, read noise).

    Returns
    -------
    bound
        Signal-to-noise, dimensionless (about 15,000 for LSST r-band visits).
    """
    noise_e = math.sqrt(conditions.sky_level_electrons + conditions.read_noise_e**2)
    return REPRESENTABLE_HEADROOM * conditions.full_well_e / noise_e


def unrepresentable_pixels(image: np.ndarray, variance: np.ndarray, max_signal_to_noise: float) -> np.ndarray:
    """Pixels that `prepare_inputs` turns invalid only because of ``max_signal_to_noise``.

    For code that uses an image's pixels besides the network (deblending), so
    that it treats them as the network's inputs do.

    Parameters
    ----------
    image, variance
        nJy and nJy^2, any shape.
    max_signal_to_noise
        See `max_representable_signal_to_noise`.

    Returns
    -------
    unrepresentable
        Bool array of ``image``'s shape: finite image and variance, positive
        variance, and ``|image| / sqrt(variance)`` beyond ``max_signal_to_noise``
        (computed as `prepare_inputs` computes it).
    """
    valid = np.isfinite(image) & np.isfinite(variance) & (variance > 0)
    return valid & ~_representable(np, image, variance, valid, max_signal_to_noise)


@dataclasses.dataclass
class NetworkInputs:
    """Normalized network inputs of a batch of images.

    Attributes
    ----------
    tensor
        Shape (B, N_INPUT_CHANNELS, H, W): ``asinh(image / (s sigma))`` for each
        softening ``s`` of `ASINH_SOFTENING` (zero where invalid), with ``sigma``
        the pixel's ``sqrt(variance)`` or the image's ``flux_scale_njy``
        (`prepare_inputs`'s ``input_noise``), the
        validity of each pixel (0 or 1), and the PSF FWHM in pixels,
        standardized, as a plane (zero where invalid: an invalid pixel has every
        channel zero, as the convolutions' padding beyond the image does).
    flux_scale_njy
        Median per-pixel noise of each image in nJy, shape (B,); fluxes are
        predicted in these units, which makes the network independent of the
        photometric calibration.
    valid
        Valid pixels, shape (B, H, W), bool.
    """

    tensor: torch.Tensor
    flux_scale_njy: torch.Tensor
    valid: torch.Tensor

    @property
    def n_valid(self) -> torch.Tensor:
        """Number of valid pixels per image, shape (B,)."""
        return self.valid.sum(dim=(-2, -1))


def prepare_inputs(
    image: torch.Tensor,
    variance: torch.Tensor,
    mask: torch.Tensor | None,
    psf_fwhm_pix: torch.Tensor | float,
    invalid_bits: int | None = None,
    flux_scale_njy: torch.Tensor | None = None,
    max_signal_to_noise: float | None = None,
    input_noise: str = "pixel_variance",
) -> NetworkInputs:
    """Normalize images for the encoder.

    Pixels are invalid where the image or variance is not finite, the
    variance is not positive, the mask has any of ``invalid_bits`` set, or
    ``|image| / sqrt(variance)`` exceeds ``max_signal_to_noise``; invalid
    pixels are zero in the data channel and flagged in the validity
    channel, so NaNs never reach the network.

    Parameters
    ----------
    image
        Background-subtracted image in nJy, shape (B, H, W).
    variance
        Variance in nJy^2, shape (B, H, W).
    mask
        Integer bit mask, shape (B, H, W), or None.
    psf_fwhm_pix
        PSF FWHM in pixels: scalar, shape (B,), or a per-pixel map of shape
        (B, H, W) for a PSF that varies across the image.
    invalid_bits
        Mask bits that make a pixel invalid; default the bits of
        `DEFAULT_INVALID_MASK_PLANES` in `MASK_PLANES`.
    flux_scale_njy
        Noise unit of each image, nJy, shape (B,); default the median
        per-pixel noise of its valid pixels.  Windows of a larger image are
        normalized with the whole image's (`noise_scale`), which makes
        their channels the same as the whole image's.
    max_signal_to_noise
        Pixels of a larger absolute signal-to-noise are invalid (see
        `max_representable_signal_to_noise`); None: no bound.
    input_noise
        Noise unit of the data channels, one of `INPUT_NOISE_MODES` (the
        model's `EncoderConfig.input_noise`): ``"pixel_variance"`` divides
        each pixel by its own ``sqrt(variance)``; ``"background"`` divides
        every pixel by ``flux_scale_njy``, so that the channels are a fixed
        function of the image in nJy and do not depend on the variance
        plane's source term (the validity and the ``max_signal_to_noise``
        test stay per pixel).

    Returns
    -------
    inputs
        The normalized inputs.

    Raises
    ------
    ValueError
        If the shapes of image, variance, mask and a PSF FWHM map differ, or
        ``input_noise`` is not one of `INPUT_NOISE_MODES`.
    TypeError
        If ``psf_fwhm_pix`` is not a number or numeric array (naming it).
    """
    if image.ndim != 3:
        raise ValueError(f"image must have shape (B, H, W); got {tuple(image.shape)}.")
    check_input_noise(input_noise)
    for name, other in (("variance", variance), ("mask", mask)):
        if other is not None and other.shape != image.shape:
            raise ValueError(
                f"image and {name} shapes differ: image {tuple(image.shape)}, {name} {tuple(other.shape)}."
            )
    invalid_bits, mask, on_cpu = _mask_bits_and_backend(image, mask, invalid_bits)
    xp: ModuleType = np if on_cpu else torch
    # The channels are written in place into one tensor instead of stacked from copies; the first holds
    # the signal-to-noise until the others are made from it.
    tensor = image.new_empty(image.shape[0], N_INPUT_CHANNELS, *image.shape[1:])
    channels = _as_array(tensor, on_cpu)
    signal = channels[:, 0]
    arrays = [_as_array(array, on_cpu) for array in (image, variance, mask)]
    valid, noise = _noise_units(xp, *arrays, invalid_bits, signal, max_signal_to_noise)
    if flux_scale_njy is None:
        flux_scale = torch.tensor(
            [float(_lower_median(n[v])) if bool(v.any()) else 1.0 for n, v in zip(noise, valid, strict=True)],
            dtype=image.dtype,
            device=image.device,
        )
    elif flux_scale_njy.shape != image.shape[:1]:
        raise ValueError(
            f"flux_scale_njy has shape {tuple(flux_scale_njy.shape)}; expected ({image.shape[0]},)."
        )
    else:
        flux_scale = flux_scale_njy.to(dtype=image.dtype, device=image.device)
    if input_noise == "background":
        # The signal in background-noise units: linear in the image whatever the variance plane's
        # convention (source Poisson term, gain), which sets only the validity and the unit's value.
        scale = _as_array(flux_scale.reshape(-1, 1, 1), on_cpu)
        xp.divide(xp.where(valid, arrays[0], 0.0), scale, out=signal)
    fwhm = _psf_fwhm_tensor(psf_fwhm_pix, image)
    if fwhm.ndim == 3:
        if fwhm.shape != image.shape:
            raise ValueError(
                f"PSF FWHM map shape {tuple(fwhm.shape)} differs from the image shape {tuple(image.shape)}."
            )
    else:
        fwhm = fwhm.reshape(-1, 1, 1).expand_as(image)
    for channel in reversed(range(len(ASINH_SOFTENING))):
        target = channels[:, channel]
        xp.asinh(xp.divide(signal, ASINH_SOFTENING[channel], out=target), out=target)
    channels[:, len(ASINH_SOFTENING)] = valid
    valid = torch.as_tensor(valid)
    torch.sub(fwhm, PSF_FWHM_REFERENCE_PIX, out=tensor[:, -1]).div_(PSF_FWHM_SCALE_PIX)
    # Invalid pixels then look like the zero padding beyond an image's edge, which every training image
    # shows; a PSF plane that stops only at the image edge made a step that one model read as sources
    # along masked detector borders (EDGE).
    tensor[:, -1].masked_fill_(~valid, 0.0)
    return NetworkInputs(tensor=tensor, flux_scale_njy=flux_scale, valid=valid)


def check_input_noise(input_noise: str) -> None:
    """Raise a `ValueError` naming ``input_noise`` unless it is one of `INPUT_NOISE_MODES`."""
    if input_noise not in INPUT_NOISE_MODES:
        raise ValueError(
            f"input_noise={input_noise!r} is not a noise unit of the network inputs; choose one of "
            f"{', '.join(map(repr, INPUT_NOISE_MODES))}."
        )


def _psf_fwhm_tensor(psf_fwhm_pix: object, image: torch.Tensor) -> torch.Tensor:
    """``psf_fwhm_pix`` as a tensor of the image's dtype and device, or a `TypeError` naming it."""
    if isinstance(psf_fwhm_pix, str | bytes | bool) or psf_fwhm_pix is None:
        # torch would read a string as a sequence of characters' codes, or fail with a message that names
        # neither the parameter nor what it should be.
        raise TypeError(
            f"psf_fwhm_pix={psf_fwhm_pix!r} ({type(psf_fwhm_pix).__name__}) is not a PSF FWHM: pass the "
            "FWHM in pixels as a number, a tensor of shape (B,), or a per-pixel map of shape (B, H, W)."
        )
    try:
        return torch.as_tensor(psf_fwhm_pix, dtype=image.dtype, device=image.device)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"psf_fwhm_pix={psf_fwhm_pix!r} is not a PSF FWHM ({err}): pass the FWHM in pixels as a "
            "number, a tensor of shape (B,), or a per-pixel map of shape (B, H, W)."
        ) from err


def noise_scale(
    image: torch.Tensor,
    variance: torch.Tensor,
    mask: torch.Tensor | None,
    invalid_bits: int | None = None,
    max_signal_to_noise: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The valid pixels and the noise unit of images, without their network inputs.

    For images normalized a window at a time (`infer_frame`): ``prepare_inputs`` of each window
    with this ``flux_scale_njy`` gives the channels that it gives for the whole image, without the
    whole image's channels in memory at once.

    Parameters
    ----------
    image, variance, mask, invalid_bits, max_signal_to_noise
        As for `prepare_inputs`, shape (B, H, W).

    Returns
    -------
    valid
        Valid pixels, shape (B, H, W), bool.
    flux_scale_njy
        Median per-pixel noise of each image's valid pixels (1 where none is), nJy, shape (B,):
        the value `prepare_inputs` computes.
    """
    invalid_bits, mask, on_cpu = _mask_bits_and_backend(image, mask, invalid_bits)
    xp: ModuleType = np if on_cpu else torch
    variance_array = _as_array(variance, on_cpu)
    image_array, mask_array = _as_array(image, on_cpu), _as_array(mask, on_cpu)
    valid = _valid_pixels(xp, image_array, variance_array, mask_array, invalid_bits)
    if max_signal_to_noise is not None:
        valid &= _representable(xp, image_array, variance_array, valid, max_signal_to_noise)
    # The square root is monotonic, so the median noise is the root of the median variance (the same
    # element, rounded the same way), and no image-sized array of noise is made.
    scales = [
        xp.sqrt(_lower_median(v[ok])) if bool(ok.any()) else 1.0
        for v, ok in zip(variance_array, valid, strict=True)
    ]
    flux_scale = torch.tensor([float(value) for value in scales], dtype=image.dtype, device=image.device)
    return torch.as_tensor(valid), flux_scale


def _mask_bits_and_backend(
    image: torch.Tensor, mask: torch.Tensor | None, invalid_bits: int | None
) -> tuple[int, torch.Tensor | None, bool]:
    """The invalid bits (default those of `DEFAULT_INVALID_MASK_PLANES`), the mask in a dtype that
    holds them, and whether numpy does the element-wise work."""
    if invalid_bits is None:
        invalid_bits = invalid_mask_bits(DEFAULT_INVALID_MASK_PLANES)
    # Integer masks of 32 bits or more take the bits as they are (a 64-bit copy of a 4k x 4k mask costs
    # more than the test).
    if mask is not None and not (mask.dtype in (torch.int32, torch.int64) and invalid_bits < 2**31):
        mask = mask.long()
    # On the CPU numpy does the element-wise work: its kernels are vectorized where torch's are not
    # (asinh) or run slower on few cores, so `prepare_inputs` is markedly faster this way on a CPU.
    # The results agree to within 2 ulp.
    on_cpu = image.device.type == "cpu" and image.dtype in (torch.float32, torch.float64)
    return invalid_bits, mask, on_cpu


def _valid_pixels[Array: (np.ndarray, torch.Tensor)](
    xp: ModuleType, image: Array, variance: Array, mask: Array | None, invalid_bits: int
) -> Array:
    """Finite image and variance, positive variance and none of ``invalid_bits`` in ``mask``."""
    valid = xp.isfinite(image) & xp.isfinite(variance) & (variance > 0)
    if mask is not None:
        valid &= (mask & invalid_bits) == 0
    return valid


def _representable[Array: (np.ndarray, torch.Tensor)](
    xp: ModuleType, image: Array, variance: Array, valid: Array, max_signal_to_noise: float
) -> Array:
    """Pixels whose ``|image| / sqrt(variance)`` is at most ``max_signal_to_noise``, shape (B, H, W),
    computed as `_noise_units` computes the signal-to-noise of valid pixels (the same operations, so
    both agree to the bit on which pixels pass)."""
    signal = xp.where(valid, image, 0.0)
    noise = xp.where(valid, variance, 1.0)
    xp.sqrt(noise, out=noise)
    xp.divide(signal, noise, out=signal)
    return xp.abs(signal) <= max_signal_to_noise


def _as_array(tensor: torch.Tensor | None, as_numpy: bool) -> np.ndarray | torch.Tensor | None:
    """``tensor`` itself, or if ``as_numpy`` a numpy array sharing its memory."""
    return tensor.numpy() if as_numpy and tensor is not None else tensor


def _noise_units[Array: (np.ndarray, torch.Tensor)](
    xp: ModuleType,
    image: Array,
    variance: Array,
    mask: Array | None,
    invalid_bits: int,
    signal: Array,
    max_signal_to_noise: float | None = None,
) -> tuple[Array, Array]:
    """Validity and noise (sqrt of the variance, 1 where invalid) of each pixel, shape (B, H, W) each,
    computed with the array module ``xp`` (numpy or torch); the signal-to-noise (0 where invalid) is
    written to ``signal``.  Pixels beyond ``max_signal_to_noise`` become invalid.  (Few temporaries:
    on a CPU, memory touched for the first time costs about as much as the arithmetic.)"""
    valid = _valid_pixels(xp, image, variance, mask, invalid_bits)
    noise = xp.where(valid, variance, 1.0)
    xp.sqrt(noise, out=noise)
    xp.divide(xp.where(valid, image, 0.0), noise, out=signal)
    if max_signal_to_noise is not None:
        unrepresentable = xp.abs(signal) > max_signal_to_noise
        if bool(unrepresentable.any()):
            valid &= ~unrepresentable
            signal[unrepresentable] = 0.0
            noise[unrepresentable] = 1.0
    return valid, noise


def _lower_median(values: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """The lower of the two middle values of a 1-d array, as `torch.median` gives it, as a 0-d array
    of the values' dtype; a numpy array is reordered (numpy's selection is faster than torch's on
    a CPU)."""
    if isinstance(values, torch.Tensor):
        return values.median()
    middle = (values.size - 1) // 2
    values.partition(middle)
    return values[middle]
