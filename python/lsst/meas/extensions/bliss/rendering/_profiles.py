"""Fourier transforms of the radial light profiles used by the renderer.

All transforms are normalized to unit flux (value 1 at k = 0) and are
functions of a dimensionless radial wavenumber: ``k * r`` with ``k`` in
radians per pixel and ``r`` the profile's scale in pixels.  Profiles without
a closed-form transform are tabulated once (numerically, with numpy/scipy)
and interpolated in torch so that evaluation runs on any device.
"""

from __future__ import annotations

__all__ = [
    "DEVAUCOULEURS_TRUNCATION_HLR",
    "EXPONENTIAL_HLR_OVER_SCALE",
    "devaucouleurs_fourier",
    "devaucouleurs_fourier_one_plus_squared",
    "devaucouleurs_fourier_squared",
    "exponential_fourier",
    "exponential_fourier_squared",
    "gaussian_fourier",
    "moffat_fourier",
    "moffat_fourier_one_plus_squared",
    "moffat_alpha_over_fwhm",
]

import functools
import math

import numpy as np
import torch
from scipy import interpolate, optimize, special

EXPONENTIAL_HLR_OVER_SCALE: float = 1.6783469900166605
"""Half-light radius of an exponential profile in units of its scale length."""

DEVAUCOULEURS_TRUNCATION_HLR: float = 5.0
"""Truncation radius of the de Vaucouleurs bulge, in units of its half-light radius.

The untruncated profile holds about 15% of its light beyond 5 half-light
radii, which no finite stamp can contain; truncating it (as GalSim's
``DeVaucouleurs(half_light_radius=hlr, trunc=5 * hlr)`` does) keeps rendered
fluxes exact.  The half-light radius refers to the truncated profile.
"""

# Tabulation grid: uniform in s = log(1 + u^2) with u the dimensionless wavenumber,
# so that the renderer can look up squared wavenumbers without a square root.
_TABLE_SIZE = 2048
# The dense table that `_RadialTable.from_one_plus_squared` reads without interpolating has this many
# cells per octave of its argument 1 + u^2: its cell is then a shift of the argument's bits, and with
# |df/ds| <= 0.9 (the de Vaucouleurs transform at s = 0) its error is below 6e-5 of f(0).
_CELL_BITS = 13

# Integer dtype of the same size, number of mantissa bits and the bits of 1.0 of the float dtypes.
_FLOAT_BITS = {torch.float32: (torch.int32, 23, 0x3F800000), torch.float64: (torch.int64, 52, 0x3FF << 52)}


