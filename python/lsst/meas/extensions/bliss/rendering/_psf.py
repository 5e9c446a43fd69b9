"""Point-spread functions in the form the Fourier-space renderer needs.

Every PSF here is a batch of ``P`` PSFs (one per image, or one per position on
an image) that can produce its *effective* PSF transform, i.e. the PSF
convolved with the unit pixel, on the ``rfft2`` grid of an ``N x N`` stamp.
Analytic PSFs (Gaussian, Moffat) are convolved with the pixel analytically;
pixelized PSF images, like the kernel images of LSST exposures, already are
effective PSFs and are used as they are.
"""

from __future__ import annotations

__all__ = [
    "GaussianPsf",
    "ImagePsf",
    "MoffatPsf",
    "PointSpreadFunction",
    "pixel_response_fourier",
    "rfft_wavenumbers",
]

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch

from ._profiles import (
    gaussian_fourier,
    moffat_alpha_over_fwhm,
    moffat_fourier,
    moffat_fourier_one_plus_squared,
)

FWHM_OVER_SIGMA: float = 2.0 * math.sqrt(2.0 * math.log(2.0))


def rfft_wavenumbers(
    fft_size: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Angular wavenumbers of the ``rfft2`` grid of an ``N x N`` stamp.

    Parameters
    ----------
    fft_size
        ``N``, the side of the stamp in pixels.
    device, dtype
        Where and how to create the tensors.

    Returns
    -------
    ky
        Wavenumbers along rows (y), radians per pixel, shape (N, 1).
    kx
        Wavenumbers along columns (x), radians per pixel, shape (1, N // 2 + 1).
    """
    ky = torch.fft.fftfreq(fft_size, device=device, dtype=dtype) * (2.0 * math.pi)
    kx = torch.fft.rfftfreq(fft_size, device=device, dtype=dtype) * (2.0 * math.pi)
    return ky[:, None], kx[None, :]


def pixel_response_fourier(ky: torch.Tensor, kx: torch.Tensor) -> torch.Tensor:
    """Fourier transform of a unit square pixel, ``sinc(kx/2) sinc(ky/2)``.

    Parameters
    ----------
    ky, kx
        Broadcastable wavenumbers in radians per pixel.

    Returns
    -------
    response
        The pixel transform, broadcast shape of the inputs.
    """
    # torch.sinc(z) = sin(pi z) / (pi z), so sinc(k / 2pi) = sin(k/2) / (k/2).
    return torch.sinc(kx / (2.0 * math.pi)) * torch.sinc(ky / (2.0 * math.pi))


@functools.cache
def _centred_grid(
    fft_size: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The squared wavenumber and the windows of `PointSpreadFunction.centred_fourier_grid`.

    Returns
    -------
    k_squared
        ``kx^2 + ky^2``, radians^2 per pixel^2, shape (N // 2 + 1, N) (``[kx, ky]``).
    centring
        ``(-1)^(jx + jy) / N^2``, same shape: the shift that centres a source on the grid and
        the inverse FFT's normalization, for transforms that already hold the pixel (images).
    window
        ``centring`` times the unit pixel's transform, same shape: for analytic profiles.  All
        three are cached per grid and must not be modified.
    """
    ky, kx = rfft_wavenumbers(fft_size, device, dtype)
    kx, ky = kx.reshape(-1, 1), ky.reshape(1, -1)
    index = torch.arange(fft_size, device=device)
    centring = (1.0 - 2.0 * ((index[: kx.shape[0], None] + index) % 2).to(dtype)) / fft_size**2
    return kx.square() + ky.square(), centring, pixel_response_fourier(ky, kx) * centring


def _as_positive_vector(value: float | Sequence[float] | torch.Tensor, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(value, dtype=torch.float64).reshape(-1).clone()
    if tensor.numel() == 0:
        raise ValueError(f"{name} is empty; give at least one value.")
    if not bool(torch.all(torch.isfinite(tensor) & (tensor > 0))):
        raise ValueError(f"{name} must be finite and > 0 (in pixels); got {tensor.tolist()}.")
    return tensor


class PointSpreadFunction(ABC):
    """A batch of ``P`` PSFs usable by the renderer."""

    @property
    @abstractmethod
    def n_psf(self) -> int:
        """Number of PSFs in the batch, ``P``."""

    def fourier_grid(
        self, fft_size: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Effective-PSF transform on the ``rfft2`` grid of an ``N x N`` stamp.

        Parameters
        ----------
        fft_size
            ``N`` in pixels.
        device, dtype
            Device and real dtype of the result.

        Returns
        -------
        transform
            Shape (P, N, N // 2 + 1), real or complex, centred on the pixel
            at index (0, 0) and normalized to 1 at k = 0.  Cached per grid,
            so the result must not be modified.
        """
        cache: dict = self.__dict__.setdefault("_fourier_cache", {})
        key = (fft_size, torch.device(device), dtype)
        if key not in cache:
            cache[key] = self._compute_fourier_grid(fft_size, torch.device(device), dtype)
        return cache[key]

    def centred_fourier_grid(
        self, fft_size: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """`fourier_grid` in the form the renderer multiplies its half-spectra by.

        Transposed to ``[kx, ky]``, contiguous, shape (P, N // 2 + 1, N); times
        ``(-1)^(jx + jy)`` at frequency indices ``jx`` and ``jy`` (a shift by ``N / 2``
        in both axes, which centres a source on the grid) and divided by ``N^2``
        (the normalization of an inverse FFT).  Analytic PSFs compute it directly,
        with their tabulated profiles read at the nearest node of a dense table (error
        below 6e-5 of the value at k = 0), since a new batch of PSFs (one per training
        image) needs it for every stamp size.  Cached like `fourier_grid`.
        """
        cache: dict = self.__dict__.setdefault("_fourier_cache", {})
        key = ("centred", fft_size, torch.device(device), dtype)
        if key not in cache:
            cache[key] = self._compute_centred_fourier_grid(fft_size, torch.device(device), dtype)
        return cache[key]

    def centred_fourier_grid_of(
        self,
        index: torch.Tensor,
        fft_size: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """`centred_fourier_grid` of the PSFs ``index`` (shape (m,)), shape (m, N // 2 + 1, N).

        Only those are computed when there are fewer of them than PSFs in the batch (a training
        batch has a PSF per image, and a stamp size holds the sources of a few images).
        """
        if index.numel() >= self.n_psf:
            return self.centred_fourier_grid(fft_size, device, dtype)[index]
        return self._compute_centred_fourier_grid(fft_size, torch.device(device), dtype, index)

    def _compute_centred_fourier_grid(
        self, fft_size: int, device: torch.device, dtype: torch.dtype, index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Uncached `centred_fourier_grid` (of the PSFs ``index`` only, when given), from `fourier_grid`
        (which already holds the pixel); analytic PSFs compute it directly instead."""
        _, centring, _ = _centred_grid(fft_size, device, dtype)
        grid = self.fourier_grid(fft_size, device, dtype)
        grid = grid if index is None else grid[index]
        return (grid.transpose(-1, -2) * centring).contiguous()

    @abstractmethod
    def _compute_fourier_grid(self, fft_size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Uncached `fourier_grid`."""

    @abstractmethod
    def radius_pix(self) -> torch.Tensor:
        """Radius that contains nearly all (>= 99.8%) of the PSF's light, pixels, shape (P,)."""

    @property
    def min_fft_size(self) -> int:
        """Smallest stamp side ``N`` on which the PSF can be represented."""
        return 1


class GaussianPsf(PointSpreadFunction):
    """Circular Gaussian PSFs.

    Parameters
    ----------
    fwhm_pix
        Full width at half maximum in pixels, scalar or shape (P,).
    """

    def __init__(self, fwhm_pix: float | Sequence[float] | torch.Tensor) -> None:
        self.fwhm_pix = _as_positive_vector(fwhm_pix, "psf_fwhm_pix")

    @property
    def n_psf(self) -> int:
        return self.fwhm_pix.numel()

    def _compute_fourier_grid(self, fft_size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        ky, kx = rfft_wavenumbers(fft_size, device, dtype)
        sigma = (self.fwhm_pix / FWHM_OVER_SIGMA).to(device=device, dtype=dtype)[:, None, None]
        k = torch.sqrt(kx.square() + ky.square())
        return gaussian_fourier(k * sigma) * pixel_response_fourier(ky, kx)

    def _compute_centred_fourier_grid(
        self, fft_size: int, device: torch.device, dtype: torch.dtype, index: torch.Tensor | None = None
    ) -> torch.Tensor:
        k_squared, _, window = _centred_grid(fft_size, device, dtype)
        sigma = (self.fwhm_pix / FWHM_OVER_SIGMA).to(device=device, dtype=dtype)
        sigma = (sigma if index is None else sigma[index])[:, None, None]
        return torch.exp(k_squared * (-0.5 * sigma.square())).mul_(window)

    def radius_pix(self) -> torch.Tensor:
        return 2.0 * self.fwhm_pix


class MoffatPsf(PointSpreadFunction):
    """Circular, untruncated Moffat PSFs, ``(1 + r^2 / alpha^2)^-beta``.

    Parameters
    ----------
    fwhm_pix
        Full width at half maximum in pixels, scalar or shape (P,).
    beta
        Moffat index, shared by the batch; must exceed 1.1.
    """

    def __init__(self, fwhm_pix: float | Sequence[float] | torch.Tensor, beta: float = 3.5) -> None:
        self.fwhm_pix = _as_positive_vector(fwhm_pix, "psf_fwhm_pix")
        if not (math.isfinite(beta) and beta > 1.1):
            raise ValueError(f"moffat_beta={beta} is out of range; it must be finite and > 1.1.")
        self.beta = float(beta)

    @property
    def n_psf(self) -> int:
        return self.fwhm_pix.numel()

    @property
    def alpha_pix(self) -> torch.Tensor:
        """Moffat scale ``alpha`` in pixels, shape (P,)."""
        return self.fwhm_pix * moffat_alpha_over_fwhm(self.beta)

    def _compute_fourier_grid(self, fft_size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        ky, kx = rfft_wavenumbers(fft_size, device, dtype)
        alpha = self.alpha_pix.to(device=device, dtype=dtype)[:, None, None]
        k = torch.sqrt(kx.square() + ky.square())
        return moffat_fourier(k * alpha, self.beta) * pixel_response_fourier(ky, kx)

    def _compute_centred_fourier_grid(
        self, fft_size: int, device: torch.device, dtype: torch.dtype, index: torch.Tensor | None = None
    ) -> torch.Tensor:
        k_squared, _, window = _centred_grid(fft_size, device, dtype)
        alpha = self.alpha_pix.to(device=device, dtype=dtype)
        alpha = (alpha if index is None else alpha[index])[:, None, None]
        one_plus_squared = (k_squared * alpha.square()).add_(1.0)
        return moffat_fourier_one_plus_squared(one_plus_squared, self.beta).mul_(window)

    def radius_pix(self) -> torch.Tensor:
        # Enclosed flux of a Moffat is 1 - (1 + R^2/alpha^2)^(1 - beta).
        ratio = math.sqrt(500.0 ** (1.0 / (self.beta - 1.0)) - 1.0)
        return torch.minimum(self.alpha_pix * ratio, 6.0 * self.fwhm_pix)


class ImagePsf(PointSpreadFunction):
    """Pixelized effective PSFs given as images (for example LSST kernel images).

    The images are taken to be already convolved with the pixel and are
    normalized to unit sum here.

    Parameters
    ----------
    images
        Shape (M, M) or (P, M, M) with ``M`` odd; the PSF centre is the
        central pixel.

    Raises
    ------
    ValueError
        If the images are not square with odd side, contain non-finite
        values, or do not have a positive sum.
    """

    def __init__(self, images: np.ndarray | torch.Tensor) -> None:
        tensor = torch.as_tensor(images, dtype=torch.float64)
        if tensor.ndim == 2:
            tensor = tensor[None]
        if tensor.ndim != 3 or tensor.shape[-1] != tensor.shape[-2] or tensor.shape[-1] % 2 == 0:
            raise ValueError(
                f"PSF image must have shape (M, M) or (P, M, M) with odd M (centred on the middle pixel); "
                f"got shape {tuple(tensor.shape)}."
            )
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError("PSF image contains NaN or infinite values; pass a finite kernel image.")
        total = tensor.sum(dim=(-2, -1), keepdim=True)
        if not bool((total > 0).all()):
            raise ValueError("PSF image must have a positive sum so that it can be normalized to unit flux.")
        self.images = tensor / total

    @property
    def n_psf(self) -> int:
        return self.images.shape[0]

    @property
    def min_fft_size(self) -> int:
        return self.images.shape[-1]

    def _compute_fourier_grid(self, fft_size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        size = self.images.shape[-1]
        if fft_size < size:
            raise ValueError(f"fft_size={fft_size} is smaller than the PSF image ({size} pixels).")
        padded = torch.zeros(self.n_psf, fft_size, fft_size, dtype=torch.float64)
        padded[:, :size, :size] = self.images
        padded = torch.roll(padded, shifts=(-(size // 2), -(size // 2)), dims=(-2, -1))
        transform = torch.fft.rfft2(padded)
        complex_dtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        return transform.to(device=device, dtype=complex_dtype)

    def radius_pix(self) -> torch.Tensor:
        return torch.full((self.n_psf,), float(self.images.shape[-1] // 2), dtype=torch.float64)
