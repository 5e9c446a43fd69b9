"""Simulated calexp-like images with truth catalogs: prior -> render -> sky -> noise."""

from __future__ import annotations

__all__ = [
    "add_detector_defects",
    "variance_convention",
    "saturated_pixels",
    "ImageSimulator",
    "SimulatedBatch",
    "observe",
]

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..catalog import FullCatalog, TileCatalog
from ..rendering import PointSpreadFunction, catalog_to_render_sources, render_images
from ..runtime import resolve_device
from ..survey import MASK_PLANES, SurveyConditions
from ._config import VARIANCE_CONVENTIONS, PriorConfig, SimulatorConfig
from ._prior import SourcePrior


@dataclasses.dataclass
class SimulatedBatch:
    """A batch of simulated images and their truth.

    Attributes
    ----------
    image
        Pixel values in nJy (background-subtracted unless configured
        otherwise), shape (B, H, W).
    variance
        Per-pixel variance in nJy^2 (sky, source Poisson and read noise),
        shape (B, H, W).
    mask
        Bit mask with the bits of `MASK_PLANES`, shape (B, H, W), int32.
    noiseless
        Noiseless source image in nJy, without sky, shape (B, H, W).
    background_njy
        Sky level per pixel in nJy, shape (B,).
    psf_fwhm_arcsec
        PSF FWHM of each image, shape (B,).
    truth_tiles
        Truth of the sources inside the images, per tile.
    exposure_time_s
        Exposure time of each image, seconds, shape (B,); None where not recorded.
    bands
        Band of each image (length B); None where not recorded.
    variance_conventions
        `VARIANCE_CONVENTIONS` entry of each image's variance plane (length B);
        None where not recorded.
    """

    image: torch.Tensor
    variance: torch.Tensor
    mask: torch.Tensor
    noiseless: torch.Tensor
    background_njy: torch.Tensor
    psf_fwhm_arcsec: torch.Tensor
    truth_tiles: TileCatalog
    exposure_time_s: torch.Tensor | None = None
    bands: tuple[str, ...] | None = None
    variance_conventions: tuple[str, ...] | None = None

    @property
    def truth(self) -> FullCatalog:
        """Truth of the sources inside the images, as per-image lists."""
        return self.truth_tiles.to_full_catalog()


