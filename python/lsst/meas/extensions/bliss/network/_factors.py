"""Variational factors of the per-tile posterior.

Each factor is one conditional distribution of the approximate posterior
``q(sources in tile | image)``: whether a source is present, where it is in
the tile, whether it is a galaxy, its flux and its galaxy shape.  A factor
knows how many raw network outputs it needs, how to turn them into a
distribution, how to read its truth from a `TileCatalog`, and which truth
gates its loss term (a location only exists where a source is present, a
shape only for galaxies).  The encoder is built from a list of factor names;
`FACTORS` is the one place where factors are registered.

All factors here describe one source per tile (``max_sources_per_tile = 1``).
Shapes: raw parameters ``(B, Ht, Wt, n_params)``; truths ``(B, Ht, Wt, d)``;
log-probabilities ``(B, Ht, Wt)``.
"""

from __future__ import annotations

__all__ = [
    "FACTORS",
    "DetectionFactor",
    "Factor",
    "GalaxyFactor",
    "LogNormalFactor",
    "LocationFactor",
    "LogitNormalFactor",
    "EllipticityFactor",
    "TileTruth",
    "REQUIRED_FACTORS",
    "make_factors",
]

import dataclasses
import math
from abc import ABC, abstractmethod

import torch

from ..catalog import TileCatalog

_EPS = 1e-4
# The floor (sigma >= 0.7%) keeps a rare confident miss from producing a huge loss spike.
_LOG_SIGMA_RANGE = (-5.0, 3.0)
# Location sigma in tile sides: from 0.03 px to several tiles on a 4-pixel tile.
_LOCATION_LOG_SIGMA_RANGE = (-5.0, 1.0)
# Latent means are bounded softly to +-_MEAN_BOUND so that one confident outlier cannot blow up the loss.
_MEAN_BOUND = 30.0


@dataclasses.dataclass
class TileTruth:
    """Per-tile truth in the representation the factors use (one source per tile).

    Attributes
    ----------
    values
        Named tensors of shape (B, Ht, Wt, d); see each factor's ``truth``.
    present
        Source present, shape (B, Ht, Wt), bool.
    is_galaxy
        Present and a galaxy, shape (B, Ht, Wt), bool.
    """

    values: dict[str, torch.Tensor]
    present: torch.Tensor
    is_galaxy: torch.Tensor


def _log_sigma(raw: torch.Tensor) -> torch.Tensor:
    return raw.clamp(*_LOG_SIGMA_RANGE)


def _bounded_mean(raw: torch.Tensor) -> torch.Tensor:
    return _MEAN_BOUND * torch.tanh(raw / _MEAN_BOUND)


def _normal_cdf(x: torch.Tensor) -> torch.Tensor:
    # erfc keeps relative precision in the lower tail, where torch.special.ndtr underflows early in float32.
    return 0.5 * torch.special.erfc(-x * (1.0 / math.sqrt(2.0)))


