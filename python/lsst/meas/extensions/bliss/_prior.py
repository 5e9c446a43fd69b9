"""The prior over light sources: counts, types, fluxes and galaxy shapes."""

from __future__ import annotations

__all__ = ["PriorConfig", "SourcePrior", "sample_truncated_pareto"]

import dataclasses
import math
from typing import Any

import torch

from ._catalog import SOURCE_FIELDS, TileCatalog
from ._conditions import AB_NJY_ZERO_POINT, SurveyConditions, mag_to_flux_njy


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

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable representation."""
        return dataclasses.asdict(self)

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
        )
        return cls(**{k: tuple(v) if k in ranges else v for k, v in data.items()})


def sample_truncated_pareto(
    shape: tuple[int, ...],
    alpha: float,
    minimum: float,
    maximum: float,
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw from a Pareto distribution ``p(F) ~ F^-(alpha + 1)`` truncated to [minimum, maximum].

    Parameters
    ----------
    shape
        Output shape.
    alpha
        Pareto index (> 0).
    minimum, maximum
        Truncation bounds, ``0 < minimum < maximum``.
    generator, device, dtype
        Random source and output placement.

    Returns
    -------
    samples
        Tensor of ``shape``.
    """
    uniform = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
    ratio = (minimum / maximum) ** alpha
    samples = minimum * torch.pow(1.0 - uniform * (1.0 - ratio), -1.0 / alpha)
    return samples.clamp(max=maximum).to(dtype)


def _uniform(
    shape: tuple[int, ...],
    low: float,
    high: float,
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, device=device, dtype=dtype)