class ImageSimulator:
    """Draws (image, variance, mask, truth) batches on a device.

    Parameters
    ----------
    conditions
        Survey conditions (pixel scale, PSF, sky, calibration).
    prior
        Source prior parameters.
    config
        Simulation settings.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    band_conditions
        Conditions of several bands: each image of `sample` draws its band
        uniformly among them (its sky, zero point and depth, hence the
        prior's faint limit), as one model trained for all of them needs.
        They must share the pixel scale and PSF family of ``conditions``.
        Empty (the default): every image has ``conditions``, and no random
        number is drawn for the band.
    """

    def __init__(
        self,
        conditions: SurveyConditions,
        prior: PriorConfig | None = None,
        config: SimulatorConfig | None = None,
        device: str | torch.device = "auto",
        band_conditions: Sequence[SurveyConditions] = (),
    ) -> None:
        self.conditions = conditions
        self.config = config or SimulatorConfig()
        prior = prior or PriorConfig()
        self.prior = SourcePrior(prior, conditions, self.config.tile_size, self.config.max_sources_per_tile)
        self.device = resolve_device(device)
        for other in band_conditions:
            shared = ("pixel_scale_arcsec", "psf_model", "moffat_beta")
            differing = [name for name in shared if getattr(other, name) != getattr(conditions, name)]
            if differing:
                raise ValueError(
                    f"band {other.band!r} differs from the nominal conditions in {differing}; the bands "
                    "of one simulator must share the pixel scale and PSF family."
                )
        self.band_conditions = tuple(band_conditions) or (conditions,)
        self.band_priors = [
            self.prior
            if band == conditions
            else SourcePrior(prior, band, self.config.tile_size, self.config.max_sources_per_tile)
            for band in self.band_conditions
        ]

    def sample(
        self,
        batch_size: int,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        psf_fwhm_at: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    ) -> SimulatedBatch:
        """Simulate a batch.

        Parameters
        ----------
        batch_size
            Number of images ``B``.
        seed
            Seed for a fresh generator (ignored when ``generator`` is given);
            the same seed gives bit-identical images on the CPU.
        generator
            A generator on this simulator's device, for a stream of batches.
        psf_fwhm_at
            A PSF that varies across the image: ``(x, y) -> FWHM`` (arcsec) at
            pixel positions of shape (n,) in image coordinates, applied to
            every image; each source is rendered with the PSF at its centre.
            ``psf_fwhm_arcsec`` of the batch is then the FWHM at the image
            centre.  Default: one PSF per image, drawn as configured.

        Returns
        -------
        batch
            Images of shape (B, H, W) and their truth.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} is out of range; it must be >= 1.")
        if generator is None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(0 if seed is None else seed)
        config, conditions = self.config, self.conditions
        tile, border = config.tile_size, config.border_tiles
        n_tiles_h = config.image_height // tile + 2 * border
        n_tiles_w = config.image_width // tile + 2 * border
        if len(self.band_conditions) > 1:
            band_index = torch.randint(
                len(self.band_conditions), (batch_size,), generator=generator, device=self.device
            )
            tiles = self._sample_tiles_by_band(band_index, n_tiles_h, n_tiles_w, generator)
        else:
            band_index = torch.zeros(batch_size, dtype=torch.long, device=self.device)
            tiles = self.prior.sample(batch_size, n_tiles_h, n_tiles_w, generator, self.device)
        margin = border * tile
        if psf_fwhm_at is None:
            fwhm = self._sample_psf_fwhm(batch_size, generator)
            noiseless = self.render(tiles.to_full_catalog(), conditions.psf(fwhm.cpu().numpy()))
        else:
            noiseless = self._render_in_psf_field(tiles.to_full_catalog(), psf_fwhm_at, margin)
            centre = psf_fwhm_at(
                np.array([(config.image_width - 1) / 2]), np.array([(config.image_height - 1) / 2])
            )
            fwhm = torch.full((batch_size,), float(centre[0]), device=self.device)
        noiseless = noiseless[:, margin : margin + config.image_height, margin : margin + config.image_width]
        image_conditions, conventions = self._image_conditions(band_index, generator)
        image, variance, mask = self._observe(noiseless, image_conditions, conventions, generator)
        if config.masked_regions_per_image > 0:
            mask = mask | _masked_regions(mask.shape, config.masked_regions_per_image, generator)
        return self._batch(
            image, variance, mask, noiseless, fwhm, tiles.crop(border), image_conditions, conventions
        )

    def _sample_tiles_by_band(
        self, band_index: torch.Tensor, n_tiles_h: int, n_tiles_w: int, generator: torch.Generator
    ) -> TileCatalog:
        """Tile catalogs of images whose bands are ``band_index`` (B,), each from its band's prior."""
        parts, owners = [], []
        for index, prior in enumerate(self.band_priors):
            images = torch.nonzero(band_index == index, as_tuple=True)[0]
            if images.numel():
                parts.append(prior.sample(images.numel(), n_tiles_h, n_tiles_w, generator, self.device))
                owners.append(images)
        # Back to the images' order: part rows are grouped by band.
        order = torch.argsort(torch.cat(owners))
        fields = {name: torch.cat([part.fields[name] for part in parts])[order] for name in parts[0].fields}
        return TileCatalog(
            parts[0].tile_size,
            torch.cat([part.n_sources for part in parts])[order],
            torch.cat([part.locations for part in parts])[order],
            fields,
            sum(part.n_dropped for part in parts),
        )

    def _image_conditions(
        self, band_index: torch.Tensor, generator: torch.Generator
    ) -> tuple[list[SurveyConditions], list[str]]:
        """Each image's conditions (its band's, with its exposure time) and variance convention,
        drawn as configured (no random number where nothing is drawn)."""
        config = self.config
        image_conditions = [self.band_conditions[int(index)] for index in band_index.tolist()]
        if config.exposure_time_range_s is not None:
            low, high = config.exposure_time_range_s
            times = low + (high - low) * torch.rand(
                len(image_conditions), generator=generator, device=self.device, dtype=torch.float64
            )
            image_conditions = [
                item.replace(exposure_time_s=float(time))
                for item, time in zip(image_conditions, times.tolist(), strict=True)
            ]
        conventions = ["full"] * len(image_conditions)
        if config.variance_conventions:
            choice = torch.randint(
                len(config.variance_conventions),
                (len(image_conditions),),
                generator=generator,
                device=self.device,
            )
            conventions = [config.variance_conventions[int(index)] for index in choice.tolist()]
        return image_conditions, conventions

    def _observe(
        self,
        noiseless: torch.Tensor,
        image_conditions: list[SurveyConditions],
        conventions: list[str],
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`observe` of each image under its own conditions and variance convention (the whole batch
        at once where all images share the nominal ones, with the same random numbers as before the
        per-image options)."""
        noise, subtract = self.config.noise, self.config.subtract_background
        if all(item == self.conditions for item in image_conditions) and set(conventions) == {"full"}:
            return observe(noiseless, self.conditions, generator, noise, subtract)
        parts = []
        for index, (item, convention) in enumerate(zip(image_conditions, conventions, strict=True)):
            image, variance, mask = observe(noiseless[index : index + 1], item, generator, noise, subtract)
            parts.append((image, variance_convention(variance, item, convention), mask))
        image, variance, mask = (torch.cat(list(arrays)) for arrays in zip(*parts, strict=True))
        return image, variance, mask

    def _batch(
        self,
        image: torch.Tensor,
        variance: torch.Tensor,
        mask: torch.Tensor,
        noiseless: torch.Tensor,
        fwhm: torch.Tensor,
        truth: TileCatalog,
        image_conditions: list[SurveyConditions],
        conventions: list[str],
    ) -> SimulatedBatch:
        """The batch with each image's sky level, exposure time, band and variance convention."""
        background = torch.tensor(
            [item.sky_level_njy for item in image_conditions], dtype=torch.float32, device=self.device
        )
        exposure = torch.tensor([item.exposure_time_s for item in image_conditions], device=self.device)
        bands = tuple(item.band for item in image_conditions)
        return SimulatedBatch(
            image, variance, mask, noiseless, background, fwhm, truth, exposure, bands, tuple(conventions)
        )

    def simulate_catalog(
        self,
        catalog: FullCatalog,
        generator: torch.Generator,
        psf_fwhm_arcsec: torch.Tensor | None = None,
        variance_convention_name: str = "full",
    ) -> SimulatedBatch:
        """Observe a given catalog (e.g. a controlled test scene) with sky and noise.

        The images have the nominal conditions (``conditions``, its exposure
        time included) whatever the per-image options of the configuration.

        Parameters
        ----------
        catalog
            Sources to render; its image size is the output size (a multiple of the tile size).
        generator
            Random source of the noise (and of the PSF FWHM if drawn).
        psf_fwhm_arcsec
            PSF FWHM per image, shape (B,); default drawn as in `sample`.
        variance_convention_name
            Convention of the variance planes (`variance_convention`).

        Returns
        -------
        batch
            Images of shape (B, H, W); the truth is the catalog (sources beyond
            ``max_sources_per_tile`` in a tile are dropped from the tile truth).
        """
        batch_size = catalog.batch_size
        fwhm = self._sample_psf_fwhm(batch_size, generator) if psf_fwhm_arcsec is None else psf_fwhm_arcsec
        noiseless = self.render(catalog, self.conditions.psf(fwhm.cpu().numpy()))
        image_conditions = [self.conditions] * batch_size
        conventions = [variance_convention_name] * batch_size
        image, variance, mask = self._observe(noiseless, image_conditions, conventions, generator)
        truth = catalog.to_tile_catalog(self.config.tile_size, self.config.max_sources_per_tile)
        return self._batch(
            image, variance, mask, noiseless, fwhm.to(self.device), truth, image_conditions, conventions
        )

    def render(self, catalog: FullCatalog, psf: PointSpreadFunction) -> torch.Tensor:
        """Noiseless images of a catalog, nJy, shape (B, H, W), image ``b`` with PSF ``b``."""
        sources = catalog_to_render_sources(catalog, self.conditions.pixel_scale_arcsec)
        return render_images(
            sources, psf, catalog.batch_size, catalog.height, catalog.width, self.config.max_stamp_half_size
        )

    def _render_in_psf_field(
        self, catalog: FullCatalog, psf_fwhm_at: Callable[[np.ndarray, np.ndarray], np.ndarray], margin: int
    ) -> torch.Tensor:
        """Noiseless images with each source under the PSF at its position (``margin`` pixels of
        border tiles precede the image's own pixels)."""
        sources = catalog_to_render_sources(catalog, self.conditions.pixel_scale_arcsec)
        if len(sources) == 0:
            return torch.zeros(catalog.batch_size, catalog.height, catalog.width, device=self.device)
        fwhm = np.asarray(
            psf_fwhm_at(sources.x.cpu().numpy() - margin, sources.y.cpu().numpy() - margin), dtype=np.float64
        )
        if fwhm.shape != (len(sources),) or not (np.isfinite(fwhm).all() and (fwhm > 0).all()):
            raise ValueError("psf_fwhm_at must return one finite, positive FWHM (arcsec) per position.")
        sources = dataclasses.replace(sources, psf_index=torch.arange(len(sources), device=sources.x.device))
        return render_images(
            sources,
            self.conditions.psf(fwhm),
            catalog.batch_size,
            catalog.height,
            catalog.width,
            self.config.max_stamp_half_size,
        )

    def _sample_psf_fwhm(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        fwhm_range = self.config.psf_fwhm_range_arcsec
        if fwhm_range is None:
            return torch.full((batch_size,), self.conditions.psf_fwhm_arcsec, device=self.device)
        low, high = fwhm_range
        return low + (high - low) * torch.rand(batch_size, generator=generator, device=self.device)


def _masked_regions(shape: torch.Size, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Masks of ``BAD`` columns and ``NO_DATA`` squares (see `SimulatorConfig.masked_regions_per_image`),
    shape (B, H, W), int32."""
    batch, height, width = shape
    device = generator.device
    counts = torch.poisson(torch.full((batch,), rate, device=device), generator=generator).long()
    n_regions = int(counts.sum())
    owner = torch.repeat_interleave(torch.arange(batch, device=device), counts)
    is_column = torch.rand(n_regions, generator=generator, device=device) < 0.5
    side = torch.randint(8, 49, (n_regions,), generator=generator, device=device)
    centre = torch.rand(n_regions, 2, generator=generator, device=device)
    row0 = torch.where(is_column, 0, (centre[:, 0] * height).long() - side // 2)
    row1 = torch.where(is_column, height, row0 + side)
    col0 = (centre[:, 1] * width).long() - torch.where(is_column, 0, side // 2)
    col1 = col0 + torch.where(is_column, 1, side)
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    inside = (
        (rows[None, :, None] >= row0[:, None, None])
        & (rows[None, :, None] < row1[:, None, None])
        & (cols[None, None, :] >= col0[:, None, None])
        & (cols[None, None, :] < col1[:, None, None])
    )
    regions = torch.zeros(shape, dtype=torch.int32, device=device)
    for kind, plane in ((is_column, "BAD"), (~is_column, "NO_DATA")):
        covered = torch.zeros(shape, device=device).index_add_(0, owner[kind], inside[kind].float()) > 0
        regions |= covered.to(torch.int32) << MASK_PLANES[plane]
    return regions


def observe(
    noiseless: torch.Tensor,
    conditions: SurveyConditions,
    generator: torch.Generator,
    noise: str = "poisson",
    subtract_background: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Add sky and noise to noiseless images.

    Parameters
    ----------
    noiseless
        Source light, nJy per pixel, any shape.
    conditions
        Sky level, gain (``njy_to_electrons``), read noise and full well.
    generator
        Seeded generator on the images' device.
    noise
        ``"poisson"`` (photon counts plus Gaussian read noise) or ``"gaussian"``
        (its Gaussian approximation).
    subtract_background
        Whether the returned image has the (known) sky level removed.

    Returns
    -------
    image, variance, mask
        Observed image (nJy), its expected variance (nJy^2) and the bit mask,
        each of the input's shape.  Where the expected charge exceeds the full
        well, and along the columns into which the excess bleeds
        (`saturated_pixels`), the image holds the full well and the mask has
        ``SAT``.
    """
    gain = conditions.njy_to_electrons
    read_variance = conditions.read_noise_e**2
    expected = (noiseless.clamp(min=0) + conditions.sky_level_njy) * gain
    if noise == "poisson":
        counts = torch.poisson(expected, generator=generator)
        if read_variance > 0:
            counts = counts + conditions.read_noise_e * torch.randn(
                counts.shape, generator=generator, device=counts.device
            )
    else:
        normal = torch.randn(expected.shape, generator=generator, device=expected.device)
        counts = expected + torch.sqrt(expected + read_variance) * normal
    image = counts / gain
    if subtract_background:
        image = image - conditions.sky_level_njy
    variance = (expected + read_variance) / gain**2
    saturated = saturated_pixels(expected, conditions.full_well_e)
    full_well_njy = conditions.full_well_e / gain - (conditions.sky_level_njy if subtract_background else 0.0)
    image = torch.where(saturated, torch.full_like(image, full_well_njy), image)
    mask = saturated.to(torch.int32) << MASK_PLANES["SAT"]
    return image, variance, mask


def variance_convention(
    variance: torch.Tensor, conditions: SurveyConditions, convention: str
) -> torch.Tensor:
    """A variance plane as the convention ``convention`` computes it from the expected variance.

    Parameters
    ----------
    variance
        Expected variance of each pixel (sky, source Poisson and read noise) as `observe` gives it,
        nJy^2, any shape.
    conditions
        The image's conditions (sky level, gain, read noise).
    convention
        One of `VARIANCE_CONVENTIONS`.

    Returns
    -------
    variance
        nJy^2, of ``variance``'s shape: itself (``"full"``), the sky and read noise alone
        (``"sky_only"``), or the full variance computed with half or twice the true gain
        (``"gain_x0.5"``: twice the variance; ``"gain_x2"``: half).

    Raises
    ------
    ValueError
        If ``convention`` is not one of `VARIANCE_CONVENTIONS`.
    """
    if convention == "full":
        return variance
    if convention == "sky_only":
        return torch.full_like(variance, conditions.background_noise_njy**2)
    if convention == "gain_x0.5":
        return variance * 2.0
    if convention == "gain_x2":
        return variance * 0.5
    raise ValueError(
        f"variance convention {convention!r} is unknown; choose one of {list(VARIANCE_CONVENTIONS)}."
    )


def saturated_pixels(charge_e: torch.Tensor, full_well_e: float) -> torch.Tensor:
    """Pixels a CCD reads as saturated: those over the full well, and the column pixels the excess
    charge bleeds into.

    The charge above the full well in each column spills evenly up and down
    the column from the saturated run, filling one pixel per full well, as
    in the bleed trails of bright stars on LSST detectors.

    Parameters
    ----------
    charge_e
        Expected charge, electrons, shape (..., H, W).
    full_well_e
        Electrons a pixel holds.

    Returns
    -------
    saturated
        Boolean, shape (..., H, W).
    """
    over = charge_e > full_well_e
    height = charge_e.shape[-2]
    rows = torch.arange(height, device=charge_e.device)[:, None]
    first = torch.where(over, rows, height).amin(dim=-2)
    last = torch.where(over, rows, -1).amax(dim=-2)
    excess_e = (charge_e - full_well_e).clamp(min=0).sum(dim=-2)
    spill = torch.ceil(excess_e / full_well_e / 2).long()
    inside = (rows >= (first - spill)[..., None, :]) & (rows <= (last + spill)[..., None, :])
    return inside & over.any(dim=-2)[..., None, :]


def add_detector_defects(mask: np.ndarray, image: np.ndarray, generator: np.random.Generator) -> None:
    """Add LSST-like detector defects in place.

    Bad columns (one per 512 columns), saturated cores with bleed-like
    extent (13 x 7 pixels, one per 2 Mpix), cosmic rays (3-pixel streaks, one
    per 65,536 pixels), a NO_DATA corner (1/16 of each side, image set to
    NaN) and an 8-pixel EDGE border.

    Parameters
    ----------
    mask
        Integer bit mask with the bits of `MASK_PLANES`, shape (H, W), at
        least 41 x 41 pixels; modified in place.
    image
        Image, shape (H, W), float; modified in place.
    generator
        Source of the defect positions.
    """
    height, width = mask.shape
    for column in generator.choice(width, size=max(1, width // 512), replace=False):
        mask[:, column] |= 1 << MASK_PLANES["BAD"]
    for _ in range(max(1, height * width // 2**21)):
        row, col = generator.integers(20, height - 20), generator.integers(20, width - 20)
        mask[row - 6 : row + 7, col - 3 : col + 4] |= 1 << MASK_PLANES["SAT"]
    for _ in range(height * width // 2**16):
        row, col = generator.integers(0, height - 3), generator.integers(0, width - 3)
        mask[row : row + 3, col : col + 1] |= 1 << MASK_PLANES["CR"]
    mask[: height // 16, : width // 16] |= 1 << MASK_PLANES["NO_DATA"]
    image[: height // 16, : width // 16] = np.nan
    edge = 1 << MASK_PLANES["EDGE"]
    mask[:8, :] |= edge
    mask[-8:, :] |= edge
    mask[:, :8] |= edge
    mask[:, -8:] |= edge
