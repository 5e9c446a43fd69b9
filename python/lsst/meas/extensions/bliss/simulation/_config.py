"""Settings of the source prior and of the image simulator, apart from the code that draws from them,
so that what a model file records about its training does not load the simulator."""

from __future__ import annotations

__all__ = ["NOISE_MODELS", "REALISTIC_GALAXIES", "VARIANCE_CONVENTIONS", "PriorConfig", "SimulatorConfig"]

import dataclasses
import math
from typing import Any


@dataclasses.dataclass(frozen=True)
class PriorConfig:
    """Parameters of the source prior.

    The defaults describe a high-latitude LSST single visit down to about
    1 mag below its 5-sigma depth: about 55 sources per arcmin^2 (deep
    r-band galaxy counts near r = 25.5 are ~50 per arcmin^2, plus stars), so
    that blends occur at their natural rate.

    Attributes
    ----------
    source_density_per_arcmin2
        Mean number of sources per arcmin^2 (Poisson).
    star_fraction
        Probability that a source is a star.
    faint_limit_mag
        Faintest AB magnitude; ``None`` means 1 mag below the 5-sigma
        point-source depth of the conditions.
    bright_limit_mag
        Brightest AB magnitude (around LSST single-visit saturation).
    galaxy_flux_alpha, star_flux_alpha
        Index ``alpha`` of the truncated Pareto flux distributions,
        ``N(> F) ~ F^-alpha``; the number-count slope ``d log10 N / d m`` is
        ``0.4 alpha``.
    size_median_arcsec
        Median disk half-light radius at ``size_reference_mag``.
    size_reference_mag
        Magnitude at which ``size_median_arcsec`` applies.
    size_mag_slope
        Size-magnitude relation: median radius scales as
        ``10^(-size_mag_slope (m - size_reference_mag))``.
    size_log_scatter
        Scatter of ln(half-light radius) at fixed magnitude.
    min_hlr_arcsec, max_hlr_arcsec
        Range of half-light radii (the log-normal is truncated to it).
    bulge_size_ratio_range
        Bulge half-light radius as a fraction of the disk's, uniform in this range.
    disk_q_range, bulge_q_range
        Axis ratios, uniform in these ranges.
    companion_fraction
        Probability that a galaxy has a close companion galaxy, beyond the
        Poisson field: galaxies cluster, so close pairs are more common than
        in a uniform field, and a model trained without them rarely sees two
        bright galaxies a PSF FWHM apart.  0 (the default) draws the plain
        Poisson field, with the same random numbers as before the option.
    companion_max_tiles
        The companion lies in an empty tile at most this many tiles from its
        host's (in each direction), uniform in the tile.
    companion_delta_mag_range
        The companion is fainter than its host by a magnitude difference
        uniform in this range; its shape is drawn from the prior for its flux.
    companion_min_separation_pix
        Companions that fall closer than this to their host are not drawn
        (0: none is dropped): a pair closer than the PSF is one source to
        any method, so a model can learn nothing from it but wider flux
        intervals (leaving such pairs out narrowed them only a little; see
        ``doc/lsst.meas.extensions.bliss/experiments.rst``).
    bright_star_density_per_arcmin2
        Mean number per arcmin^2 of bright stars added to the field, with
        magnitudes uniform in ``bright_star_mag_range``.  Every LSST detector
        holds stars that saturate and bleed, far brighter than the field's
        ``bright_limit_mag``; their masked cores and wide wings look like
        nothing else, and at their natural density (about 0.1 per arcmin^2 at
        r = 12-16) a training image almost never holds one.  Training raises
        the density so that the encoder learns to report one star at the
        masked core instead of fragments in its wings; their posteriors are
        set by the data, not by this rate.  0 (the default) adds none and draws
        the same random numbers as before the option.
    bright_star_mag_range
        AB magnitudes (brightest, faintest) of the added bright stars.
    compact_fraction
        Probability that a galaxy belongs to a compact population whose disk
        half-light radius is log-uniform between ``min_hlr_arcsec`` and
        ``compact_max_hlr_arcsec`` whatever its magnitude, instead of following
        the size-magnitude relation: deep surveys find compact galaxies (early
        types, compact star-forming galaxies) at bright as well as faint
        magnitudes, which a single log-normal relation makes rare at bright
        magnitudes.  0 (the default) draws the same random numbers as before
        the option.
    compact_max_hlr_arcsec
        Largest half-light radius of the compact population, arcsec.
    disk_ellipticity_sigma
        Dispersion per component of the disks' intrinsic ellipticity
        ``|g| = (1 - q) / (1 + q)``: ``g`` is a two-dimensional Gaussian with
        this dispersion, truncated so that the axis ratio stays in
        ``disk_q_range`` (the same uniform number drawn through the
        truncated Rayleigh quantile, so nothing else changes).  0 (the default)
        keeps axis ratios uniform in ``disk_q_range``.
    knot_galaxy_fraction
        Probability that a galaxy's disk holds star-forming knots: point-like
        clumps that carry a fraction of the disk's light and are placed like
        the disk's light (see `rendering.KNOT_FIELDS`); such galaxies carry
        the knot fields in the truth catalog.  0 (the default) draws no knots,
        no knot fields and the same random numbers as before the option.
    knot_flux_fraction_range
        Fraction of the disk's flux in knots, uniform in this range per galaxy.
    knot_count_range
        Number of knots, an integer uniform in this range (inclusive) per galaxy.
    knot_offset_fraction
        Probability that a galaxy with knots is irregular: its knots are
        centred away from the galaxy's centre, which makes its light lopsided.
    knot_offset_hlr_range
        Distance of an irregular galaxy's knot centre from its centre, in disk
        half-light radii, uniform in this range.
    """

    source_density_per_arcmin2: float = 55.0
    star_fraction: float = 0.1
    faint_limit_mag: float | None = None
    bright_limit_mag: float = 16.0
    galaxy_flux_alpha: float = 0.75
    star_flux_alpha: float = 0.5
    size_median_arcsec: float = 0.35
    size_reference_mag: float = 24.0
    size_mag_slope: float = 0.12
    size_log_scatter: float = 0.4
    min_hlr_arcsec: float = 0.1
    max_hlr_arcsec: float = 3.0
    bulge_size_ratio_range: tuple[float, float] = (0.3, 1.0)
    disk_q_range: tuple[float, float] = (0.2, 1.0)
    bulge_q_range: tuple[float, float] = (0.5, 1.0)
    companion_fraction: float = 0.0
    companion_max_tiles: int = 2
    companion_delta_mag_range: tuple[float, float] = (0.0, 2.5)
    companion_min_separation_pix: float = 0.0
    bright_star_density_per_arcmin2: float = 0.0
    bright_star_mag_range: tuple[float, float] = (12.0, 16.0)
    compact_fraction: float = 0.0
    compact_max_hlr_arcsec: float = 0.2
    disk_ellipticity_sigma: float = 0.0
    knot_galaxy_fraction: float = 0.0
    knot_flux_fraction_range: tuple[float, float] = (0.05, 0.5)
    knot_count_range: tuple[int, int] = (5, 30)
    knot_offset_fraction: float = 0.0
    knot_offset_hlr_range: tuple[float, float] = (0.25, 1.0)

    def __post_init__(self) -> None:
        def require(condition: bool, field: str, allowed: str) -> None:
            if not condition:
                raise ValueError(f"{field}={getattr(self, field)!r} is out of range; allowed: {allowed}.")

        def finite(value: Any) -> bool:
            return isinstance(value, int | float) and math.isfinite(value)

        require(
            finite(self.source_density_per_arcmin2) and self.source_density_per_arcmin2 > 0,
            "source_density_per_arcmin2",
            "> 0 sources per arcmin^2",
        )
        require(finite(self.star_fraction) and 0 <= self.star_fraction <= 1, "star_fraction", "[0, 1]")
        require(finite(self.bright_limit_mag), "bright_limit_mag", "a finite AB magnitude")
        require(
            self.faint_limit_mag is None
            or (finite(self.faint_limit_mag) and self.faint_limit_mag > self.bright_limit_mag),
            "faint_limit_mag",
            "None or a magnitude fainter (larger) than bright_limit_mag",
        )
        for name in (
            "galaxy_flux_alpha",
            "star_flux_alpha",
            "size_median_arcsec",
            "size_log_scatter",
            "min_hlr_arcsec",
        ):
            require(finite(getattr(self, name)) and getattr(self, name) > 0, name, "> 0")
        require(finite(self.size_reference_mag), "size_reference_mag", "a finite AB magnitude")
        require(finite(self.size_mag_slope), "size_mag_slope", "a finite number")
        require(
            finite(self.max_hlr_arcsec) and self.max_hlr_arcsec > self.min_hlr_arcsec,
            "max_hlr_arcsec",
            "> min_hlr_arcsec",
        )
        for name in ("bulge_size_ratio_range", "disk_q_range", "bulge_q_range"):
            low, high = getattr(self, name)
            require(finite(low) and finite(high) and 0 < low <= high <= 1, name, "0 < low <= high <= 1")
        require(
            finite(self.companion_fraction) and 0 <= self.companion_fraction <= 1,
            "companion_fraction",
            "[0, 1]",
        )
        require(
            isinstance(self.companion_max_tiles, int) and self.companion_max_tiles >= 1,
            "companion_max_tiles",
            "an integer >= 1",
        )
        low, high = self.companion_delta_mag_range
        require(
            finite(low) and finite(high) and 0 <= low <= high, "companion_delta_mag_range", "0 <= low <= high"
        )
        require(
            finite(self.companion_min_separation_pix) and self.companion_min_separation_pix >= 0,
            "companion_min_separation_pix",
            ">= 0 pixels",
        )
        require(
            finite(self.bright_star_density_per_arcmin2) and self.bright_star_density_per_arcmin2 >= 0,
            "bright_star_density_per_arcmin2",
            ">= 0 stars per arcmin^2",
        )
        brightest, faintest = self.bright_star_mag_range
        require(
            finite(brightest) and finite(faintest) and brightest <= faintest,
            "bright_star_mag_range",
            "(brightest, faintest) AB magnitudes with brightest <= faintest",
        )
        for name in ("compact_fraction", "knot_galaxy_fraction", "knot_offset_fraction"):
            require(finite(getattr(self, name)) and 0 <= getattr(self, name) <= 1, name, "[0, 1]")
        require(
            finite(self.compact_max_hlr_arcsec)
            and (self.compact_fraction == 0 or self.compact_max_hlr_arcsec > self.min_hlr_arcsec),
            "compact_max_hlr_arcsec",
            "a radius (arcsec) larger than min_hlr_arcsec",
        )
        require(
            finite(self.disk_ellipticity_sigma) and 0 <= self.disk_ellipticity_sigma <= 1,
            "disk_ellipticity_sigma",
            "[0, 1] (0 keeps axis ratios uniform)",
        )
        low, high = self.knot_flux_fraction_range
        require(
            finite(low) and finite(high) and 0 <= low <= high < 1,
            "knot_flux_fraction_range",
            "0 <= low <= high < 1",
        )
        low, high = self.knot_count_range
        require(
            isinstance(low, int) and isinstance(high, int) and 1 <= low <= high <= 1000,
            "knot_count_range",
            "integers 1 <= low <= high <= 1000",
        )
        low, high = self.knot_offset_hlr_range
        require(
            finite(low) and finite(high) and 0 <= low <= high <= 5,
            "knot_offset_hlr_range",
            "0 <= low <= high <= 5 disk half-light radii",
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable representation."""
        return dataclasses.asdict(self)

    def with_realistic_galaxies(self) -> PriorConfig:
        """The same prior with the galaxy population of `REALISTIC_GALAXIES` (knots, irregular
        galaxies, published sizes and ellipticities, a compact population and close pairs)."""
        return dataclasses.replace(self, **REALISTIC_GALAXIES)

    def without_bright_stars(self) -> PriorConfig:
        """The same prior without the added bright stars, whose training density is far above the
        sky's: the prior of held-out and demo scenes (saturated stars are measured on their own, by
        ``bliss-bench saturation`` and the demo's saturated star)."""
        return dataclasses.replace(self, bright_star_density_per_arcmin2=0.0)

    def poisson_field(self) -> PriorConfig:
        """The same prior with the added populations (companions, bright stars) at their defaults:
        the field that single galaxies are drawn from, which the added populations leave as it is."""
        defaults = {
            field.name: field.default
            for field in dataclasses.fields(self)
            if field.name.startswith(("companion_", "bright_star_"))
        }
        return dataclasses.replace(self, **defaults)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PriorConfig:
        """Inverse of `to_dict`."""
        ranges = (
            "bulge_size_ratio_range",
            "disk_q_range",
            "bulge_q_range",
            "companion_delta_mag_range",
            "bright_star_mag_range",
            "knot_flux_fraction_range",
            "knot_count_range",
            "knot_offset_hlr_range",
        )
        return cls(**{k: tuple(v) if k in ranges else v for k, v in data.items()})


REALISTIC_GALAXIES: dict[str, Any] = {
    "size_mag_slope": 0.088,
    "size_log_scatter": 0.55,
    "max_hlr_arcsec": 5.0,
    "compact_fraction": 0.1,
    "compact_max_hlr_arcsec": 0.2,
    "disk_ellipticity_sigma": 0.26,
    "knot_galaxy_fraction": 0.5,
    "knot_flux_fraction_range": (0.05, 0.5),
    "knot_count_range": (5, 30),
    "knot_offset_fraction": 0.2,
    "knot_offset_hlr_range": (0.25, 1.0),
    "companion_fraction": 0.3,
}
"""`PriorConfig` settings of the richer galaxy population (``PriorConfig.with_realistic_galaxies``).

Sizes: ``R_e`` grows as ``M^0.22`` for late-type galaxies (van der Wel et al.
2014), i.e. ``10^(-0.088 m)`` at fixed mass-to-light ratio; the scatter of
ln ``R_e`` at fixed magnitude, 0.55, is that of star-forming galaxies at fixed
luminosity (Shibuya et al. 2015, about 0.5) widened by the spread of redshifts
at a fixed apparent magnitude; radii up to 5".  One galaxy in ten is compact
(0.1"-0.2") at any magnitude.  Disk ellipticities have a dispersion of 0.26 per
component (Leauthaud et al. 2007).  Half the disks hold 5-30 star-forming knots
with 5-50% of their light (the knot model of the DC2 simulations), a fifth of
those off-centre by 0.25-1 half-light radius; three galaxies in ten have a close
companion (twice the Poisson field's pairs 1-2 PSF FWHM apart).  See
``doc/lsst.meas.extensions.bliss/simulator.rst``."""

NOISE_MODELS: tuple[str, ...] = ("poisson", "gaussian")

VARIANCE_CONVENTIONS: tuple[str, ...] = ("full", "sky_only", "gain_x0.5", "gain_x2")
"""How a variance plane may have been computed (`variance_convention`): ``"full"``, the expected
variance of each pixel (sky, the source's own Poisson noise and read noise) as the simulator
computes it; ``"sky_only"``, the sky and read noise alone, as in coadds; ``"gain_x0.5"`` and
``"gain_x2"``, the full variance computed with half or twice the true gain (electrons per count),
which multiplies it by 2 or by 0.5."""


@dataclasses.dataclass(frozen=True)
class SimulatorConfig:
    """How images are simulated.

    Attributes
    ----------
    image_height, image_width
        Image size in pixels; multiples of ``tile_size``.
    tile_size
        Tile side in pixels (the truth catalog's tiling).
    max_sources_per_tile
        ``K`` of the truth tile catalog.
    border_tiles
        Sources are also drawn in a border of this many tiles around the
        image, so that light from outside enters it as in real data; they are
        not in the truth catalogs.
    noise
        ``"poisson"`` (photo-electron counts) or ``"gaussian"`` (its normal
        approximation with the same variance).
    subtract_background
        Return background-subtracted images, as calexps are.
    psf_fwhm_range_arcsec
        If set, each image draws its PSF FWHM uniformly from this range;
        otherwise all images use the conditions' FWHM.
    max_stamp_half_size
        Largest rendering stamp half-size in pixels.
    masked_regions_per_image
        Mean number (Poisson) of masked regions that hide whatever lies under
        them, added to each image: a ``BAD`` column or a ``NO_DATA`` square of
        side 8-48 pixels, with equal odds.  Detectors mask such regions
        whether or not a source lies there; without them in training, a
        network that has only seen saturated stars masked learns that a mask
        means a star.  0 (the default) adds none and draws the same random
        numbers as before the option.
    exposure_time_range_s
        If set, each image draws its exposure time uniformly from this range
        (seconds) instead of the conditions': that changes the electrons per
        nJy, hence the sky's and the sources' Poisson noise and how they
        compare, as real visits do.  None (the default) draws no random
        number for it.
    variance_conventions
        If not empty, each image's variance plane follows one of these
        `VARIANCE_CONVENTIONS`, drawn uniformly, so that a network never
        learns to rely on one convention.  Empty (the default): the full
        variance, with no random number drawn for it.
    """

    image_height: int = 64
    image_width: int = 64
    tile_size: int = 4
    max_sources_per_tile: int = 1
    border_tiles: int = 2
    noise: str = "poisson"
    subtract_background: bool = True
    psf_fwhm_range_arcsec: tuple[float, float] | None = None
    max_stamp_half_size: int = 64
    masked_regions_per_image: float = 0.0
    exposure_time_range_s: tuple[float, float] | None = None
    variance_conventions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.exposure_time_range_s is not None:
            low, high = self.exposure_time_range_s
            if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
                raise ValueError(
                    f"exposure_time_range_s={self.exposure_time_range_s} is out of range; "
                    "need 0 < low <= high seconds."
                )
        unknown = [name for name in self.variance_conventions if name not in VARIANCE_CONVENTIONS]
        if unknown or len(set(self.variance_conventions)) != len(self.variance_conventions):
            raise ValueError(
                f"variance_conventions={list(self.variance_conventions)} must list distinct conventions "
                f"among {list(VARIANCE_CONVENTIONS)}."
            )
        if self.tile_size < 1:
            raise ValueError(f"tile_size={self.tile_size} is out of range; it must be >= 1 pixel.")
        for name in ("image_height", "image_width"):
            value = getattr(self, name)
            if value < self.tile_size or value % self.tile_size:
                raise ValueError(
                    f"{name}={value} is out of range; it must be a positive multiple of "
                    f"tile_size={self.tile_size}."
                )
        if self.max_sources_per_tile < 1:
            raise ValueError(
                f"max_sources_per_tile={self.max_sources_per_tile} is out of range; it must be >= 1."
            )
        if self.border_tiles < 0:
            raise ValueError(f"border_tiles={self.border_tiles} is out of range; it must be >= 0.")
        if self.noise not in NOISE_MODELS:
            raise ValueError(f"noise={self.noise!r} is not supported; choose one of {NOISE_MODELS}.")
        if self.max_stamp_half_size < 4:
            raise ValueError(
                f"max_stamp_half_size={self.max_stamp_half_size} is out of range; it must be >= 4."
            )
        if not (math.isfinite(self.masked_regions_per_image) and self.masked_regions_per_image >= 0):
            raise ValueError(
                f"masked_regions_per_image={self.masked_regions_per_image} is out of range; it must be >= 0."
            )
        if self.psf_fwhm_range_arcsec is not None:
            low, high = self.psf_fwhm_range_arcsec
            if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
                raise ValueError(
                    f"psf_fwhm_range_arcsec={self.psf_fwhm_range_arcsec} is out of range; "
                    "need 0 < low <= high."
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable representation."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimulatorConfig:
        """Inverse of `to_dict`."""
        fwhm_range = data.get("psf_fwhm_range_arcsec")
        exposure_range = data.get("exposure_time_range_s")
        fields = {
            **data,
            "psf_fwhm_range_arcsec": None if fwhm_range is None else tuple(fwhm_range),
            "exposure_time_range_s": None if exposure_range is None else tuple(exposure_range),
        }
        if "variance_conventions" in data:
            fields["variance_conventions"] = tuple(data["variance_conventions"])
        return cls(**fields)
