"""Isolated galaxies drawn from the source prior and observed on stamps: the galaxy autoencoder's
training and validation data."""

from __future__ import annotations

__all__ = ["simulate_galaxy_stamps"]

import math

import torch

from ..network import GalaxyStampBatch
from ..rendering import KNOT_FIELDS, RenderSources, render_stamps
from ._prior import SourcePrior, sample_truncated_pareto
from ._simulate import observe


def simulate_galaxy_stamps(
    prior: SourcePrior,
    psf_fwhm_range_arcsec: tuple[float, float],
    stamp_size: int,
    batch_size: int,
    generator: torch.Generator,
    mask_fraction: float = 0.0,
    pareto_fraction: float = 0.5,
) -> GalaxyStampBatch:
    """Draw isolated galaxies from the prior and observe them on stamps.

    Fluxes run from twice the prior's faint limit (the autoencoder models
    galaxies that are detected) to its bright limit, a fraction
    ``pareto_fraction`` of them from the prior's Pareto law and the others
    log-uniform; shapes follow its size-magnitude relation (and its compact population, ellipticities
    and star-forming knots where the prior draws them); the PSF FWHM of each stamp is uniform in the
    range and the noise is the survey's (`observe`).

    Parameters
    ----------
    prior
        Source prior and its survey conditions.
    psf_fwhm_range_arcsec
        PSF FWHM range, arcsec.
    stamp_size
        Stamp side, pixels (odd).
    batch_size
        Number of galaxies ``B``.
    generator
        Seeded generator; its device is the output's.
    mask_fraction
        Fraction of stamps in which a random rectangle of pixels (a cosmic ray,
        a bad column piece) is marked invalid, so that the encoder learns to
        ignore masked pixels.
    pareto_fraction
        Fraction of fluxes drawn from the prior's Pareto law (1 gives the
        prior's population, 0 equal numbers per decade of flux).

    Returns
    -------
    batch
        The stamps.
    """
    device = generator.device
    conditions = prior.conditions
    shape = (batch_size,)
    # Half the fluxes follow the prior's Pareto law (the galaxies the deblender meets) and half
    # are log-uniform, which weights every decade equally: bright galaxies, whose shapes the
    # decoder must get right, are rare under the Pareto law.
    low, high = 2.0 * prior.min_flux_njy, prior.max_flux_njy
    pareto = sample_truncated_pareto(
        shape, prior.config.galaxy_flux_alpha, low, high, generator, device, torch.float32
    )
    log_uniform = (
        math.log(low) + math.log(high / low) * torch.rand(shape, generator=generator, device=device)
    ).exp()
    pick_pareto = torch.rand(shape, generator=generator, device=device) < pareto_fraction
    flux = torch.where(pick_pareto, pareto, log_uniform)
    shapes = prior.sample_galaxy_shapes(flux, generator)
    offsets = torch.rand(batch_size, 2, generator=generator, device=device) - 0.5
    low, high = psf_fwhm_range_arcsec
    fwhm_arcsec = low + (high - low) * torch.rand(batch_size, generator=generator, device=device)
    scale = conditions.pixel_scale_arcsec
    half_size = stamp_size // 2
    sources = RenderSources(
        x=half_size + offsets[:, 0],
        y=half_size + offsets[:, 1],
        flux=flux,
        is_galaxy=torch.ones(batch_size, dtype=torch.bool, device=device),
        disk_frac=shapes["disk_frac"],
        disk_hlr_pix=shapes["disk_hlr_arcsec"] / scale,
        disk_q=shapes["disk_q"],
        bulge_hlr_pix=shapes["bulge_hlr_arcsec"] / scale,
        bulge_q=shapes["bulge_q"],
        position_angle_rad=shapes["position_angle_rad"],
        image_index=torch.arange(batch_size, device=device),
        psf_index=torch.arange(batch_size, device=device),
        **{name: shapes.get(name) for name in KNOT_FIELDS},
    )
    psf = conditions.psf(fwhm_arcsec.cpu().double().numpy())
    noiseless = render_stamps(sources, psf, half_size, fft_padding=2.0).float()
    images, variances, _ = observe(noiseless, conditions, generator)
    valid = torch.ones_like(images, dtype=torch.bool)
    if mask_fraction > 0:
        valid = _random_masks(batch_size, stamp_size, mask_fraction, generator)
    return GalaxyStampBatch(images, variances, noiseless, flux, offsets, fwhm_arcsec / scale, valid)


def _random_masks(
    batch_size: int, stamp_size: int, fraction: float, generator: torch.Generator
) -> torch.Tensor:
    """Valid-pixel masks with a random rectangle (1-7 by 1-7 px) masked in ``fraction`` of them."""
    device = generator.device
    masked = torch.rand(batch_size, generator=generator, device=device) < fraction
    corner = torch.randint(0, stamp_size, (batch_size, 2), generator=generator, device=device)
    extent = torch.randint(1, 8, (batch_size, 2), generator=generator, device=device)
    pixels = torch.arange(stamp_size, device=device)
    rows = (pixels[None, :] >= corner[:, :1]) & (pixels[None, :] < corner[:, :1] + extent[:, :1])
    cols = (pixels[None, :] >= corner[:, 1:]) & (pixels[None, :] < corner[:, 1:] + extent[:, 1:])
    rectangle = rows[:, :, None] & cols[:, None, :]
    return ~(rectangle & masked[:, None, None])
