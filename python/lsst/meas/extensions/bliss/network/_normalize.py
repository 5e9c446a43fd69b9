"""Survey-agnostic network inputs: noise units, validity, PSF conditioning."""

from __future__ import annotations

__all__ = [
    "N_INPUT_CHANNELS",
    "NetworkInputs",
    "noise_scale",
    "prepare_inputs",
]

import dataclasses
from types import ModuleType

import numpy as np
import torch

from ..survey import DEFAULT_INVALID_MASK_PLANES, invalid_mask_bits

ASINH_SOFTENING = (1.0, 10.0)
"""Softening scales (noise units) of the ``asinh`` data channels: the first resolves faint sources,
the second stays nearly linear up to bright peaks so that their fluxes are not compressed away."""
N_INPUT_CHANNELS = len(ASINH_SOFTENING) + 2
PSF_FWHM_REFERENCE_PIX = 4.0
PSF_FWHM_SCALE_PIX = 1.0


@dataclasses.dataclass
class NetworkInputs:
    """Normalized network inputs of a batch of images.

    Attributes
    ----------
    tensor
        Shape (B, N_INPUT_CHANNELS, H, W): ``asinh(image / (s sqrt(variance)))``
        for each softening ``s`` of `ASINH_SOFTENING` (zero where invalid), the
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
) -> NetworkInputs:
    """Normalize images for the encoder.

    Pixels are invalid where the image or variance is not finite, the
    variance is not positive, or the mask has any of ``invalid_bits`` set;
    invalid pixels are zero in the data channel and flagged in the validity
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

    Returns
    -------
    inputs
        The normalized inputs.

    Raises
    ------
    ValueError
        If the shapes of image, variance, mask and a PSF FWHM map differ.
    """
    if image.ndim != 3:
        raise ValueError(f"image must have shape (B, H, W); got {tuple(image.shape)}.")
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
    valid, noise = _noise_units(xp, *arrays, invalid_bits, signal)
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
    fwhm = torch.as_tensor(psf_fwhm_pix, dtype=image.dtype, device=image.device)
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


def noise_scale(
    image: torch.Tensor, variance: torch.Tensor, mask: torch.Tensor | None, invalid_bits: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The valid pixels and the noise unit of images, without their network inputs.

    For images normalized a window at a time (`infer_frame`): ``prepare_inputs`` of each window
    with this ``flux_scale_njy`` gives the channels that it gives for the whole image, without the
    whole image's channels in memory at once.

    Parameters
    ----------
    image, variance, mask, invalid_bits
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


def _as_array(tensor: torch.Tensor | None, as_numpy: bool) -> np.ndarray | torch.Tensor | None:
    """``tensor`` itself, or if ``as_numpy`` a numpy array sharing its memory."""
    return tensor.numpy() if as_numpy and tensor is not None else tensor


def _noise_units[Array: (np.ndarray, torch.Tensor)](
    xp: ModuleType, image: Array, variance: Array, mask: Array | None, invalid_bits: int, signal: Array
) -> tuple[Array, Array]:
    """Validity and noise (sqrt of the variance, 1 where invalid) of each pixel, shape (B, H, W) each,
    computed with the array module ``xp`` (numpy or torch); the signal-to-noise (0 where invalid) is
    written to ``signal``.  (Few temporaries: on a CPU, memory touched for the first time costs about
    as much as the arithmetic.)"""
    valid = _valid_pixels(xp, image, variance, mask, invalid_bits)
    noise = xp.where(valid, variance, 1.0)
    xp.sqrt(noise, out=noise)
    xp.divide(xp.where(valid, image, 0.0), noise, out=signal)
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
