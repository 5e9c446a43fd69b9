"""Training the galaxy autoencoder on isolated galaxies simulated on the fly (pure torch)."""

from __future__ import annotations

__all__ = ["AutoencoderTrainingConfig", "galaxy_stamp_snr", "train_autoencoder"]

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import torch

from ..network import AutoencoderConfig, GalaxyAutoencoder, GalaxyStampBatch, reconstruction_chi2
from ..runtime import resolve_device
from ..simulation import PriorConfig, SourcePrior, simulate_galaxy_stamps
from ..survey import SurveyConditions
from ._schedule import check_optimization_settings, warmup_cosine_factor


@dataclasses.dataclass(frozen=True)
class AutoencoderTrainingConfig:
    """Optimization settings of the galaxy autoencoder.

    Attributes
    ----------
    seed
        Seed of the initialization and of the training stamps.
    validation_seed
        Seed of the held-out validation stamps (must differ from ``seed``).
    n_steps
        Optimizer steps, each on a fresh batch.
    batch_size
        Stamps per step.
    learning_rate
        Peak Adam learning rate (linear warm-up, then cosine decay to 5% of it).
    warmup_steps
        Steps of linear warm-up.
    grad_clip_norm
        Gradient-norm clipping threshold.
    mask_fraction
        Fraction of training stamps with a random masked rectangle.
    validation_stamps
        Size of the validation set.
    validation_every, log_every
        Intervals in steps.
    max_minutes
        Optional wall-time budget; training stops after the step that exceeds it.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """

    seed: int = 0
    validation_seed: int = 2_000_003
    n_steps: int = 3000
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    grad_clip_norm: float = 10.0
    mask_fraction: float = 0.2
    validation_stamps: int = 512
    validation_every: int = 500
    log_every: int = 100
    max_minutes: float | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        counts = ("n_steps", "batch_size", "validation_stamps", "validation_every", "log_every")
        check_optimization_settings(self, counts, "stamps")
        if not 0.0 <= self.mask_fraction <= 1.0:
            raise ValueError(f"mask_fraction={self.mask_fraction} is out of range; it must be in [0, 1].")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable representation."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AutoencoderTrainingConfig:
        """Inverse of `to_dict`."""
        return cls(**data)