def _log_normal_mass(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """``log(Phi(upper) - Phi(lower))`` for standardized bounds, accurate in both tails."""
    reflect = lower + upper > 0
    low = torch.where(reflect, -upper, lower)
    high = torch.where(reflect, -lower, upper)
    log_cdf_high = torch.special.log_ndtr(high)
    return log_cdf_high + torch.log(-torch.expm1(torch.special.log_ndtr(low) - log_cdf_high))


def _normal_log_prob(value: torch.Tensor, mean: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    return -0.5 * ((value - mean) * torch.exp(-log_sigma)).square() - log_sigma - 0.5 * math.log(2 * math.pi)


class Factor(ABC):
    """One factor of the per-tile variational distribution.

    Attributes
    ----------
    name
        Key of the factor's truth and outputs.
    n_params
        Number of raw network outputs per tile.
    dims
        Dimension ``d`` of the factor's value (and of the uniform numbers a draw uses).
    gate
        ``"always"``, ``"source"`` (term counts where a source is present) or
        ``"galaxy"`` (where a galaxy is present).
    """

    name: str
    n_params: int
    dims: int = 1
    gate: str

    @abstractmethod
    def truth(
        self, catalog: TileCatalog, flux_scale_njy: torch.Tensor, pixel_scale_arcsec: float
    ) -> torch.Tensor:
        """The factor's truth, shape (B, Ht, Wt, d), from a one-source-per-tile catalog."""

    @abstractmethod
    def log_prob(self, params: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        """``log q(truth)``, shape (B, Ht, Wt); ``params`` (B, Ht, Wt, n_params)."""

    @abstractmethod
    def mode(self, params: torch.Tensor) -> torch.Tensor:
        """Most probable value, shape (B, Ht, Wt, d)."""

    @abstractmethod
    def sample(self, params: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        """One draw, shape (B, Ht, Wt, d), from uniform numbers in (0, 1) of the same shape.

        Draws are deterministic functions of ``uniform`` (inverse-CDF
        sampling), so that counter-based random numbers (`TileRandomness`)
        make samples independent of how an image is chunked.
        """


class _BernoulliFactor(Factor):
    n_params = 1

    def log_prob(self, params: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        logit = params[..., 0]
        return -torch.nn.functional.binary_cross_entropy_with_logits(logit, truth[..., 0], reduction="none")

    def probability(self, params: torch.Tensor) -> torch.Tensor:
        """Probability of the event, shape (B, Ht, Wt)."""
        return torch.sigmoid(params[..., 0])

    def mode(self, params: torch.Tensor) -> torch.Tensor:
        return (params[..., :1] > 0).to(params.dtype)

    def sample(self, params: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        return (uniform[..., 0] < self.probability(params)).to(params.dtype)[..., None]


class DetectionFactor(_BernoulliFactor):
    """Source present in the tile (Bernoulli); truth ``n_sources`` in {0, 1}."""

    name = "detection"
    gate = "always"

    def truth(
        self, catalog: TileCatalog, flux_scale_njy: torch.Tensor, pixel_scale_arcsec: float
    ) -> torch.Tensor:
        return (catalog.n_sources > 0).to(catalog.locations.dtype)[..., None]


class GalaxyFactor(_BernoulliFactor):
    """Source is a galaxy (Bernoulli), given a source."""

    name = "galaxy"
    gate = "source"

    def truth(
        self, catalog: TileCatalog, flux_scale_njy: torch.Tensor, pixel_scale_arcsec: float
    ) -> torch.Tensor:
        return catalog.fields["is_galaxy"][..., 0].to(catalog.locations.dtype)[..., None]


class _NormalFactor(Factor):
    """Diagonal normal in a transformed space; subclasses define the transform."""

    @property
    def n_params(self) -> int:  # type: ignore[override]
        return 2 * self.dims

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _bounded_mean(params[..., : self.dims]), _log_sigma(params[..., self.dims :])

    @abstractmethod
    def to_latent(self, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Transformed value and the log-Jacobian ``log |d latent / d value|`` summed over dims."""

    @abstractmethod
    def from_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """Inverse transform."""

    def log_prob(self, params: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        mean, log_sigma = self._split(params)
        latent, log_jacobian = self.to_latent(truth)
        return _normal_log_prob(latent, mean, log_sigma).sum(-1) + log_jacobian

    def mode(self, params: torch.Tensor) -> torch.Tensor:
        # The median in value space (the latent mean mapped back), robust to the transform.
        return self.from_latent(self._split(params)[0])

    def sample(self, params: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        mean, log_sigma = self._split(params)
        return self.from_latent(mean + torch.special.ndtri(uniform) * log_sigma.exp())

    def cdf(self, params: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Posterior CDF of each coordinate at ``value`` (the factor's value space), shape (B, Ht, Wt, d).

        The probability-integral transform of calibration checks: uniform on
        [0, 1] when ``value`` is drawn from the posterior.
        """
        mean, log_sigma = self._split(params)
        latent, _ = self.to_latent(value)
        return _normal_cdf((latent - mean) / log_sigma.exp())

    def sigma(self, params: torch.Tensor) -> torch.Tensor:
        """Standard deviation of the latent normal, shape (B, Ht, Wt, d)."""
        return self._split(params)[1].exp()

    def latent_mean(self, params: torch.Tensor) -> torch.Tensor:
        """Mean of the latent normal, shape (B, Ht, Wt, d)."""
        return self._split(params)[0]


class LogitNormalFactor(_NormalFactor):
    """A quantity in (0, 1) (or a catalog field mapped there) with a logit-normal law."""

    def __init__(self, name: str, field: str, gate: str = "galaxy") -> None:
        self.name, self.field, self.gate = name, field, gate

    def truth(
        self, catalog: TileCatalog, flux_scale_njy: torch.Tensor, pixel_scale_arcsec: float
    ) -> torch.Tensor:
        return catalog.fields[self.field][..., :1]

    def to_latent(self, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        value = value.clamp(_EPS, 1 - _EPS)
        return torch.logit(value), (-torch.log(value) - torch.log1p(-value)).sum(-1)

    def from_latent(self, latent: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(latent)


class LocationFactor(Factor):
    """Position within the tile, ``(x_frac, y_frac)`` in [0, 1)^2, given a source.

    Each coordinate is a normal truncated to the tile.  The truncation lets the
    posterior of a source near a tile boundary pile up against that boundary,
    which a logit-normal (whose density vanishes there) cannot do.  The mean
    may lie outside the tile, in (-0.5, 1.5); the standard deviation is in
    units of the tile side.
    """

    name = "location"
    n_params = 4
    gate = "source"
    dims = 2

    def truth(
        self, catalog: TileCatalog, flux_scale_njy: torch.Tensor, pixel_scale_arcsec: float
    ) -> torch.Tensor:
        return catalog.locations[..., 0, :]

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = 0.5 + torch.tanh(params[..., :2])
        return mean, params[..., 2:].clamp(*_LOCATION_LOG_SIGMA_RANGE).exp()

    @staticmethod
    def _reflected(
        mean: torch.Tensor, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Standardized bounds, reflected so that the interval lies where the normal CDF is accurate
        # (its lower tail); ``sign`` maps a reflected standard value back.
        lower, upper = -mean / sigma, (1.0 - mean) / sigma
        sign = torch.where(lower + upper > 0, -1.0, 1.0).to(mean.dtype)
        reflected_lower = torch.where(sign > 0, lower, -upper)
        reflected_upper = torch.where(sign > 0, upper, -lower)
        return reflected_lower, reflected_upper, sign

    def log_prob(self, params: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        mean, sigma = self._split(params)
        log_mass = _log_normal_mass(-mean / sigma, (1.0 - mean) / sigma)
        return (_normal_log_prob(truth, mean, sigma.log()) - log_mass).sum(-1)

    def quantile(self, params: torch.Tensor, level: torch.Tensor | float) -> torch.Tensor:
        """Per-coordinate quantile at ``level`` in (0, 1), shape (B, Ht, Wt, 2)."""
        mean, sigma = self._split(params)
        lower, upper, sign = self._reflected(mean, sigma)
        cdf_lower, cdf_upper = _normal_cdf(lower), _normal_cdf(upper)
        level = torch.as_tensor(level, dtype=mean.dtype, device=mean.device)
        level = torch.where(sign > 0, level, 1.0 - level)
        standard = torch.special.ndtri((cdf_lower + level * (cdf_upper - cdf_lower)).clamp(1e-30, 1.0 - 1e-7))
        return (mean + sign * sigma * standard).clamp(0.0, 1.0 - _EPS)

    def cdf(self, params: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Per-coordinate posterior CDF at ``value`` (tile fractions), shape (B, Ht, Wt, 2).

        The probability-integral transform of calibration checks; computed
        with survival functions where the truncated normal lies in the upper
        tail of its standard normal, so that it keeps its precision there.
        """
        mean, sigma = (part.double() for part in self._split(params))
        value = value.double().clamp(0.0, 1.0)
        lower, upper, z = -mean / sigma, (1.0 - mean) / sigma, (value - mean) / sigma
        upper_tail = lower + upper > 0
        from_below = (_normal_cdf(z) - _normal_cdf(lower)) / (_normal_cdf(upper) - _normal_cdf(lower))
        from_above = (_normal_cdf(-lower) - _normal_cdf(-z)) / (_normal_cdf(-lower) - _normal_cdf(-upper))
        cdf = torch.where(upper_tail, from_above, from_below)
        return cdf.nan_to_num(0.5).clamp(0.0, 1.0).to(params.dtype)

    def mode(self, params: torch.Tensor) -> torch.Tensor:
        # The median, as for the other continuous factors.
        return self.quantile(params, 0.5)

    def sample(self, params: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        return self.quantile(params, uniform)

    def std(self, params: torch.Tensor) -> torch.Tensor:
        """Half the central 68.3% interval of each coordinate (tile sides), shape (B, Ht, Wt, 2).

        Equal to the standard deviation for an untruncated normal; unlike the
        moment formula it stays accurate when the mass is squeezed against a
        tile boundary.
        """
        levels = torch.special.ndtr(torch.tensor([-1.0, 1.0], dtype=params.dtype, device=params.device))
        return 0.5 * (self.quantile(params, levels[1]) - self.quantile(params, levels[0]))


class LogNormalFactor(_NormalFactor):
    """A positive quantity with a log-normal law, relative to a reference scale.

    ``"flux"``: flux in units of the image's noise scale (``flux_scale_njy``,
    one per image), given a source.  Radii: half-light radius in pixels,
    given a galaxy.
    """

    def __init__(self, name: str, field: str, gate: str) -> None:
        self.name, self.field, self.gate = name, field, gate

    def truth(
        self, catalog: TileCatalog, flux_scale_njy: torch.Tensor, pixel_scale_arcsec: float
    ) -> torch.Tensor:
        value = catalog.fields[self.field][..., :1]
        if self.field == "flux_njy":
            return value / flux_scale_njy[:, None, None, None]
        return value / pixel_scale_arcsec

    def to_latent(self, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_value = torch.log(value.clamp(min=_EPS))
        return log_value, -log_value.sum(-1)

    def from_latent(self, latent: torch.Tensor) -> torch.Tensor:
        # A draw far in the tail of a wide posterior (log-value above about 88.7 in float32) would
        # overflow to inf; it is capped at the largest finite value instead, so that samples stay
        # finite (values that do not overflow are unchanged).
        return torch.exp(latent).clamp(max=torch.finfo(latent.dtype).max)


class EllipticityFactor(_NormalFactor):
    """Disk ellipticity ``(e1, e2)``, ``|e| = (1 - q) / (1 + q)`` at twice the position angle; normal."""

    dims = 2
    name = "disk_ellipticity"
    gate = "galaxy"

    def truth(
        self, catalog: TileCatalog, flux_scale_njy: torch.Tensor, pixel_scale_arcsec: float
    ) -> torch.Tensor:
        q = catalog.fields["disk_q"][..., 0]
        angle = catalog.fields["position_angle_rad"][..., 0]
        modulus = (1 - q) / (1 + q)
        return torch.stack([modulus * torch.cos(2 * angle), modulus * torch.sin(2 * angle)], dim=-1)

    def to_latent(self, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return value, torch.zeros(value.shape[:-1], device=value.device, dtype=value.dtype)

    def from_latent(self, latent: torch.Tensor) -> torch.Tensor:
        # Keep |e| < 1 so that the axis ratio stays positive.
        modulus = latent.norm(dim=-1, keepdim=True)
        return latent * (modulus.clamp(max=0.99) / modulus.clamp(min=1e-12))


FACTORS: dict[str, tuple[type[Factor], tuple[str, ...]]] = {
    "detection": (DetectionFactor, ()),
    "location": (LocationFactor, ()),
    "galaxy": (GalaxyFactor, ()),
    "flux": (LogNormalFactor, ("flux", "flux_njy", "source")),
    "disk_frac": (LogitNormalFactor, ("disk_frac", "disk_frac", "galaxy")),
    "disk_hlr": (LogNormalFactor, ("disk_hlr", "disk_hlr_arcsec", "galaxy")),
    "bulge_hlr": (LogNormalFactor, ("bulge_hlr", "bulge_hlr_arcsec", "galaxy")),
    "bulge_q": (LogitNormalFactor, ("bulge_q", "bulge_q", "galaxy")),
    "disk_ellipticity": (EllipticityFactor, ()),
}
"""Registered factors: name -> (class, constructor arguments)."""

REQUIRED_FACTORS: tuple[str, ...] = ("detection", "location")


def make_factors(names: tuple[str, ...] | list[str]) -> list[Factor]:
    """Instantiate factors by name, in order.

    Raises
    ------
    ValueError
        If a name is unknown, repeated, or a required factor is missing.
    """
    unknown = [name for name in names if name not in FACTORS]
    if unknown:
        raise ValueError(f"Unknown variational factor(s) {unknown}; known: {sorted(FACTORS)}.")
    if len(set(names)) != len(names):
        raise ValueError(f"Variational factors repeat a name: {list(names)}.")
    missing = [name for name in REQUIRED_FACTORS if name not in names]
    if missing:
        raise ValueError(f"Variational factors must include {missing}.")
    return [FACTORS[name][0](*FACTORS[name][1]) for name in names]