class _RadialTable:
    """Linear interpolation of a radial function tabulated on ``s = log1p(u^2)``.

    Parameters
    ----------
    u_max
        Largest tabulated argument; the function is taken as zero beyond it.
    values
        Function values at ``u = sqrt(expm1(linspace(0, log1p(u_max^2), n)))``, shape (n,).
    """

    def __init__(self, u_max: float, values: np.ndarray) -> None:
        self.s_max = math.log1p(u_max**2)
        # One zero node past the end makes every argument beyond u_max evaluate to zero.
        nodes = np.append(values, [0.0, 0.0])
        self.values_cpu = torch.as_tensor(nodes[:-1], dtype=torch.float64)
        self.slopes_cpu = torch.as_tensor(np.diff(nodes), dtype=torch.float64)
        self._per_device: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
        self._values = np.asarray(values, dtype=np.float64)
        self._dense_per_device: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    @staticmethod
    def nodes(u_max: float) -> np.ndarray:
        """Arguments ``u`` at which the function must be tabulated, shape (n,)."""
        return np.sqrt(np.expm1(np.linspace(0.0, math.log1p(u_max**2), _TABLE_SIZE)))

    def _tables(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device, dtype)
        if key not in self._per_device:
            self._per_device[key] = (
                self.values_cpu.to(device=device, dtype=dtype),
                self.slopes_cpu.to(device=device, dtype=dtype),
            )
        return self._per_device[key]

    def from_squared(self, u_squared: torch.Tensor) -> torch.Tensor:
        """Interpolated values at ``u = sqrt(u_squared)``, same shape as ``u_squared``."""
        values, slopes = self._tables(u_squared.device, u_squared.dtype)
        position = torch.log1p(u_squared).mul_((_TABLE_SIZE - 1) / self.s_max).clamp_(max=float(_TABLE_SIZE))
        lower = position.long()
        fraction = position.sub_(lower)
        # index_select on the flattened indices is several times faster than advanced indexing.
        flat = lower.reshape(-1)
        lower_values = torch.index_select(values, 0, flat).view_as(lower)
        lower_slopes = torch.index_select(slopes, 0, flat).view_as(lower)
        return lower_values.addcmul_(lower_slopes, fraction)

    def _dense_table(self) -> torch.Tensor:
        """The dense table, float64, shape (2 + octaves 2^13,).

        Cell ``j >= 1`` holds the (cubic) interpolant of the coarse table at the middle of
        ``1 + u^2`` in ``2^e [1 + m 2^-13, 1 + (m + 1) 2^-13)`` with ``e 2^13 + m = j - 1``, so
        that truncating the argument's bits to the cell rounds it to the nearest node.  Cell 0
        (arguments rounded just below 1) and cell 1 hold f(0) exactly, which keeps fluxes (k = 0)
        exact, and the last (zero) stands for every argument beyond ``u_max``.
        """
        cells_per_octave = 2**_CELL_BITS
        octaves = math.ceil(self.s_max / math.log(2.0))
        index = np.arange(octaves * cells_per_octave)
        exponent, mantissa = np.divmod(index, cells_per_octave)
        middle = np.log(np.ldexp(1.0 + (mantissa + 0.5) / cells_per_octave, exponent))
        spline = interpolate.CubicSpline(np.linspace(0.0, self.s_max, _TABLE_SIZE), self._values)
        inner = np.where(middle < self.s_max, spline(np.minimum(middle, self.s_max)), 0.0)
        dense = np.concatenate([[self._values[0]], inner, [0.0]])
        dense[1] = self._values[0]
        return torch.as_tensor(dense, dtype=torch.float64)

    def from_one_plus_squared(self, one_plus_u_squared: torch.Tensor) -> torch.Tensor:
        """Values at ``u = sqrt(one_plus_u_squared - 1)``, same shape as the argument.

        For float32 and float64 arguments without autograd this reads the nearest node of a dense
        table (error below 6e-5 of f(0)), whose cell is a shift of the argument's bits, computed
        in place (the argument is overwritten): four passes over the argument against eight for
        the interpolation of `from_squared`, which it falls back to otherwise (with the same
        values and gradients as that, and the argument left as it is).
        """
        dtype = one_plus_u_squared.dtype
        if one_plus_u_squared.requires_grad or dtype not in (torch.float32, torch.float64):
            return self.from_squared(one_plus_u_squared - 1.0)
        key = (one_plus_u_squared.device, dtype)
        if key not in self._dense_per_device:
            # Made on first use: only the renderer's tables (de Vaucouleurs, Moffat) need it.
            self._dense_per_device[key] = self._dense_table().to(device=key[0], dtype=dtype)
        dense = self._dense_per_device[key]
        # A float's bits, read as an integer, grow with it: the exponent and the top mantissa
        # bits number the octave and the cell within it.
        integer, mantissa_bits, one = _FLOAT_BITS[dtype]
        shift = mantissa_bits - _CELL_BITS
        cell = one_plus_u_squared.view(integer).bitwise_right_shift_(shift)
        cell = cell.sub_((one >> shift) - 1).clamp_(0, dense.numel() - 1)
        return torch.index_select(dense, 0, cell.reshape(-1)).view(cell.shape)

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        return self.from_squared(u.square())


def gaussian_fourier(k_sigma: torch.Tensor) -> torch.Tensor:
    """Fourier transform of a unit-flux circular Gaussian.

    Parameters
    ----------
    k_sigma
        Wavenumber times the Gaussian's standard deviation, any shape.

    Returns
    -------
    transform
        ``exp(-(k sigma)^2 / 2)``, same shape.
    """
    return torch.exp(-0.5 * k_sigma.square())


def exponential_fourier(k_scale: torch.Tensor) -> torch.Tensor:
    """Fourier transform of a unit-flux exponential disk.

    Parameters
    ----------
    k_scale
        Wavenumber times the scale length (half-light radius /
        `EXPONENTIAL_HLR_OVER_SCALE`), any shape.

    Returns
    -------
    transform
        ``(1 + (k r_s)^2)^(-3/2)``, same shape.
    """
    return exponential_fourier_squared(k_scale.square())


def exponential_fourier_squared(k_scale_squared: torch.Tensor) -> torch.Tensor:
    """`exponential_fourier` of ``sqrt(k_scale_squared)``; overwrites its argument.

    Uses ``rsqrt`` because fractional powers are several times slower on the CPU.
    """
    inverse_root = k_scale_squared.add_(1.0).rsqrt_()
    return inverse_root.square().mul_(inverse_root)


@functools.cache
def _devaucouleurs_scale_over_hlr() -> float:
    """Scale radius ``r0`` of ``exp(-(r/r0)^(1/4))`` whose truncated hlr is 1."""
    cutoff = DEVAUCOULEURS_TRUNCATION_HLR

    def enclosed(radius: float, scale: float) -> float:
        return float(special.gammainc(8, (radius / scale) ** 0.25))

    def half_light_radius(scale: float) -> float:
        total = enclosed(cutoff, scale)
        return optimize.brentq(lambda r: enclosed(r, scale) - 0.5 * total, 1e-12, cutoff, xtol=1e-14)

    return optimize.brentq(lambda s: half_light_radius(s) - 1.0, 1e-8, 1.0, xtol=1e-16)