class SourcePrior:
    """Sampler of per-tile source catalogs.

    Counts per tile are Poisson with mean ``density x tile area``, truncated
    at ``max_sources_per_tile`` (sources beyond it are not drawn); locations
    are uniform within the tile; each source is a star with probability
    ``star_fraction``; fluxes follow truncated Pareto laws; galaxies get a
    bulge+disk shape with a size-magnitude relation.

    Parameters
    ----------
    config
        Prior parameters.
    conditions
        Survey conditions (pixel scale, depth).
    tile_size
        Tile side in pixels.
    max_sources_per_tile
        ``K``, the most sources a tile can hold.
    """

    def __init__(
        self,
        config: PriorConfig,
        conditions: SurveyConditions,
        tile_size: int = 4,
        max_sources_per_tile: int = 1,
    ) -> None:
        if tile_size < 1:
            raise ValueError(f"tile_size={tile_size} is out of range; it must be >= 1 pixel.")
        if max_sources_per_tile < 1:
            raise ValueError(f"max_sources_per_tile={max_sources_per_tile} is out of range; it must be >= 1.")
        self.config = config
        self.conditions = conditions
        self.tile_size = tile_size
        self.max_sources_per_tile = max_sources_per_tile
        faint = config.faint_limit_mag
        self.faint_limit_mag = conditions.point_source_depth_mag(5.0) + 1.0 if faint is None else faint
        if self.faint_limit_mag <= config.bright_limit_mag:
            raise ValueError(
                f"faint limit {self.faint_limit_mag:.2f} mag is not fainter than bright_limit_mag="
                f"{config.bright_limit_mag}; set faint_limit_mag explicitly."
            )
        self.min_flux_njy = float(mag_to_flux_njy(self.faint_limit_mag))
        self.max_flux_njy = float(mag_to_flux_njy(config.bright_limit_mag))

    @property
    def mean_sources_per_tile(self) -> float:
        """Poisson mean of the source count per tile (before truncation at ``K``)."""
        tile_area_arcmin2 = (self.tile_size * self.conditions.pixel_scale_arcsec / 60.0) ** 2
        return self.config.source_density_per_arcmin2 * tile_area_arcmin2

    def sample(
        self,
        batch_size: int,
        n_tiles_h: int,
        n_tiles_w: int,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> TileCatalog:
        """Draw a batch of tile catalogs.

        Parameters
        ----------
        batch_size, n_tiles_h, n_tiles_w
            Output has ``batch_size`` images of ``n_tiles_h x n_tiles_w`` tiles.
        generator
            Seeded generator on ``device``; the draw is reproducible from it.
        device, dtype
            Placement and float dtype of the result.

        Returns
        -------
        catalog
            Shape (B, Ht, Wt, K).
        """
        config = self.config
        device = torch.device(device)
        shape = (batch_size, n_tiles_h, n_tiles_w, self.max_sources_per_tile)
        rate = torch.full(shape[:3], self.mean_sources_per_tile, device=device, dtype=torch.float64)
        counts = torch.poisson(rate, generator=generator).long().clamp(max=self.max_sources_per_tile)
        locations = torch.rand(shape + (2,), generator=generator, device=device, dtype=dtype)
        is_galaxy = torch.rand(shape, generator=generator, device=device) >= config.star_fraction
        galaxy_flux = sample_truncated_pareto(
            shape, config.galaxy_flux_alpha, self.min_flux_njy, self.max_flux_njy, generator, device, dtype
        )
        star_flux = sample_truncated_pareto(
            shape, config.star_flux_alpha, self.min_flux_njy, self.max_flux_njy, generator, device, dtype
        )
        flux = torch.where(is_galaxy, galaxy_flux, star_flux)
        fields = {"flux_njy": flux, "is_galaxy": is_galaxy, **self.sample_galaxy_shapes(flux, generator)}
        slot = torch.arange(self.max_sources_per_tile, device=device)
        occupied = slot < counts[..., None]
        galaxy = occupied & is_galaxy
        # Padding slots and the galaxy fields of stars carry neutral values.
        neutral = {"disk_q": 1.0, "bulge_q": 1.0}
        for name in SOURCE_FIELDS:
            keep = occupied if name in ("flux_njy", "is_galaxy") else galaxy
            fields[name] = torch.where(
                keep, fields[name], torch.full_like(fields[name], neutral.get(name, 0))
            )
        locations = torch.where(occupied[..., None], locations, torch.zeros_like(locations))
        catalog = TileCatalog(self.tile_size, counts, locations, fields)
        if config.companion_fraction > 0:
            catalog = self._add_companions(catalog, generator)
        if config.bright_star_density_per_arcmin2 > 0:
            catalog = self._add_bright_stars(catalog, generator)
        return catalog

    def _add_bright_stars(self, catalog: TileCatalog, generator: torch.Generator) -> TileCatalog:
        """Put a bright star (see `PriorConfig.bright_star_density_per_arcmin2`) in the first slot of
        tiles drawn at that density; it replaces a source already there."""
        config = self.config
        counts, device = catalog.n_sources, catalog.n_sources.device
        dtype = catalog.locations.dtype
        rate = self.mean_sources_per_tile * config.bright_star_density_per_arcmin2
        rate /= config.source_density_per_arcmin2
        star = torch.rand(counts.shape, generator=generator, device=device) < rate
        brightest, faintest = config.bright_star_mag_range
        mag = _uniform(counts.shape, brightest, faintest, generator, device, torch.float64)
        flux = mag_to_flux_njy(mag).to(dtype)
        location = torch.rand(counts.shape + (2,), generator=generator, device=device, dtype=dtype)
        first_slot = torch.zeros_like(catalog.fields["is_galaxy"])
        first_slot[..., 0] = star
        neutral = {"disk_q": 1.0, "bulge_q": 1.0}
        fields = {}
        for name, value in catalog.fields.items():
            if name == "flux_njy":
                replacement = flux[..., None].expand_as(value)
            else:
                replacement = torch.full_like(value, neutral.get(name, 0))
            fields[name] = torch.where(first_slot, replacement, value)
        locations = catalog.locations.clone()
        locations[..., 0, :] = torch.where(star[..., None], location, locations[..., 0, :])
        return TileCatalog(self.tile_size, torch.where(star, counts.clamp(min=1), counts), locations, fields)

    def _add_companions(self, catalog: TileCatalog, generator: torch.Generator) -> TileCatalog:
        """Give each galaxy a companion with probability ``companion_fraction`` (see `PriorConfig`).

        A companion goes to the first slot of an empty tile within ``companion_max_tiles`` of its
        host's tile; when two hosts pick the same tile it gets the brighter companion.
        """
        config = self.config
        counts, device = catalog.n_sources, catalog.n_sources.device
        batch, n_rows, n_cols = counts.shape
        flux = catalog.fields["flux_njy"][..., 0]
        host = (counts > 0) & catalog.fields["is_galaxy"][..., 0]
        host &= torch.rand(counts.shape, generator=generator, device=device) < config.companion_fraction
        reach = config.companion_max_tiles
        offsets = torch.tensor(
            [(dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1) if dy or dx],
            device=device,
        )
        choice = torch.randint(len(offsets), counts.shape, generator=generator, device=device)
        low, high = config.companion_delta_mag_range
        delta_mag = _uniform(counts.shape, low, high, generator, device, flux.dtype)
        images, rows, cols = torch.nonzero(host, as_tuple=True)
        target_rows = rows + offsets[choice[host], 0]
        target_cols = cols + offsets[choice[host], 1]
        inside = (target_rows >= 0) & (target_rows < n_rows) & (target_cols >= 0) & (target_cols < n_cols)
        target = (images[inside] * n_rows + target_rows[inside]) * n_cols + target_cols[inside]
        offered_flux = (flux[host] * 10 ** (-0.4 * delta_mag[host]))[inside]
        companion_flux = torch.zeros(batch * n_rows * n_cols, dtype=flux.dtype, device=device)
        companion_flux.scatter_reduce_(0, target, offered_flux, reduce="amax")
        companion_flux = companion_flux.reshape(counts.shape)
        shapes = self.sample_galaxy_shapes(companion_flux.clamp(min=self.min_flux_njy), generator)
        location = torch.rand((batch, n_rows, n_cols, 2), generator=generator, device=device)
        # Companions fainter than the prior's faint limit are not drawn, as for any other source.
        new = (companion_flux >= self.min_flux_njy) & (counts == 0)
        if config.companion_min_separation_pix > 0:
            # Each tile's companion is that of the host whose companion flux it got (the brightest).
            host_xy = catalog.locations[images, rows, cols, 0][inside] + torch.stack([cols, rows], 1)[inside]
            won = offered_flux == companion_flux.reshape(-1)[target]
            tile_xy = torch.stack([target % n_cols, target // n_cols % n_rows], dim=1)
            companion_xy = location.reshape(-1, 2)[target] + tile_xy
            separation_pix = self.tile_size * (companion_xy - host_xy).norm(dim=1)
            too_close = torch.zeros(batch * n_rows * n_cols, dtype=torch.bool, device=device)
            too_close[target[won & (separation_pix < config.companion_min_separation_pix)]] = True
            new &= ~too_close.reshape(counts.shape)
        first_slot = torch.zeros_like(catalog.fields["is_galaxy"])
        first_slot[..., 0] = new
        fields = dict(catalog.fields)
        fields["flux_njy"] = torch.where(first_slot, companion_flux[..., None], fields["flux_njy"])
        fields["is_galaxy"] = fields["is_galaxy"] | first_slot
        for name, value in shapes.items():
            fields[name] = torch.where(first_slot, value[..., None], fields[name])
        locations = catalog.locations.clone()
        locations[..., 0, :] = torch.where(new[..., None], location.to(locations.dtype), locations[..., 0, :])
        return TileCatalog(self.tile_size, torch.where(new, 1, counts), locations, fields)

    def sample_galaxy_shapes(
        self, flux_njy: torch.Tensor, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Draw bulge+disk shapes for galaxies of the given fluxes.

        Parameters
        ----------
        flux_njy
            Galaxy fluxes, nJy, any shape; sizes follow the size-magnitude relation.
        generator
            Seeded generator on the fluxes' device.

        Returns
        -------
        shapes
            ``disk_frac``, ``disk_hlr_arcsec``, ``disk_q``, ``bulge_hlr_arcsec``,
            ``bulge_q`` and ``position_angle_rad`` (radians in [0, pi)), each of
            the fluxes' shape and dtype.
        """
        config = self.config

        def uniform(low: float, high: float) -> torch.Tensor:
            return _uniform(flux_njy.shape, low, high, generator, flux_njy.device, flux_njy.dtype)

        disk_hlr = self._sample_sizes(flux_njy, generator)
        bulge_hlr = (disk_hlr * uniform(*config.bulge_size_ratio_range)).clamp(min=config.min_hlr_arcsec)
        return {
            "disk_frac": uniform(0.0, 1.0),
            "disk_hlr_arcsec": disk_hlr,
            "disk_q": uniform(*config.disk_q_range),
            "bulge_hlr_arcsec": bulge_hlr,
            "bulge_q": uniform(*config.bulge_q_range),
            "position_angle_rad": uniform(0.0, math.pi),
        }

    def _sample_sizes(self, flux_njy: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Disk half-light radii (arcsec) from a log-normal size-magnitude relation, truncated."""
        config = self.config
        mag = AB_NJY_ZERO_POINT - 2.5 * torch.log10(flux_njy.double())
        log_median = math.log(config.size_median_arcsec) - config.size_mag_slope * math.log(10.0) * (
            mag - config.size_reference_mag
        )
        # Inverse-CDF sampling of a normal truncated to [log min, log max].
        lower = torch.special.ndtr((math.log(config.min_hlr_arcsec) - log_median) / config.size_log_scatter)
        upper = torch.special.ndtr((math.log(config.max_hlr_arcsec) - log_median) / config.size_log_scatter)
        uniform = torch.rand(flux_njy.shape, generator=generator, device=flux_njy.device, dtype=torch.float64)
        probability = (lower + uniform * (upper - lower)).clamp(1e-12, 1 - 1e-12)
        log_size = log_median + config.size_log_scatter * torch.special.ndtri(probability)
        return log_size.exp().clamp(config.min_hlr_arcsec, config.max_hlr_arcsec).to(flux_njy.dtype)
