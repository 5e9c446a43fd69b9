"""Galaxy autoencoder: a variational encoder of galaxy stamps and a decoder that renders them.

The encoder maps an observed stamp centred on a galaxy (in noise units, with a
validity channel and the PSF FWHM and sub-pixel offset as conditioning planes)
to a Gaussian posterior over a small latent shape code and over the log of the
galaxy's flux.  The decoder maps a latent code and the PSF FWHM to the
PSF-convolved galaxy image of unit total flux, centred on the stamp's central
pixel; a Fourier phase shift then places it at its sub-pixel position.  Part of
the unit flux may fall beyond the stamp (an extra softmax logit holds it), so
large galaxies keep their total flux right.

Training uses isolated galaxies drawn from the source prior and rendered
under the survey's PSF range, with the Poisson-like Gaussian likelihood
``-sum_p log N(x_p; x~_p, (x~_p + sky) / gain + read^2 / gain^2)`` of the
observed pixels ``x`` given the model ``x~`` (nJy), plus the KL divergence of
the latent posterior from a unit normal prior.
"""

from __future__ import annotations

__all__ = [
    "AutoencoderConfig",
    "GalaxyAutoencoder",
    "GalaxyLatentPosterior",
    "GalaxyStampBatch",
    "fourier_shift",
    "model_negative_log_likelihood",
    "model_variance",
    "reconstruction_chi2",
]

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from ..survey import SurveyConditions

_LOG_FLUX_OFFSET = 4.0
"""The flux head predicts ``log(flux / noise) - 4``, so that its typical output is of order one."""


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
    """Architecture of the galaxy autoencoder.

    Attributes
    ----------
    stamp_size
        Side of the (square, odd) stamps, pixels.
    latent_dim
        Dimension of the latent shape code.
    channels
        Width of the first convolutional layers (deeper layers use twice it).
    hidden_features
        Width of the fully connected layers.
    reference_psf_fwhm_pix
        PSF FWHM (pixels) that the conditioning input is measured relative to.
    """

    stamp_size: int = 31
    latent_dim: int = 8
    channels: int = 32
    hidden_features: int = 256
    reference_psf_fwhm_pix: float = 4.5

    def __post_init__(self) -> None:
        if self.stamp_size < 9 or self.stamp_size % 2 == 0:
            raise ValueError(f"stamp_size={self.stamp_size} is out of range; it must be odd and >= 9.")
        for name in ("latent_dim", "channels", "hidden_features"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} is out of range; it must be >= 1.")
        if not (self.reference_psf_fwhm_pix > 0 and math.isfinite(self.reference_psf_fwhm_pix)):
            raise ValueError(
                f"reference_psf_fwhm_pix={self.reference_psf_fwhm_pix} is out of range; it must be > 0."
            )

    @property
    def half_size(self) -> int:
        """Half-size ``h`` of the stamps (``stamp_size = 2 h + 1``), pixels."""
        return self.stamp_size // 2

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable representation."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AutoencoderConfig:
        """Inverse of `to_dict`."""
        return cls(**data)


@dataclasses.dataclass
class GalaxyStampBatch:
    """Simulated isolated galaxies, each on a stamp centred on its nearest pixel.

    Attributes
    ----------
    images
        Observed stamps, background subtracted, nJy per pixel, shape (B, S, S).
    variances
        Expected pixel variance, nJy^2, shape (B, S, S).
    noiseless
        The galaxies without noise, nJy per pixel, shape (B, S, S).
    flux_njy
        Total flux, nJy, shape (B,).
    offsets
        Sub-pixel offset ``(dx, dy)`` of each centre from the central pixel, in
        [-0.5, 0.5) pixels, shape (B, 2).
    psf_fwhm_pix
        PSF FWHM of each stamp, pixels, shape (B,).
    valid
        Usable pixels, shape (B, S, S), bool.
    """

    images: torch.Tensor
    variances: torch.Tensor
    noiseless: torch.Tensor
    flux_njy: torch.Tensor
    offsets: torch.Tensor
    psf_fwhm_pix: torch.Tensor
    valid: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])