@functools.cache
def _devaucouleurs_table() -> _RadialTable:
    # Hankel transform in the variable t = (r / r0)^(1/4), which removes the
    # cusp at r = 0: r dr = 4 r0^2 t^7 dt and the integrand is smooth in t.
    scale = _devaucouleurs_scale_over_hlr()
    t_max = (DEVAUCOULEURS_TRUNCATION_HLR / scale) ** 0.25
    nodes, weights = special.roots_legendre(4000)
    t = 0.5 * t_max * (nodes + 1.0)
    radial_weight = 0.5 * t_max * weights * np.exp(-t) * t**7
    radius = scale * t**4
    u_max = 500.0
    u = _RadialTable.nodes(u_max)
    values = np.empty_like(u)
    for start in range(0, u.size, 256):
        block = u[start : start + 256, None]
        values[start : start + 256] = special.j0(block * radius[None, :]) @ radial_weight
    return _RadialTable(u_max, values / radial_weight.sum())


def devaucouleurs_fourier(k_hlr: torch.Tensor) -> torch.Tensor:
    """Fourier transform of a unit-flux truncated de Vaucouleurs profile.

    The profile is ``exp(-(r/r0)^(1/4))`` truncated at
    `DEVAUCOULEURS_TRUNCATION_HLR` half-light radii, with ``r0`` such that
    the truncated profile's half-light radius is the given one.

    Parameters
    ----------
    k_hlr
        Wavenumber times the half-light radius, any shape, non-negative.

    Returns
    -------
    transform
        Tabulated transform, same shape (zero beyond ``k_hlr = 500``).
    """
    return _devaucouleurs_table()(k_hlr)


def devaucouleurs_fourier_squared(k_hlr_squared: torch.Tensor) -> torch.Tensor:
    """`devaucouleurs_fourier` of ``sqrt(k_hlr_squared)``, avoiding the square root."""
    return _devaucouleurs_table().from_squared(k_hlr_squared)


def devaucouleurs_fourier_one_plus_squared(one_plus_k_hlr_squared: torch.Tensor) -> torch.Tensor:
    """`devaucouleurs_fourier` of ``sqrt(one_plus_k_hlr_squared - 1)``; overwrites its argument.

    The renderer computes ``1 + (k hlr)^2`` in the matrix product that gives the profiles'
    arguments; without autograd the transform is the nearest node of a dense table (error below
    6e-5 of f(0)), whose cell is computed in place of the argument.

    Parameters
    ----------
    one_plus_k_hlr_squared
        One plus the squared product of wavenumber and half-light radius, any shape, >= 1.

    Returns
    -------
    transform
        Tabulated transform, same shape.
    """
    return _devaucouleurs_table().from_one_plus_squared(one_plus_k_hlr_squared)


def moffat_alpha_over_fwhm(beta: float) -> float:
    """Scale ``alpha`` of a Moffat profile ``(1 + r^2/alpha^2)^-beta`` per unit FWHM."""
    return 1.0 / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))


@functools.cache
def _moffat_table(beta: float) -> _RadialTable:
    # Closed form: (u^nu K_nu(u)) 2^(1-nu) / Gamma(nu) with nu = beta - 1.
    nu = beta - 1.0
    u_max = 200.0
    u = _RadialTable.nodes(u_max)
    with np.errstate(invalid="ignore", over="ignore"):
        values = np.power(u, nu) * special.kv(nu, u) * 2.0 ** (1.0 - nu) / special.gamma(nu)
    values[0] = 1.0
    return _RadialTable(u_max, np.nan_to_num(values, nan=0.0))


def _checked_moffat_table(beta: float) -> _RadialTable:
    """The Moffat table of index ``beta``, or `ValueError` for an index of infinite or ill-behaved flux."""
    if not beta > 1.1:
        raise ValueError(f"moffat_beta={beta} is out of range; it must be greater than 1.1.")
    return _moffat_table(float(beta))


def moffat_fourier(k_alpha: torch.Tensor, beta: float) -> torch.Tensor:
    """Fourier transform of a unit-flux untruncated Moffat profile.

    Parameters
    ----------
    k_alpha
        Wavenumber times the Moffat scale ``alpha`` (FWHM times
        `moffat_alpha_over_fwhm`), any shape, non-negative.
    beta
        Moffat index; must exceed 1.1 so that the untruncated profile has a
        well-behaved finite flux.

    Returns
    -------
    transform
        Tabulated transform, same shape.
    """
    return _checked_moffat_table(beta)(k_alpha)


def moffat_fourier_one_plus_squared(one_plus_k_alpha_squared: torch.Tensor, beta: float) -> torch.Tensor:
    """`moffat_fourier` of ``sqrt(one_plus_k_alpha_squared - 1)``; overwrites its argument.

    Without autograd the transform is the nearest node of a dense table (error below 6e-5 of
    its value at k = 0), as `devaucouleurs_fourier_one_plus_squared`.

    Parameters
    ----------
    one_plus_k_alpha_squared
        One plus the squared product of wavenumber and Moffat scale, any shape, >= 1.
    beta
        Moffat index, greater than 1.1.

    Returns
    -------
    transform
        Tabulated transform, same shape.
    """
    return _checked_moffat_table(beta).from_one_plus_squared(one_plus_k_alpha_squared)
