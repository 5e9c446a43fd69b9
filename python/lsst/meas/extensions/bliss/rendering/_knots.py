"""Star-forming knots: point-like clumps of a galaxy's disk light, placed like the disk's profile.

A galaxy with knots has a fraction ``knot_frac`` of its disk's flux in
``knot_count`` equal point sources (as GalSim's ``RandomKnots`` given the disk
as its profile, the model of the DESC DC2 image simulations).  Their positions
are not stored: they are a deterministic function of a per-galaxy integer
``knot_seed`` (a counter-based hash, identical on every device), of the disk's
half-light radius, axis ratio and position angle, and of ``knot_offset_hlr``,
which moves the centre of the knots away from the galaxy's centre (a lopsided,
irregular galaxy).  So a truth catalog carrying the four `KNOT_FIELDS` defines
every knot, and the torch renderer and the GalSim reference draw the same
points.

Geometry: in the frame of the round profile, each knot lies at radius ``r``
drawn from the exponential disk's radial light distribution (a Gamma(2)
distribution in units of the scale length), truncated at `KNOT_EXTENT_HLR`
half-light radii so that stamps hold every knot, and at a uniform angle; the
knots' centre is ``knot_offset_hlr`` half-light radii from the galaxy's centre
in a direction drawn from the seed.  The points are then sheared like the disk
(area-preserving, axis ratio ``disk_q``) and rotated by its position angle.
"""

from __future__ import annotations

__all__ = [
    "KNOT_EXTENT_HLR",
    "KNOT_FIELDS",
    "KNOT_FIELD_DESCRIPTIONS",
    "MAX_KNOT_SEED",
    "knot_fluxes",
    "knot_offsets_pix",
]

import functools
import math

import torch

from ._profiles import EXPONENTIAL_HLR_OVER_SCALE

KNOT_FIELD_DESCRIPTIONS: dict[str, str] = {
    "knot_frac": "Fraction of the disk's light in star-forming knots (0: none).",
    "knot_count": "Number of star-forming knots.",
    "knot_seed": "Integer seed that places the knots (with the disk's size and shape).",
    "knot_offset_hlr": "Offset of an irregular galaxy's knots from its centre, disk half-light radii.",
}
"""One line on each of the `KNOT_FIELDS`, for the tables that store them."""

KNOT_FIELDS: tuple[str, ...] = tuple(KNOT_FIELD_DESCRIPTIONS)
"""Catalog fields (beyond `SOURCE_FIELDS`) that describe a galaxy's knots.

``knot_frac`` the fraction of the disk's flux in knots, in [0, 1);
``knot_count`` the number of knots (an integer, stored as a float);
``knot_seed`` the integer in [0, `MAX_KNOT_SEED`) that places them;
``knot_offset_hlr`` the distance of their centre from the galaxy's centre, in
disk half-light radii.  Zero in all four means no knots (stars, padding and
smooth galaxies)."""

KNOT_EXTENT_HLR: float = 5.0
"""Knots lie within this many disk half-light radii of their centre (the galaxy stamps' radius)."""

MAX_KNOT_SEED: int = 2**24
"""Knot seeds are integers below this, so that float32 catalog fields hold them exactly."""

_QUANTILE_NODES = 1025
_MASK32 = 0xFFFFFFFF
# Stream constants (odd 32-bit numbers) that decorrelate the radius, angle and offset draws.
_STREAMS = {"radius": 0x9E3779B1, "angle": 0x85EBCA77, "offset": 0xC2B2AE3D}