def train_autoencoder(
    conditions: SurveyConditions,
    prior_config: PriorConfig,
    psf_fwhm_range_arcsec: tuple[float, float],
    architecture: AutoencoderConfig,
    config: AutoencoderTrainingConfig,
    log: Callable[[str], None] = print,
) -> tuple[GalaxyAutoencoder, dict[str, Any]]:
    """Train a galaxy autoencoder on isolated galaxies from the prior.

    Parameters
    ----------
    conditions
        Survey conditions of the stamps (pixel scale, PSF family, noise).
    prior_config
        Prior of the galaxy fluxes and shapes.
    psf_fwhm_range_arcsec
        PSF FWHM range of the training stamps, arcsec.
    architecture
        Autoencoder architecture.
    config
        Optimization settings.
    log
        Receives progress lines.

    Returns
    -------
    autoencoder
        The trained network, on the CPU, in evaluation mode.
    summary
        Seed, steps, wall time, device, validation loss and the validation
        median reduced chi^2 of galaxies with SNR >= 10, and their history.
    """
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    prior = SourcePrior(prior_config, conditions)
    autoencoder = GalaxyAutoencoder(architecture).to(device)
    optimizer = torch.optim.Adam(autoencoder.parameters(), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine_factor(step, config.warmup_steps, config.n_steps)
    )
    generator = torch.Generator(device=device).manual_seed(config.seed)
    validation_generator = torch.Generator(device=device).manual_seed(config.validation_seed)
    validation = [
        simulate_galaxy_stamps(
            prior,
            psf_fwhm_range_arcsec,
            architecture.stamp_size,
            min(config.batch_size, config.validation_stamps - start),
            validation_generator,
        )
        for start in range(0, config.validation_stamps, config.batch_size)
    ]
    log(
        f"training the galaxy autoencoder on {device}: "
        f"{sum(p.numel() for p in autoencoder.parameters())} parameters, {config.n_steps} steps of "
        f"{config.batch_size} stamps {architecture.stamp_size}x{architecture.stamp_size}"
    )
    history: list[dict[str, float]] = []
    elapsed_s, step = 0.0, 0
    window_start, window_loss = time.perf_counter(), 0.0
    autoencoder.train()
    while step < config.n_steps:
        start = time.perf_counter()
        batch = simulate_galaxy_stamps(
            prior,
            psf_fwhm_range_arcsec,
            architecture.stamp_size,
            config.batch_size,
            generator,
            config.mask_fraction,
        )
        loss, _ = autoencoder.loss(batch, conditions, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(autoencoder.parameters(), config.grad_clip_norm)
        optimizer.step()
        scheduler.step()
        step += 1
        window_loss += loss.item()
        if step % config.log_every == 0 or step == config.n_steps:
            rate = config.batch_size * config.log_every / (time.perf_counter() - window_start)
            log(
                f"autoencoder step {step}/{config.n_steps} loss {window_loss / config.log_every:.1f} "
                f"{rate:.0f} stamps/s elapsed {elapsed_s / 60:.1f} min"
            )
            window_start, window_loss = time.perf_counter(), 0.0
        running_s = elapsed_s + time.perf_counter() - start
        out_of_time = config.max_minutes is not None and running_s > 60 * config.max_minutes
        if step % config.validation_every == 0 or step == config.n_steps or out_of_time:
            entry = {"step": step, "elapsed_s": running_s, **_validate(autoencoder, validation, conditions)}
            history.append(entry)
            log(
                f"autoencoder step {step}: validation loss {entry['validation_loss']:.1f}, median reduced "
                f"chi2 (SNR >= 10) {entry['chi2_median_snr10']:.3f}"
            )
            autoencoder.train()
        elapsed_s += time.perf_counter() - start
        if out_of_time:
            log(f"stopping the autoencoder at step {step}: max_minutes={config.max_minutes} reached")
            break
    autoencoder.eval()
    summary = {
        "seed": config.seed,
        "validation_seed": config.validation_seed,
        "steps": step,
        "stamps_seen": step * config.batch_size,
        "wall_time_s": elapsed_s,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "config": config.to_dict(),
        "final_validation_loss": history[-1]["validation_loss"],
        "final_chi2_median_snr10": history[-1]["chi2_median_snr10"],
        "history": history,
    }
    return autoencoder.cpu(), summary


def galaxy_stamp_snr(batch: GalaxyStampBatch) -> torch.Tensor:
    """SNR ``sqrt(sum_p I_p^2 / V_p)`` of each noiseless galaxy, with ``V`` its expected pixel variance."""
    return (batch.noiseless.square() / batch.variances).sum(dim=(1, 2)).sqrt()


@torch.no_grad()
def _validate(
    autoencoder: GalaxyAutoencoder, validation: list[GalaxyStampBatch], conditions: SurveyConditions
) -> dict[str, float]:
    autoencoder.eval()
    generator = torch.Generator(device=validation[0].images.device).manual_seed(0)
    losses, chi2, snr = [], [], []
    for batch in validation:
        loss, _ = autoencoder.loss(batch, conditions, generator)
        losses.append(float(loss) * len(batch))
        chi2.append(reconstruction_chi2(autoencoder, batch, conditions))
        snr.append(galaxy_stamp_snr(batch))
    bright = torch.cat(snr) >= 10
    chi2_all = torch.cat(chi2)
    return {
        "validation_loss": sum(losses) / len(chi2_all),
        "chi2_median_snr10": float(chi2_all[bright].median()) if bool(bright.any()) else math.nan,
    }