def fourier_shift(images: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Shift images by sub-pixel offsets with a Fourier phase ramp.

    The images are zero-padded to twice their size first, so that no light
    wraps around; light shifted beyond the stamp is lost.  Exact for
    band-limited images (PSF-convolved profiles sampled at >= 2 px per FWHM).

    Parameters
    ----------
    images
        Shape (B, S, S).
    offsets
        ``(dx, dy)`` in pixels (positive moves the light to larger column and
        row), shape (B, 2).

    Returns
    -------
    shifted
        Shape (B, S, S), same total where no light leaves the stamp.
    """
    size = images.shape[-1]
    padded = 2 * size
    spectrum = torch.fft.rfft2(images, s=(padded, padded))
    ky = 2.0 * math.pi * torch.fft.fftfreq(padded, device=images.device, dtype=images.dtype)
    kx = 2.0 * math.pi * torch.fft.rfftfreq(padded, device=images.device, dtype=images.dtype)
    phase = ky[None, :, None] * offsets[:, 1, None, None] + kx[None, None, :] * offsets[:, 0, None, None]
    shifted = torch.fft.irfft2(spectrum * torch.polar(torch.ones_like(phase), -phase), s=(padded, padded))
    return shifted[:, :size, :size]


@dataclasses.dataclass
class GalaxyLatentPosterior:
    """Gaussian posterior of the encoder over each galaxy's latent code and log flux.

    Attributes
    ----------
    latent_mean, latent_std
        Mean and standard deviation of the latent code, shape (B, D).
    log_flux_mean, log_flux_std
        Mean and standard deviation of ``ln(flux / nJy)``, shape (B,).
    """

    latent_mean: torch.Tensor
    latent_std: torch.Tensor
    log_flux_mean: torch.Tensor
    log_flux_std: torch.Tensor

    @property
    def flux_njy(self) -> torch.Tensor:
        """Posterior median flux, nJy, shape (B,)."""
        return self.log_flux_mean.exp()

    def finite(self) -> torch.Tensor:
        """Which galaxies have a finite posterior, shape (B,), bool."""
        return (
            torch.isfinite(self.latent_mean).all(dim=1)
            & torch.isfinite(self.latent_std).all(dim=1)
            & torch.isfinite(self.log_flux_mean)
            & torch.isfinite(self.log_flux_std)
        )


class GalaxyAutoencoder(nn.Module):
    """Variational encoder of galaxy stamps and decoder of PSF-convolved galaxy images.

    Parameters
    ----------
    config
        Architecture.
    """

    def __init__(self, config: AutoencoderConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or AutoencoderConfig()
        width, hidden, latent = config.channels, config.hidden_features, config.latent_dim
        # Five input planes: the stamp in noise units, validity, PSF FWHM, dx, dy.
        self.encoder_convs = nn.Sequential(
            nn.Conv2d(5, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(6),
        )
        self.encoder_head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * 36, hidden),
            nn.GELU(),
            nn.Linear(hidden, 2 * latent + 2),
        )
        self._grid = (config.stamp_size + 3) // 4
        self.decoder_input = nn.Sequential(
            nn.Linear(latent + 1, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
        )
        self.decoder_grid = nn.Linear(hidden, 2 * width * self._grid**2)
        self.decoder_outside = nn.Linear(hidden, 1)
        self.decoder_convs = nn.Sequential(
            nn.GELU(),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.GELU(),
            nn.ConvTranspose2d(width, width, 4, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, 1, 3, padding=1),
        )

    def _psf_input(self, psf_fwhm_pix: torch.Tensor) -> torch.Tensor:
        return psf_fwhm_pix / self.config.reference_psf_fwhm_pix - 1.0

    def encode(
        self,
        images: torch.Tensor,
        variances: torch.Tensor,
        valid: torch.Tensor,
        psf_fwhm_pix: torch.Tensor,
        offsets: torch.Tensor,
    ) -> GalaxyLatentPosterior:
        """Posterior over the latent code and flux of the galaxy centred on each stamp.

        Parameters
        ----------
        images, variances
            Observed stamps (nJy) and their variance (nJy^2), shape (B, S, S),
            other sources already subtracted where possible.
        valid
            Usable pixels, shape (B, S, S), bool; the others are ignored.
        psf_fwhm_pix
            PSF FWHM at each galaxy, pixels, shape (B,).
        offsets
            ``(dx, dy)`` of each galaxy from the central pixel, pixels, shape (B, 2).
        """
        usable = valid & torch.isfinite(images) & torch.isfinite(variances) & (variances > 0)
        sigma = torch.where(usable, variances, torch.ones_like(variances)).sqrt()
        scaled = torch.where(usable, torch.asinh(images / sigma), torch.zeros_like(images))
        # A typical noise level sets the scale of the flux head's output.
        noise = torch.where(usable, sigma, torch.full_like(sigma, float("nan"))).flatten(1).nanmedian(dim=1)
        noise = torch.nan_to_num(noise.values, nan=1.0)
        planes = torch.ones_like(images)
        inputs = torch.stack(
            [
                scaled,
                usable.to(images.dtype),
                planes * self._psf_input(psf_fwhm_pix)[:, None, None],
                planes * offsets[:, 0, None, None],
                planes * offsets[:, 1, None, None],
            ],
            dim=1,
        )
        output = self.encoder_head(self.encoder_convs(inputs))
        latent = self.config.latent_dim
        log_flux_mean = output[:, 2 * latent] + _LOG_FLUX_OFFSET + noise.log()
        return GalaxyLatentPosterior(
            latent_mean=output[:, :latent],
            latent_std=nn.functional.softplus(output[:, latent : 2 * latent]) + 1e-4,
            log_flux_mean=log_flux_mean,
            log_flux_std=nn.functional.softplus(output[:, 2 * latent + 1]) + 1e-4,
        )

    def decode(self, latent: torch.Tensor, psf_fwhm_pix: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Render unit-flux galaxy images.

        Parameters
        ----------
        latent
            Latent codes, shape (B, D).
        psf_fwhm_pix
            PSF FWHM, pixels, shape (B,).
        offsets
            ``(dx, dy)`` of the centres from the central pixel, pixels, shape (B, 2).

        Returns
        -------
        stamps
            Shape (B, S, S); each sums to the fraction (<= 1) of the galaxy's
            flux that falls on the stamp.
        """
        size = self.config.stamp_size
        hidden = self.decoder_input(torch.cat([latent, self._psf_input(psf_fwhm_pix)[:, None]], dim=1))
        grid = self.decoder_grid(hidden).reshape(latent.shape[0], -1, self._grid, self._grid)
        logits = self.decoder_convs(grid)[:, 0, :size, :size].flatten(1)
        fractions = torch.softmax(torch.cat([logits, self.decoder_outside(hidden)], dim=1), dim=1)
        centred = fractions[:, :-1].reshape(-1, size, size)
        return fourier_shift(centred, offsets)

    def reconstruct(
        self,
        images: torch.Tensor,
        variances: torch.Tensor,
        valid: torch.Tensor,
        psf_fwhm_pix: torch.Tensor,
        offsets: torch.Tensor,
    ) -> tuple[torch.Tensor, GalaxyLatentPosterior]:
        """Encode and decode at the posterior mean: model stamps in nJy (B, S, S) and the posterior."""
        posterior = self.encode(images, variances, valid, psf_fwhm_pix, offsets)
        stamps = self.decode(posterior.latent_mean, psf_fwhm_pix, offsets)
        return stamps * posterior.flux_njy[:, None, None], posterior

    def loss(
        self, batch: GalaxyStampBatch, conditions: SurveyConditions, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Negative evidence lower bound per stamp, averaged over the batch.

        The likelihood is the Poisson-like Gaussian of the valid pixels with
        variance ``(max(x~, 0) + sky) / gain + read^2 / gain^2`` (nJy^2); the
        latent prior is a unit normal and the log-flux prior flat.

        Returns
        -------
        loss
            Scalar to minimize.
        terms
            ``nll_per_pixel``, ``kl`` (per stamp) for logging.
        """
        posterior = self.encode(batch.images, batch.variances, batch.valid, batch.psf_fwhm_pix, batch.offsets)
        latent = posterior.latent_mean + posterior.latent_std * torch.randn(
            posterior.latent_mean.shape, generator=generator, device=batch.images.device
        )
        log_flux = posterior.log_flux_mean + posterior.log_flux_std * torch.randn(
            posterior.log_flux_mean.shape, generator=generator, device=batch.images.device
        )
        model = self.decode(latent, batch.psf_fwhm_pix, batch.offsets) * log_flux.exp()[:, None, None]
        nll = model_negative_log_likelihood(batch.images, model, batch.valid, conditions)
        kl = 0.5 * (
            posterior.latent_mean.square()
            + posterior.latent_std.square()
            - 1
            - 2 * posterior.latent_std.log()
        ).sum(dim=1)
        # A flat prior on log flux leaves only the posterior's entropy.
        entropy = posterior.log_flux_std.log()
        loss = (nll + kl - entropy).mean()
        n_valid = batch.valid.sum().clamp(min=1)
        return loss, {"nll_per_pixel": float(nll.detach().sum() / n_valid), "kl": float(kl.detach().mean())}


def model_negative_log_likelihood(
    images: torch.Tensor, models: torch.Tensor, valid: torch.Tensor, conditions: SurveyConditions
) -> torch.Tensor:
    """Gaussian negative log-likelihood of observed stamps given model stamps, per stamp.

    Parameters
    ----------
    images, models
        Observed (background-subtracted) and model stamps, nJy, shape (B, S, S).
    valid
        Pixels that count, shape (B, S, S), bool.
    conditions
        Sky level, gain and read noise of the variance model.

    Returns
    -------
    nll
        ``0.5 sum_p [(x - x~)^2 / v + log(2 pi v)]`` over valid pixels, shape (B,).
    """
    variance = model_variance(models, conditions)
    terms = 0.5 * ((images - models).square() / variance + torch.log(2 * math.pi * variance))
    return torch.where(valid, terms, torch.zeros_like(terms)).sum(dim=(1, 2))


def model_variance(models: torch.Tensor, conditions: SurveyConditions) -> torch.Tensor:
    """Expected pixel variance (nJy^2) of the sky plus model light ``models`` (nJy), same shape."""
    gain = conditions.njy_to_electrons
    return (models.clamp(min=0) + conditions.sky_level_njy) / gain + (conditions.read_noise_e / gain) ** 2


def reconstruction_chi2(
    autoencoder: GalaxyAutoencoder, batch: GalaxyStampBatch, conditions: SurveyConditions
) -> torch.Tensor:
    """Reduced chi^2 of each stamp's reconstruction at the posterior mean.

    ``chi^2 / n = (1 / n) sum_p (x_p - x~_p)^2 / v_p`` over the ``n`` valid
    pixels, with ``v`` the variance of the reconstruction (`model_variance`);
    a perfect model gives 1 on average.

    Returns
    -------
    chi2
        Shape (B,).
    """
    with torch.no_grad():
        models, _ = autoencoder.reconstruct(
            batch.images, batch.variances, batch.valid, batch.psf_fwhm_pix, batch.offsets
        )
        residual = (batch.images - models).square() / model_variance(models, conditions)
        residual = torch.where(batch.valid, residual, torch.zeros_like(residual))
        return residual.sum(dim=(1, 2)) / batch.valid.sum(dim=(1, 2)).clamp(min=1)