def _multiply32(values: torch.Tensor, constant: int) -> torch.Tensor:
    """``values * constant`` modulo 2^32 for int64 ``values`` in [0, 2^32), without int64 overflow."""
    low = values * (constant & 0xFFFF)
    high = ((values * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & _MASK32


def _hash32(values: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixing function (the "lowbias32" hash), on int64 tensors in [0, 2^32)."""
    values = values ^ (values >> 16)
    values = _multiply32(values, 0x7FEB352D)
    values = values ^ (values >> 15)
    values = _multiply32(values, 0x846CA68B)
    return values ^ (values >> 16)


def _counter_uniform(seed_key: torch.Tensor, stream: str, counter: torch.Tensor) -> torch.Tensor:
    """Uniform numbers in (0, 1), float64, from hashed seeds ``seed_key`` (`_hash32` of the seeds)
    and integer ``counter`` (broadcast)."""
    key = (seed_key + _STREAMS[stream] + _multiply32(counter, 0x27D4EB2F)) & _MASK32
    return (_hash32(key).double() + 0.5) / 2.0**32


@functools.cache
def _gamma2_quantile_table(maximum: float) -> tuple[torch.Tensor, float]:
    """Quantiles of the truncated Gamma(2) distribution at `_QUANTILE_NODES` equally spaced
    probabilities (computed once by bisection, float64), and its total probability ``F(maximum)``."""
    total = 1.0 - (1.0 + maximum) * math.exp(-maximum)
    target = torch.linspace(0.0, 1.0, _QUANTILE_NODES, dtype=torch.float64) * total
    low, high = torch.zeros_like(target), torch.full_like(target, maximum)
    for _ in range(60):
        middle = 0.5 * (low + high)
        below = 1.0 - (1.0 + middle) * torch.exp(-middle) < target
        low, high = torch.where(below, middle, low), torch.where(below, high, middle)
    return 0.5 * (low + high), total


def _truncated_gamma2_quantile(probability: torch.Tensor, maximum: float) -> torch.Tensor:
    """Quantiles of the Gamma(2) distribution (``x e^-x``) truncated to [0, maximum].

    Its CDF ``1 - (1 + x) e^-x`` has no closed-form inverse: a tabulated
    quantile (``sqrt(2 F)`` in the first table interval, where ``F ~ x^2 / 2``)
    is the start of two Newton steps, which bring it to about 1e-10 in
    probability.
    """
    table, total = _gamma2_quantile_table(maximum)
    table = table.to(probability.device)
    position = probability.double() * (_QUANTILE_NODES - 1)
    lower = position.long().clamp(max=_QUANTILE_NODES - 2)
    fraction = position - lower
    target = probability.double() * total
    # In the first interval F(x) ~ x^2 / 2 is far from linear; its inverse is the better start.
    x = torch.where(
        lower == 0, torch.sqrt(2.0 * target), torch.lerp(table[lower], table[lower + 1], fraction)
    )
    for _ in range(2):
        exp_minus_x = torch.exp(-x)
        density = (x * exp_minus_x).clamp(min=1e-300)
        x = (x - (1.0 - (1.0 + x) * exp_minus_x - target) / density).clamp(0.0, maximum)
    return x


def knot_offsets_pix(
    knot_seed: torch.Tensor,
    n_knots: int,
    disk_hlr_pix: torch.Tensor,
    disk_q: torch.Tensor,
    position_angle_rad: torch.Tensor,
    knot_offset_hlr: torch.Tensor,
) -> torch.Tensor:
    """Positions of the first ``n_knots`` knots of each galaxy relative to its centre.

    Parameters
    ----------
    knot_seed
        Per-galaxy integer seeds in [0, `MAX_KNOT_SEED`) (any dtype holding
        them exactly), shape (n,).
    n_knots
        Number of knots ``J`` to place per galaxy (the largest ``knot_count``).
    disk_hlr_pix
        Disk half-light radii, pixels, shape (n,).
    disk_q
        Disk axis ratios in (0, 1], shape (n,).
    position_angle_rad
        Major-axis angles counter-clockwise from +x, radians, shape (n,).
    knot_offset_hlr
        Distance of the knots' centre from the galaxy's centre in the round
        frame, disk half-light radii, shape (n,).

    Returns
    -------
    offsets
        ``(dx, dy)`` in pixels, shape (n, J, 2), float64; knot ``j`` of a
        galaxy is the same whatever ``n_knots`` is.
    """
    device = disk_hlr_pix.device
    seed = _hash32(knot_seed.to(torch.float64).round().long()[:, None] & _MASK32)
    counter = torch.arange(n_knots, device=device)[None, :]
    extent_scales = KNOT_EXTENT_HLR * EXPONENTIAL_HLR_OVER_SCALE
    radius_scales = _truncated_gamma2_quantile(_counter_uniform(seed, "radius", counter), extent_scales)
    angle = 2.0 * math.pi * _counter_uniform(seed, "angle", counter)
    hlr = disk_hlr_pix.double()[:, None]
    radius = radius_scales * (hlr / EXPONENTIAL_HLR_OVER_SCALE)
    offset_angle = 2.0 * math.pi * _counter_uniform(seed, "offset", torch.zeros_like(counter[:, :1]))
    offset = knot_offset_hlr.double()[:, None] * hlr
    # Along the major (u) and minor (v) axes of the round profile, then sheared like the disk.
    root_q = disk_q.double().sqrt()[:, None]
    u = (radius * torch.cos(angle) + offset * torch.cos(offset_angle)) / root_q
    v = (radius * torch.sin(angle) + offset * torch.sin(offset_angle)) * root_q
    cos_pa = torch.cos(position_angle_rad.double())[:, None]
    sin_pa = torch.sin(position_angle_rad.double())[:, None]
    return torch.stack([u * cos_pa - v * sin_pa, u * sin_pa + v * cos_pa], dim=-1)


def knot_fluxes(
    flux: torch.Tensor,
    disk_frac: torch.Tensor,
    knot_frac: torch.Tensor,
    knot_count: torch.Tensor,
    n_knots: int,
) -> torch.Tensor:
    """Flux of each of the first ``n_knots`` knots: the knots share ``flux disk_frac knot_frac`` equally.

    Parameters
    ----------
    flux
        Galaxy total fluxes, shape (n,).
    disk_frac, knot_frac
        Fraction of the flux in the disk and of the disk's flux in knots, shape (n,).
    knot_count
        Number of knots of each galaxy (integers, any dtype), shape (n,).
    n_knots
        ``J`` >= the largest count.

    Returns
    -------
    fluxes
        Shape (n, J), in the units of ``flux``; zero for ``j >= knot_count``.
    """
    count = knot_count.round()
    each = flux * disk_frac * knot_frac / count.clamp(min=1)
    present = torch.arange(n_knots, device=flux.device)[None, :] < count[:, None]
    return torch.where(present, each[:, None], torch.zeros_like(each[:, None]))
