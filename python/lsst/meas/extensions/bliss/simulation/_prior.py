"""The prior over light sources: counts, types, fluxes and galaxy shapes."""

from __future__ import annotations

__all__ = ["SourcePrior", "sample_truncated_pareto"]

import math

import torch

from ..catalog import TileCatalog
from ..rendering import MAX_KNOT_SEED
from ..survey import AB_NJY_ZERO_POINT, SurveyConditions, mag_to_flux_njy
from ._config import PriorConfig


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
    bulge+disk shape with a size-magnitude relation and, as configured, a
    compact population, Gaussian disk ellipticities and star-forming knots
    (whose parameters the truth catalog carries as `KNOT_FIELDS`).

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
        for name in tuple(fields):
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
            the fluxes' shape and dtype; with ``knot_galaxy_fraction > 0`` also
            the `KNOT_FIELDS` (zero for galaxies without knots).
        """
        config = self.config

        def uniform(low: float, high: float) -> torch.Tensor:
            return _uniform(flux_njy.shape, low, high, generator, flux_njy.device, flux_njy.dtype)

        disk_hlr = self._sample_sizes(flux_njy, generator)
        bulge_hlr = (disk_hlr * uniform(*config.bulge_size_ratio_range)).clamp(min=config.min_hlr_arcsec)
        disk_frac = uniform(0.0, 1.0)
        if config.disk_ellipticity_sigma > 0:
            disk_q = self._disk_axis_ratio(uniform(0.0, 1.0))
        else:
            disk_q = uniform(*config.disk_q_range)
        shapes = {
            "disk_frac": disk_frac,
            "disk_hlr_arcsec": disk_hlr,
            "disk_q": disk_q,
            "bulge_hlr_arcsec": bulge_hlr,
            "bulge_q": uniform(*config.bulge_q_range),
            "position_angle_rad": uniform(0.0, math.pi),
        }
        if config.knot_galaxy_fraction > 0:
            shapes.update(self._sample_knots(disk_frac, generator))
        return shapes

    def _disk_axis_ratio(self, uniform: torch.Tensor) -> torch.Tensor:
        """Axis ratios whose ellipticity ``|g| = (1 - q) / (1 + q)`` is Rayleigh-distributed (a 2-d
        Gaussian ``g`` of dispersion ``disk_ellipticity_sigma`` per component), truncated to
        ``disk_q_range``: ``uniform`` (in [0, 1)) through the truncated quantile function."""
        config = self.config
        q_low, q_high = config.disk_q_range
        two_sigma_sq = 2.0 * config.disk_ellipticity_sigma**2
        g_low, g_high = (1.0 - q_high) / (1.0 + q_high), (1.0 - q_low) / (1.0 + q_low)
        cdf_low, cdf_high = (-math.expm1(-(g**2) / two_sigma_sq) for g in (g_low, g_high))
        probability = cdf_low + uniform.double() * (cdf_high - cdf_low)
        g = torch.sqrt(-two_sigma_sq * torch.log1p(-probability)).clamp(g_low, g_high)
        return ((1.0 - g) / (1.0 + g)).to(uniform.dtype)

    def _sample_knots(self, disk_frac: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The `KNOT_FIELDS` of galaxies (see ``knot_*`` in `PriorConfig`); zero where a galaxy has
        no knots (including pure bulges)."""
        config = self.config
        shape, device, dtype = disk_frac.shape, disk_frac.device, disk_frac.dtype

        def uniform(low: float, high: float) -> torch.Tensor:
            return _uniform(shape, low, high, generator, device, dtype)

        has_knots = (torch.rand(shape, generator=generator, device=device) < config.knot_galaxy_fraction) & (
            disk_frac > 0
        )
        fraction = uniform(*config.knot_flux_fraction_range)
        low, high = config.knot_count_range
        count = torch.randint(low, high + 1, shape, generator=generator, device=device).to(dtype)
        seed = torch.randint(0, MAX_KNOT_SEED, shape, generator=generator, device=device).to(dtype)
        irregular = torch.rand(shape, generator=generator, device=device) < config.knot_offset_fraction
        offset = torch.where(irregular, uniform(*config.knot_offset_hlr_range), 0.0)
        zero = torch.zeros_like(fraction)
        return {
            "knot_frac": torch.where(has_knots, fraction, zero),
            "knot_count": torch.where(has_knots, count, zero),
            "knot_seed": torch.where(has_knots, seed, zero),
            "knot_offset_hlr": torch.where(has_knots, offset, zero),
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
        if config.compact_fraction > 0:
            compact = torch.rand(flux_njy.shape, generator=generator, device=flux_njy.device)
            compact = compact < config.compact_fraction
            log_low = math.log(config.min_hlr_arcsec)
            log_high = math.log(min(config.compact_max_hlr_arcsec, config.max_hlr_arcsec))
            log_compact = _uniform(
                flux_njy.shape, log_low, log_high, generator, flux_njy.device, torch.float64
            )
            log_size = torch.where(compact, log_compact, log_size)
        return log_size.exp().clamp(config.min_hlr_arcsec, config.max_hlr_arcsec).to(flux_njy.dtype)
