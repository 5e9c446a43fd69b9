"""Deblending: per-source model stamps, the scene model, flux-conserving deblended images and
measurements on them.

Each detected source is rendered from its posterior point estimate on a stamp sized to the
source: a star with the PSF at its position; a galaxy from its bulge+disk shape convolved with
that PSF (the parametric model) or, with a galaxy autoencoder, by the decoder from the latent
code the autoencoder's encoder infers from the galaxy's stamp with its neighbours' models
subtracted (`refine_galaxy_models`).  Before that, the parametric models of blended sources (whose
footprints touch, `blended_sources`) can be fitted to the image with the encoder's estimates as
the prior's centre (`fit_source_models`), because the encoder's shapes are least accurate where
light overlaps.  The scene model is the sum of the stamps; a source's
deblended image gives it the share of every observed pixel that its model holds of the scene
there, so the deblended images of all sources add up to the observed image wherever the scene
model is positive.  Stars that lose light to masked pixels (a saturated core, a bad column) are
rescaled to the flux that fits their valid pixels (`fit_masked_star_fluxes`) before galaxies are
modelled, so that the rest of their wings is not given to their neighbours.
"""

from __future__ import annotations

__all__ = [
    "DEBLEND_FLAGS",
    "FLUX_FOOTPRINT_NSIGMA",
    "BlendFamilies",
    "DeblendedSources",
    "GalaxyLatents",
    "SourceModels",
    "blend_families",
    "blended_sources",
    "blendedness_abs",
    "deblend_sources",
    "fit_masked_star_fluxes",
    "footprint_touches",
    "measure_deblended",
    "median_noise_njy",
    "model_sources",
    "models_from_parameters",
    "psf_corrected_shapes",
    "refine_galaxy_models",
    "render_source_models",
    "scene_model",
    "source_footprints",
]

import dataclasses
import math

import galsim
import numpy as np
import scipy.ndimage
import torch

from ..catalog import FullCatalog
from ..network import GalaxyAutoencoder, GalaxyLatentPosterior
from ..rendering import (
    STAMP_HALF_SIZES,
    RenderSources,
    catalog_to_render_sources,
    render_stamps,
    stamp_half_size,
)
from ..survey import SurveyConditions
from ._model_fit import ModelFitConfig, fit_source_models

DEBLEND_FLAGS: tuple[str, ...] = (
    "flag_stamp_clipped",
    "flag_moments_failed",
    "flag_no_model",
    "flag_latent_invalid",
    "flag_fit_failed",
)
"""Per-source flags of `measure_deblended`: the stamp reaches beyond the image; adaptive moments
did not converge; the model stamp is empty or not finite (no deblended image); the galaxy
autoencoder's latent or stamp was not finite (the parametric model stands in); the fit of the
blended source's model to the image failed (the encoder's estimate stands in)."""

_FLUX_FOOTPRINT_MIN_SHARE = 0.9
"""Least share of the scene model at a pixel of a flux footprint below the 1-sigma isophote."""
_UNEXPLAINED_NSIGMA = 3.0
"""Largest residual (observed minus scene model, in units of the noise) of such a pixel."""

FLUX_FOOTPRINT_NSIGMA = 0.3
"""Isophote, in units of the noise, down to which `measure_deblended` sums a source's deblended flux
(with the conditions below); the light beyond comes from the model (the wing correction), so an
error in the model's size or profile goes into the flux in proportion to that light. At 1 sigma an
isolated galaxy of ``bliss-bench deblend`` has about a quarter of its light beyond its footprint,
and the encoder's models of faint galaxies, too compact, made the wing correction the largest error
of the isolated galaxies' fluxes (robust scatter 0.053 against 0.030 with the true model's
correction on the same footprint). At 0.3 sigma the wing is smaller and the scatter 0.041-0.044
(three draws of 300 galaxies; 0.2-0.5 sigma were within the draws' noise of it), for a little more
pixel noise (with the true models 0.031 against 0.028). Below the 1-sigma isophote of the pixel
footprint only the pixels that the source dominates (at least 90% of the scene model) and that the
scene model explains (the observed value within 3 sigma of it) count: elsewhere the split rests on
other sources' models or on none, and unmodelled light (the wings of a saturated star the encoder
did not report) would go to the source. Summing the 0.3-sigma isophote everywhere raised the
deblended-flux scatter of sources 8-32 px from r = 13.5 stars from 0.12 to 0.42 in ``bliss-bench
saturation``; with these conditions it is 0.09."""


@dataclasses.dataclass
class SourceModels:
    """Model stamps of the sources of one image.

    Attributes
    ----------
    models
        Model of each source, nJy per pixel, shape (N, S, S) with ``S = 2 h + 1``
        for the largest half-size ``h``; a source's own stamp is the centred
        ``2 h_i + 1`` square (zero outside it), and pixels beyond the image are zero.
    half_size
        Half-size ``h_i`` of each source's own stamp, shape (N,), int64.
    x0, y0
        Image column and row of stamp pixel ``[0, 0]`` of each source, shape (N,), int64
        (pixel ``[h, h]`` is the source's nearest pixel).
    clipped
        The source's own stamp reaches beyond the image, shape (N,), bool.
    fit_failed
        The source's model comes from the encoder's estimate because its fit to the image
        (`fit_source_models`) failed, shape (N,), bool; None when no fit was made.
    parameters
        The catalog (one image, image pixels) the parametric stamps were rendered from, after
        any fit; None when the models were not rendered by `render_source_models`.
    psf_fwhm_pix
        PSF FWHM at each source that the stamps were rendered with, pixels, shape (N,).
    flux_scale
        Factor applied to each parametric stamp after rendering (`fit_masked_star_fluxes`),
        shape (N,), float32; None for none.  With ``parameters`` and ``psf_fwhm_pix`` it lets
        `models_from_parameters` render the same stamps again.
    """

    models: torch.Tensor
    half_size: torch.Tensor
    x0: torch.Tensor
    y0: torch.Tensor
    clipped: torch.Tensor
    fit_failed: torch.Tensor | None = None
    parameters: FullCatalog | None = None
    psf_fwhm_pix: torch.Tensor | None = None
    flux_scale: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.models.shape[0])

    @property
    def stamp_size(self) -> int:
        """Side ``S`` of the stored stamps, pixels."""
        return int(self.models.shape[-1])


def render_source_models(
    catalog: FullCatalog,
    psf_fwhm_pix: torch.Tensor,
    conditions: SurveyConditions,
    height: int,
    width: int,
    max_half_size: int = STAMP_HALF_SIZES[-1],
) -> SourceModels:
    """Render every source of an estimated catalog on its own stamp.

    Parameters
    ----------
    catalog
        Sources of one image (batch of one): positions in image pixels,
        ``flux_njy``, ``is_galaxy`` and the galaxy shape in arcsec.
    psf_fwhm_pix
        PSF FWHM at each source, pixels, shape (N,).
    conditions
        The PSF family (Gaussian or Moffat) and pixel scale.
    height, width
        Image size; stamps are clipped to it.
    max_half_size
        Largest stamp half-size, pixels.

    Returns
    -------
    models
        The model stamps.

    Raises
    ------
    ValueError
        If the catalog holds more than one image or ``psf_fwhm_pix`` does not
        match its sources.
    """
    if catalog.batch_size != 1:
        raise ValueError(f"render_source_models takes a catalog of one image; got {catalog.batch_size}.")
    sources = catalog_to_render_sources(catalog, conditions.pixel_scale_arcsec)
    n_sources = len(sources)
    fwhm = torch.as_tensor(psf_fwhm_pix, dtype=torch.float64).reshape(-1)
    if fwhm.numel() != n_sources or not bool(torch.isfinite(fwhm).all() & (fwhm > 0).all()):
        raise ValueError(f"psf_fwhm_pix needs one finite positive FWHM per source ({n_sources}).")
    if n_sources == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return SourceModels(
            torch.zeros(0, 1, 1),
            empty,
            empty,
            empty,
            torch.zeros(0, dtype=torch.bool),
            parameters=catalog,
            psf_fwhm_pix=fwhm,
        )
    sources = dataclasses.replace(sources, psf_index=torch.arange(n_sources))
    psf = conditions.psf(fwhm.numpy() * conditions.pixel_scale_arcsec)
    half_size = stamp_half_size(sources, psf, max_half_size)
    largest = int(half_size.max())
    size = 2 * largest + 1
    models = torch.zeros(n_sources, size, size)
    for value in torch.unique(half_size).tolist():
        chosen = torch.nonzero(half_size == value).squeeze(1)
        stamps = render_stamps(sources.select(chosen), psf, int(value))
        # Stamps of every size share the centre pixel [largest, largest].
        offset = largest - int(value)
        models[chosen, offset : offset + stamps.shape[-1], offset : offset + stamps.shape[-1]] = (
            stamps.float()
        )
    centre_x, centre_y = torch.round(sources.x).long(), torch.round(sources.y).long()
    x0, y0 = centre_x - largest, centre_y - largest
    own_x0, own_y0 = centre_x - half_size, centre_y - half_size
    clipped = _stamp_clipped(own_x0, own_y0, half_size, height, width)
    models *= _inside_mask(x0, y0, size, height, width)
    return SourceModels(models, half_size, x0, y0, clipped, parameters=catalog, psf_fwhm_pix=fwhm)


@dataclasses.dataclass
class GalaxyLatents:
    """The autoencoder's posterior for each source of an image.

    Attributes
    ----------
    latent_mean, latent_std
        Posterior mean and standard deviation of each galaxy's latent code,
        shape (N, D); NaN for stars and for galaxies without a valid posterior.
    flux_njy
        The autoencoder's posterior median flux, nJy, shape (N,); NaN where
        there is no latent.
    modelled
        The source's model comes from the decoder, shape (N,), bool.
    invalid
        A galaxy whose latent posterior or decoded stamp was not finite; it
        keeps its parametric model, shape (N,), bool.
    """

    latent_mean: torch.Tensor
    latent_std: torch.Tensor
    flux_njy: torch.Tensor
    modelled: torch.Tensor
    invalid: torch.Tensor

    @classmethod
    def empty(cls, n_sources: int, latent_dim: int) -> GalaxyLatents:
        """Latents of ``n_sources`` sources none of which has one."""
        nan = torch.full((n_sources, latent_dim), math.nan)
        no = torch.zeros(n_sources, dtype=torch.bool)
        return cls(nan, nan.clone(), torch.full((n_sources,), math.nan), no, no.clone())


def _galaxy_stamp_inputs(
    sources: RenderSources,
    psf_fwhm_pix: torch.Tensor | np.ndarray,
    models: SourceModels,
    galaxies: torch.Tensor,
    centre: int,
    half: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the autoencoder needs of the galaxies ``galaxies`` (indices, shape (G,)): their sub-pixel
    offsets from the nearest pixel centre (G, 2), their PSF FWHM in pixels (G,), and the corner of
    their autoencoder stamp of half-size ``half`` in the image (columns, rows; (G,) each), for models
    whose stamps are centred on pixel ``centre``."""
    x, y = sources.x.double(), sources.y.double()
    offsets = torch.stack([x - torch.round(x), y - torch.round(y)], dim=1)[galaxies].float()
    fwhm = torch.as_tensor(psf_fwhm_pix, dtype=torch.float32).reshape(-1)[galaxies]
    return offsets, fwhm, models.x0[galaxies] + centre - half, models.y0[galaxies] + centre - half


def _stamp_clipped(
    own_x0: torch.Tensor, own_y0: torch.Tensor, half_size: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Whether each source's own stamp, of side ``2 half_size + 1`` from its corner
    ``(own_x0, own_y0)`` (pixels, shape (N,)), reaches beyond a ``height x width`` image."""
    return (
        (own_x0 < 0) | (own_y0 < 0) | (own_x0 + 2 * half_size >= width) | (own_y0 + 2 * half_size >= height)
    )


def _models_clipped(models: SourceModels, height: int, width: int) -> torch.Tensor:
    """`_stamp_clipped` of each model's own stamp (its ``half_size`` around the stamp's centre)."""
    own_corner = models.stamp_size // 2 - models.half_size
    return _stamp_clipped(models.x0 + own_corner, models.y0 + own_corner, models.half_size, height, width)


def model_sources(
    catalog: FullCatalog,
    psf_fwhm_pix: torch.Tensor,
    conditions: SurveyConditions,
    image: torch.Tensor,
    variance: torch.Tensor,
    valid: torch.Tensor | None = None,
    autoencoder: GalaxyAutoencoder | None = None,
    max_half_size: int = STAMP_HALF_SIZES[-1],
    n_iterations: int = 2,
    fit: ModelFitConfig | None = None,
) -> tuple[SourceModels, GalaxyLatents | None]:
    """Model every source of an image: parametric models, fitted to the image where sources blend,
    then the autoencoder's galaxies.

    Parameters
    ----------
    catalog, psf_fwhm_pix, conditions, max_half_size
        As for `render_source_models`.
    image, variance, valid
        The observed image (nJy), its variance (nJy^2) and usable pixels,
        shape (H, W), that the autoencoder encodes.
    autoencoder
        Galaxy autoencoder; None keeps the parametric galaxy models.
    n_iterations
        Passes of `refine_galaxy_models`.
    fit
        Options of the joint fit (`fit_source_models`) of the blended sources' parametric models,
        those whose footprint (at ``fit.blend_footprint_nsigma``) shares a pixel with another
        source's (`blended_sources`); None keeps the encoder's estimates.

    Returns
    -------
    models, latents
        The source models and, with an autoencoder, its latent posteriors.
    """
    height, width = image.shape
    models = render_source_models(catalog, psf_fwhm_pix, conditions, height, width, max_half_size)
    if fit is not None and len(models):
        blended = blended_sources(models, median_noise_njy(variance, valid), fit.blend_footprint_nsigma)
        catalog, fit_failed = fit_source_models(
            catalog, psf_fwhm_pix, conditions, image, variance, valid, fit, max_half_size, blended
        )
        models = render_source_models(catalog, psf_fwhm_pix, conditions, height, width, max_half_size)
        models = dataclasses.replace(models, fit_failed=fit_failed)
    is_star = ~catalog.fields["is_galaxy"][0, : len(models)].bool()
    models = fit_masked_star_fluxes(models, is_star, image, variance, valid)
    if autoencoder is None:
        return models, None
    return refine_galaxy_models(
        models, catalog, psf_fwhm_pix, image, variance, autoencoder, valid, n_iterations
    )


def median_noise_njy(variance: torch.Tensor, valid: torch.Tensor | None = None) -> float:
    """Median per-pixel noise of the usable pixels (finite positive variance, and ``valid`` (H, W)
    where given), nJy: the root of their (lower) median variance, 1 if there are none.  The noise of
    the footprints' isophotes in `blended_sources` and `measure_deblended`."""
    usable = torch.isfinite(variance) & (variance > 0)
    if valid is not None:
        usable &= valid
    return float(variance[usable].median().sqrt()) if bool(usable.any()) else 1.0


def blended_sources(models: SourceModels, noise_njy: float, footprint_nsigma: float = 1.0) -> torch.Tensor:
    """Sources whose footprint shares a pixel with another source's footprint.

    Parameters
    ----------
    models
        Source models, ``N`` of them.
    noise_njy, footprint_nsigma
        A footprint is where the model exceeds ``footprint_nsigma * noise_njy`` (as in
        `measure_deblended`), and at least the source's centre pixel.

    Returns
    -------
    blended
        Shape (N,), bool.
    """
    if not len(models):
        return torch.zeros(0, dtype=torch.bool)
    # The stamps on a grid that holds all of them (their pixels beyond the image are zero).
    x0, y0 = models.x0 - models.x0.min(), models.y0 - models.y0.min()
    grid_height, grid_width = int(y0.max()) + models.stamp_size, int(x0.max()) + models.stamp_size
    rows, cols = _stamp_index(dataclasses.replace(models, x0=x0, y0=y0), grid_height, grid_width)
    footprint = source_footprints(models, noise_njy, footprint_nsigma)
    counts = torch.zeros(grid_height, grid_width, dtype=torch.int32)
    counts.index_put_((rows[footprint], cols[footprint]), torch.ones(1, dtype=torch.int32), accumulate=True)
    shared = (counts[rows, cols] > 1) & footprint
    return shared.any(dim=(1, 2))


def fit_masked_star_fluxes(
    models: SourceModels,
    is_star: torch.Tensor,
    image: torch.Tensor,
    variance: torch.Tensor,
    valid: torch.Tensor | None = None,
    min_masked_fraction: float = 0.01,
) -> SourceModels:
    """Rescale the models of stars that lose light to masked pixels to the flux their valid pixels fit.

    The encoder sees a star with a saturated core only through its wings, and
    its flux estimate for such a star can be far off; the wings that its
    model misses would then go to its neighbours.  For each star whose model
    puts at least ``min_masked_fraction`` of its light on unusable pixels,
    the flux is the weighted least-squares amplitude of its model (the PSF at
    its position) against the image less every other source's model, over
    the valid pixels of its stamp.

    Parameters
    ----------
    models
        Current source models, ``N`` of them.
    is_star
        Which sources are stars, shape (N,), bool.
    image, variance
        Observed image (nJy) and variance (nJy^2), shape (H, W).
    valid
        Usable pixels, shape (H, W), bool; default: finite with positive variance.
    min_masked_fraction
        Least fraction of a star's model on unusable pixels for its flux to be fitted.

    Returns
    -------
    models
        The models with those stars rescaled (a fit that is not finite or not
        positive leaves the star as it was); the input is not modified.
    """
    if not len(models):
        return models
    height, width = image.shape
    usable = torch.isfinite(image) & torch.isfinite(variance) & (variance > 0)
    if valid is not None:
        usable &= valid
    rows, cols = _stamp_index(models, height, width)
    inside = _inside_mask(models.x0, models.y0, models.stamp_size, height, width).bool()
    stamp_valid = usable[rows, cols] & inside
    own = models.models
    total = own.sum(dim=(1, 2))
    masked_fraction = torch.where(stamp_valid, 0.0, own).sum(dim=(1, 2)) / total.clamp(min=1e-30)
    chosen = is_star.bool() & (total > 0) & (masked_fraction >= min_masked_fraction)
    if not bool(chosen.any()):
        return models
    scene = scene_model(models, height, width)
    weight = torch.where(stamp_valid, 1.0 / variance.float()[rows, cols].clamp(min=1e-30), 0.0)[chosen]
    residual = image.float()[rows, cols][chosen] - (scene[rows, cols][chosen] - own[chosen])
    residual = torch.where(stamp_valid[chosen], residual, 0.0)
    star = own[chosen].double()
    numerator = (weight * star * residual).sum(dim=(1, 2))
    denominator = (weight * star.square()).sum(dim=(1, 2))
    scale = numerator / denominator
    scale = torch.where(torch.isfinite(scale) & (scale > 0), scale, 1.0).float()
    rescaled = own.clone()
    rescaled[chosen] = own[chosen] * scale[:, None, None]
    flux_scale = torch.ones(len(models)) if models.flux_scale is None else models.flux_scale.clone()
    flux_scale[chosen] *= scale
    return dataclasses.replace(models, models=rescaled, flux_scale=flux_scale)


def refine_galaxy_models(
    models: SourceModels,
    catalog: FullCatalog,
    psf_fwhm_pix: torch.Tensor,
    image: torch.Tensor,
    variance: torch.Tensor,
    autoencoder: GalaxyAutoencoder,
    valid: torch.Tensor | None = None,
    n_iterations: int = 2,
    batch_size: int = 256,
    min_stamp_flux_fraction: float = 0.95,
    neighbour_dominance: float = 10.0,
) -> tuple[SourceModels, GalaxyLatents]:
    """Replace the galaxies' models by the autoencoder's renderings.

    Each pass cuts every galaxy's stamp from the image with all other
    sources' current models subtracted, encodes it (latent posterior and
    flux), and renders the galaxy with the decoder at the posterior mean,
    the PSF FWHM and sub-pixel position of the catalog.  Later passes
    subtract the decoded neighbours of the previous one.

    Parameters
    ----------
    models
        Current models (e.g. `render_source_models`) of the catalog's sources.
    catalog
        The sources (one image); ``is_galaxy`` selects the galaxies.
    psf_fwhm_pix
        PSF FWHM at each source, pixels, shape (N,).
    image, variance
        Observed image (nJy) and variance (nJy^2), shape (H, W).
    autoencoder
        The galaxy autoencoder.
    valid
        Usable pixels, shape (H, W), bool; default: finite with positive variance.
    n_iterations
        Number of passes (>= 1).
    batch_size
        Galaxies encoded at once (bounds the memory of the networks' activations).
    min_stamp_flux_fraction
        Least fraction of a galaxy's parametric model inside the autoencoder's
        stamp for the autoencoder to model it.
    neighbour_dominance
        Stamp pixels where the other sources' models exceed this many times
        both the galaxy's current model and the noise are left out of the
        encoding (the autoencoder treats them as masked).

    Returns
    -------
    models
        Stamps at least as large as the autoencoder's; a galaxy's own stamp
        is the autoencoder's, except where its posterior or rendering was
        not finite or its parametric model holds less than
        ``min_stamp_flux_fraction`` of its light within the autoencoder's
        stamp (it keeps its parametric model there).
    latents
        The posteriors.
    """
    if n_iterations < 1:
        raise ValueError(f"n_iterations={n_iterations} is out of range; it must be >= 1.")
    config = autoencoder.config
    n_sources = len(models)
    latents = GalaxyLatents.empty(n_sources, config.latent_dim)
    sources = catalog_to_render_sources(catalog.to("cpu"), 1.0)
    if len(sources) != n_sources:
        raise ValueError(f"The catalog holds {len(sources)} sources but there are {n_sources} models.")
    models = _with_stamp_size(models, max(models.stamp_size, config.stamp_size))
    centre, half = models.stamp_size // 2, config.half_size
    crop = slice(centre - half, centre + half + 1)
    # A galaxy with much light beyond the autoencoder's stamp keeps its parametric model.
    total = models.models.sum(dim=(1, 2))
    within = models.models[:, crop, crop].sum(dim=(1, 2))
    fits = within >= min_stamp_flux_fraction * total
    galaxies = torch.nonzero(sources.is_galaxy & fits).squeeze(1)
    if galaxies.numel() == 0:
        return models, latents
    height, width = image.shape
    usable = torch.isfinite(image) & torch.isfinite(variance) & (variance > 0)
    if valid is not None:
        usable &= valid
    offsets, fwhm, own_x0, own_y0 = _galaxy_stamp_inputs(
        sources, psf_fwhm_pix, models, galaxies, centre, half
    )
    rows, cols, inside = _window_index(own_x0, own_y0, config.stamp_size, height, width)
    stamp_valid = usable[rows, cols] & inside
    stamp_variance = torch.where(stamp_valid, variance.float()[rows, cols], 1.0)
    parametric = models.models[galaxies].clone()
    original_half = models.half_size[galaxies].clone()
    noise = stamp_variance.sqrt()
    for _ in range(n_iterations):
        own_model = models.models[galaxies][:, crop, crop]
        others = scene_model(models, height, width)[rows, cols] - own_model
        # Where a neighbour outshines the galaxy and the noise many times over, the residual of its
        # model (a position or PSF error on a bright star's wings) would swamp the galaxy: not encoded.
        dominated = others > neighbour_dominance * torch.maximum(own_model, noise)
        encoded = stamp_valid & ~dominated
        stamps = torch.where(encoded, image.float()[rows, cols] - others, 0.0)
        posterior, decoded = _encode_and_decode(
            autoencoder, stamps, stamp_variance, encoded, fwhm, offsets, batch_size
        )
        good = posterior.finite() & torch.isfinite(decoded).all(dim=(1, 2))
        own = parametric.clone()
        own[good] = 0.0
        own[good, crop, crop] = decoded[good] * inside[good]
        models.models[galaxies] = own
        models.half_size[galaxies] = torch.where(good, half, original_half)
    latents.latent_mean[galaxies] = torch.where(good[:, None], posterior.latent_mean, math.nan)
    latents.latent_std[galaxies] = torch.where(good[:, None], posterior.latent_std, math.nan)
    latents.flux_njy[galaxies] = torch.where(good, posterior.flux_njy, math.nan)
    latents.modelled[galaxies] = good
    latents.invalid[galaxies] = ~good
    models.clipped = _models_clipped(models, height, width)
    return models, latents


def _encode_and_decode(
    autoencoder: GalaxyAutoencoder,
    stamps: torch.Tensor,
    variances: torch.Tensor,
    valid: torch.Tensor,
    psf_fwhm_pix: torch.Tensor,
    offsets: torch.Tensor,
    batch_size: int,
) -> tuple[GalaxyLatentPosterior, torch.Tensor]:
    """Posteriors and posterior-mean model stamps (nJy, on the CPU) of galaxy stamps, in batches."""
    device = next(autoencoder.parameters()).device
    posteriors, models = [], []
    with torch.no_grad():
        for start in range(0, stamps.shape[0], batch_size):
            chosen = slice(start, start + batch_size)
            fwhm, shift = psf_fwhm_pix[chosen].to(device), offsets[chosen].to(device)
            posterior = autoencoder.encode(
                stamps[chosen].to(device), variances[chosen].to(device), valid[chosen].to(device), fwhm, shift
            )
            unit = autoencoder.decode(posterior.latent_mean, fwhm, shift)
            models.append((unit * posterior.flux_njy[:, None, None]).cpu())
            posteriors.append(posterior)
    merged = GalaxyLatentPosterior(
        *(
            torch.cat([getattr(item, field.name).cpu() for item in posteriors])
            for field in dataclasses.fields(GalaxyLatentPosterior)
        )
    )
    return merged, torch.cat(models)


def _with_stamp_size(models: SourceModels, size: int) -> SourceModels:
    """The same models on (larger or equal) stamps of side ``size``, sharing the centre pixel."""
    if size == models.stamp_size:
        return dataclasses.replace(models, models=models.models.clone(), half_size=models.half_size.clone())
    pad = (size - models.stamp_size) // 2
    stamps = torch.nn.functional.pad(models.models, (pad, pad, pad, pad))
    return dataclasses.replace(
        models, models=stamps, half_size=models.half_size.clone(), x0=models.x0 - pad, y0=models.y0 - pad
    )


def _window_index(
    x0: torch.Tensor, y0: torch.Tensor, size: int, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clamped image row and column of each pixel of ``size``-wide windows at ``(x0, y0)``, and
    whether it falls on the image, each (N, size, size)."""
    offsets = torch.arange(size)
    rows = (y0[:, None] + offsets[None, :])[:, :, None].expand(-1, size, size)
    cols = (x0[:, None] + offsets[None, :])[:, None, :].expand(-1, size, size)
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    return rows.clamp(0, height - 1), cols.clamp(0, width - 1), inside


def _inside_mask(x0: torch.Tensor, y0: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """1 where stamp pixels fall on the image, shape (N, S, S)."""
    offsets = torch.arange(size)
    rows = (y0[:, None] + offsets[None, :])[:, :, None]
    cols = (x0[:, None] + offsets[None, :])[:, None, :]
    return ((rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)).float()


def _stamp_index(models: SourceModels, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clamped image row and column of every stamp pixel, each (N, S, S)."""
    offsets = torch.arange(models.stamp_size)
    rows = (models.y0[:, None] + offsets[None, :]).clamp(0, height - 1)[:, :, None]
    cols = (models.x0[:, None] + offsets[None, :]).clamp(0, width - 1)[:, None, :]
    shape = models.models.shape
    return rows.expand(shape), cols.expand(shape)


def scene_model(models: SourceModels, height: int, width: int) -> torch.Tensor:
    """Sum of the model stamps on the image grid, nJy per pixel, shape (H, W)."""
    scene = torch.zeros(height, width, dtype=torch.float64)
    if len(models):
        rows, cols = _stamp_index(models, height, width)
        # Stamp pixels beyond the image hold zero, so adding them at the clamped border changes nothing.
        scene.index_put_(
            (rows.reshape(-1), cols.reshape(-1)), models.models.double().reshape(-1), accumulate=True
        )
    return scene.float()


@dataclasses.dataclass
class DeblendedSources:
    """Each source's share of the observed image.

    Attributes
    ----------
    images
        Deblended image of each source, nJy per pixel, shape (N, S, S), on the
        stamps of the `SourceModels` (zero where the source's model is).
    variances
        The matching share of the variance (the pixel variance scaled by the
        square of the share), nJy^2, shape (N, S, S).
    models
        The model stamps they come from.
    valid
        Whether each stamp pixel was a valid observed pixel, shape (N, S, S).
    shares
        Each source's model over the scene model at each stamp pixel, in [0, 1], shape (N, S, S);
        None for sources drawn alone (a share of 1 wherever the model is positive).
    """

    images: torch.Tensor
    variances: torch.Tensor
    models: SourceModels
    valid: torch.Tensor
    shares: torch.Tensor | None = None


def deblend_sources(
    image: torch.Tensor, variance: torch.Tensor, models: SourceModels, valid: torch.Tensor | None = None
) -> DeblendedSources:
    """Split an image among its sources in proportion to their models.

    Parameters
    ----------
    image, variance
        Observed image (nJy) and variance (nJy^2), shape (H, W).
    models
        Source models on the same image.
    valid
        Pixels that hold usable data, shape (H, W), bool; masked pixels
        (saturated, cosmic rays, ...) get no share, and measurements rely on
        the model there.  Default: every pixel with a finite value and a
        positive variance.

    Returns
    -------
    deblended
        Per-source images; their sum over sources equals the image wherever
        the scene model is positive.
    """
    height, width = image.shape
    usable = torch.isfinite(image) & torch.isfinite(variance) & (variance > 0)
    if valid is not None:
        usable &= valid
    scene = scene_model(models, height, width)
    if not len(models):
        empty = models.models.clone()
        return DeblendedSources(empty, empty.clone(), models, empty.bool(), empty.clone())
    rows, cols = _stamp_index(models, height, width)
    inside = _inside_mask(models.x0, models.y0, models.stamp_size, height, width).bool()
    stamp_valid = usable[rows, cols] & inside
    observed = torch.where(stamp_valid, image.float()[rows, cols], 0.0)
    pixel_variance = torch.where(stamp_valid, variance.float()[rows, cols], 0.0)
    total = scene[rows, cols]
    share = torch.where(total > 0, models.models.clamp(min=0) / total.clamp(min=1e-30), 0.0)
    return DeblendedSources(share * observed, share.square() * pixel_variance, models, stamp_valid, share)


def _model_filled_images(deblended: DeblendedSources) -> np.ndarray:
    """Each source's deblended image with its own model in the masked pixels, nJy, shape (N, S, S).

    GalSim's HSM either reads a masked pixel's value or, given a mask, leaves the pixel out of its
    moment sums, which for a galaxy is the same as zero light there: a bad column through a
    galaxy's core biases its shape by more than the pixel noise of a galaxy at SNR 20.  The model
    is the source's expected light in those pixels, as the fluxes rely on it where pixels are
    masked.
    """
    return np.where(
        deblended.valid.numpy(), deblended.images.double().numpy(), deblended.models.models.double().numpy()
    )


def measure_deblended(
    deblended: DeblendedSources,
    noise_njy: float,
    footprint_nsigma: float = FLUX_FOOTPRINT_NSIGMA,
    latents: GalaxyLatents | None = None,
) -> dict[str, np.ndarray]:
    """Flux and adaptive-moment shape of each deblended image.

    Parameters
    ----------
    deblended
        Output of `deblend_sources`.
    noise_njy
        Typical per-pixel noise of the image, nJy; a source's flux footprint is
        where its model exceeds ``footprint_nsigma`` times it (at least the
        pixel at its centre); below the 1-sigma isophote, only where the source
        dominates the scene model and the scene model explains the pixel (see
        `FLUX_FOOTPRINT_NSIGMA`).
    footprint_nsigma
        Isophote of the flux footprint in units of the noise (`FLUX_FOOTPRINT_NSIGMA`: lower
        than the 1-sigma footprints of `source_footprints`' default, so that less of the flux
        comes from the model's wings).
    latents
        The autoencoder's posteriors, for ``flag_latent_invalid``.

    Returns
    -------
    measurements
        ``flux_njy`` and ``flux_err_njy`` (deblended flux in the valid
        pixels of the footprint, scaled by the model's total over its flux
        there, and its standard deviation; nJy; NaN when the footprint holds no
        valid pixel), ``e1``, ``e2`` (distortion
        ``(a^2 - b^2) / (a^2 + b^2)`` of the adaptive moments, axes of the
        image grid; masked pixels hold the source's model, as for
        `psf_corrected_shapes`), ``sigma_pix`` (adaptive-moment size
        ``det(M)^(1/4)``, pixels), ``ixx``, ``iyy``, ``ixy`` (the adaptive
        moment matrix ``M``, pixels^2), each shape (N,), NaN where undefined, and
        the `DEBLEND_FLAGS` (bool, shape (N,)).
    """
    if not footprint_nsigma > 0:
        raise ValueError(f"footprint_nsigma={footprint_nsigma} must be positive.")
    models = deblended.models
    n_sources = len(models)
    results = {
        name: np.full(n_sources, np.nan)
        for name in ("flux_njy", "flux_err_njy", "e1", "e2", "sigma_pix", "ixx", "iyy", "ixy")
    }
    flags = {name: np.zeros(n_sources, dtype=bool) for name in DEBLEND_FLAGS}
    flags["flag_stamp_clipped"] = models.clipped.numpy().copy()
    if latents is not None:
        flags["flag_latent_invalid"] = latents.invalid.numpy().copy()
    if models.fit_failed is not None:
        flags["flag_fit_failed"] = models.fit_failed.numpy().copy()
    if n_sources == 0:
        return {**results, **flags}
    centre = models.stamp_size // 2
    footprint = source_footprints(models, noise_njy, footprint_nsigma)
    if footprint_nsigma < 1.0 and deblended.shares is not None:
        # Below the pixel footprint only where the source dominates the scene model and the scene
        # model explains the pixel (see FLUX_FOOTPRINT_NSIGMA). The deblended image minus the model
        # is the share times the pixel's residual, and its standard deviation the share times the
        # pixel's: the ratio is the residual in units of the noise.
        explained = (
            deblended.images - models.models
        ).abs() <= _UNEXPLAINED_NSIGMA * deblended.variances.sqrt()
        footprint &= source_footprints(models, noise_njy) | (
            (deblended.shares >= _FLUX_FOOTPRINT_MIN_SHARE) & explained
        )
    # Masked pixels carry no data: the model's fraction over the valid footprint corrects for them.
    footprint &= deblended.valid
    usable = torch.isfinite(models.models).all(dim=(1, 2)) & (models.models.sum(dim=(1, 2)) > 0)
    flags["flag_no_model"] = ~usable.numpy()
    # The footprint misses the model's faint wings; correct by the model's own fraction inside it.
    model_total = models.models.sum(dim=(1, 2))
    correction = model_total / (models.models * footprint).sum(dim=(1, 2)).clamp(min=1e-30)
    flux = (deblended.images * footprint).sum(dim=(1, 2)) * correction
    flux_err = (deblended.variances * footprint).sum(dim=(1, 2)).sqrt() * correction
    undefined = flags["flag_no_model"] | ~footprint.any(dim=(1, 2)).numpy()
    results["flux_njy"] = np.where(undefined, np.nan, flux.double().numpy())
    results["flux_err_njy"] = np.where(undefined, np.nan, flux_err.double().numpy())
    images = _model_filled_images(deblended)
    for index in range(n_sources):
        if flags["flag_no_model"][index]:
            flags["flag_moments_failed"][index] = True
            continue
        size = 2 * int(models.half_size[index]) + 1
        offset = centre - int(models.half_size[index])
        stamp = galsim.Image(
            np.ascontiguousarray(images[index, offset : offset + size, offset : offset + size])
        )
        moments = galsim.hsm.FindAdaptiveMom(stamp, strict=False)
        if moments.moments_status != 0 or not math.isfinite(moments.moments_sigma):
            flags["flag_moments_failed"][index] = True
            continue
        e1, e2, sigma = moments.observed_shape.e1, moments.observed_shape.e2, moments.moments_sigma
        results["e1"][index], results["e2"][index], results["sigma_pix"][index] = e1, e2, sigma
        # The moment matrix of distortion (e1, e2) and determinant sigma^4.
        scale = sigma**2 / math.sqrt(max(1.0 - e1 * e1 - e2 * e2, 1e-12))
        results["ixx"][index] = scale * (1.0 + e1)
        results["iyy"][index] = scale * (1.0 - e1)
        results["ixy"][index] = scale * e2
    return {**results, **flags}


def source_footprints(models: SourceModels, noise_njy: float, footprint_nsigma: float = 1.0) -> torch.Tensor:
    """Each source's footprint on its stamp: where its model exceeds ``footprint_nsigma * noise_njy``,
    and always its centre pixel.

    Returns
    -------
    footprints
        Shape (N, S, S), bool, on the stamps of ``models`` (pixels beyond the image included
        only where a model is positive there, which it never is).
    """
    footprint = models.models > footprint_nsigma * noise_njy
    centre = models.stamp_size // 2
    footprint[:, centre, centre] = True
    return footprint


def footprint_touches(
    models: SourceModels, footprints: torch.Tensor, pixels: torch.Tensor | np.ndarray
) -> torch.Tensor:
    """Whether each source's footprint holds a pixel of a boolean pixel map (e.g. a mask plane).

    Parameters
    ----------
    models
        Source models, ``N`` of them, on an image of shape (H, W).
    footprints
        Footprint of each source on its stamp, shape (N, S, S), bool (`source_footprints`,
        or any other selection of stamp pixels).
    pixels
        The map, shape (H, W), bool.

    Returns
    -------
    touches
        Shape (N,), bool; stamp pixels beyond the image never count.
    """
    pixels = torch.as_tensor(np.asarray(pixels, dtype=bool))
    if not len(models):
        return torch.zeros(0, dtype=torch.bool)
    height, width = pixels.shape
    rows, cols = _stamp_index(models, height, width)
    inside = _inside_mask(models.x0, models.y0, models.stamp_size, height, width).bool()
    return (pixels[rows, cols] & footprints & inside).any(dim=(1, 2))


@dataclasses.dataclass
class BlendFamilies:
    """Groups of sources whose footprints form one connected region of the image.

    Attributes
    ----------
    family
        Index of each source's family, shape (N,), int64; -1 for a source alone in its region.
    n_families
        Number of families (regions holding two or more sources).
    labels
        Family index + 1 of every image pixel that lies in a family's region, 0 elsewhere,
        shape (H, W), int64.
    """

    family: np.ndarray
    n_families: int
    labels: np.ndarray


def blend_families(models: SourceModels, footprints: torch.Tensor, height: int, width: int) -> BlendFamilies:
    """Blend families as Rubin's deblender makes them: the sources whose footprints join.

    The union of all footprints is split into its 4-connected regions; a region holding the
    centre pixels of two or more sources is a family (a parent and its children), a source alone
    in its region is isolated.

    Parameters
    ----------
    models
        Source models on an image of shape (``height``, ``width``).
    footprints
        Footprint of each source on its stamp, shape (N, S, S), bool (`source_footprints`).
    height, width
        Image size, pixels.

    Returns
    -------
    families
        The families.
    """
    union = torch.zeros(height, width, dtype=torch.bool)
    n_sources = len(models)
    if n_sources:
        rows, cols = _stamp_index(models, height, width)
        inside = _inside_mask(models.x0, models.y0, models.stamp_size, height, width).bool()
        chosen = footprints & inside
        union[rows[chosen], cols[chosen]] = True
    regions, _ = scipy.ndimage.label(union.numpy())
    centre = models.stamp_size // 2
    centre_rows = (models.y0 + centre).clamp(0, height - 1).numpy()
    centre_cols = (models.x0 + centre).clamp(0, width - 1).numpy()
    region = regions[centre_rows, centre_cols] if n_sources else np.zeros(0, dtype=np.int64)
    counts = np.bincount(region, minlength=int(regions.max()) + 1)
    shared = counts >= 2
    shared[0] = False
    family_of_region = np.full(counts.size, -1, dtype=np.int64)
    family_of_region[shared] = np.arange(int(shared.sum()))
    labels = family_of_region[regions] + 1
    return BlendFamilies(family_of_region[region], int(shared.sum()), labels)


def blendedness_abs(models: SourceModels, height: int, width: int) -> np.ndarray:
    """Rubin's absolute blendedness of each source, from the models.

    ``1 - <m_i, m_i> / <m_i, |S|>`` with ``m_i`` the source's model and ``S`` the scene model
    (all sources) over the source's stamp: 0 for an isolated source, towards 1 for a source that
    its neighbours outshine.  Rubin measures it on the noisy image; BLISS uses its noise-free models.

    Returns
    -------
    blendedness
        Shape (N,), NaN where the model is empty.
    """
    if not len(models):
        return np.zeros(0)
    scene = scene_model(models, height, width).double()
    rows, cols = _stamp_index(models, height, width)
    own = models.models.double().abs()
    with_neighbours = (own * scene[rows, cols].abs()).sum(dim=(1, 2))
    alone = own.square().sum(dim=(1, 2))
    value = 1.0 - alone / with_neighbours
    return torch.where(with_neighbours > 0, value, math.nan).clamp(min=0.0).numpy()


def psf_corrected_shapes(
    deblended: DeblendedSources, psf_images: np.ndarray, sky_variance_njy2: float
) -> dict[str, np.ndarray]:
    """PSF-corrected ellipticities of the deblended images (GalSim HSM, re-Gaussianization).

    Parameters
    ----------
    deblended
        Output of `deblend_sources`; each source is measured on its own ``2 h + 1`` stamp, its
        masked pixels holding its own model.
    psf_images
        PSF image at each source (centred, unit sum, pixels of the image), shape (N, P, P).
    sky_variance_njy2
        Typical per-pixel variance of the image, nJy^2 (for the uncertainty).

    Returns
    -------
    shapes
        ``e1``, ``e2`` (distortions ``(a^2 - b^2) / (a^2 + b^2)`` of the PSF-corrected shape,
        axes of the image grid), ``sigma`` (their per-component uncertainty), ``resolution``
        (the resolution factor ``R2 = 1 - T_psf / T_gal`` of the re-Gaussianized image, 0 for an
        unresolved source and 1 for one much larger than the PSF) and ``flag`` (the correction
        failed, a value is not finite or the resolution is outside [0, 1]; the values are NaN
        then), shape (N,).

    Notes
    -----
    For a galaxy of one elliptical profile, ``e1, e2`` estimate the distortion
    ``(1 - q^2) / (1 + q^2)`` of its pre-PSF isophotes; its accuracy falls as the resolution
    falls (weak-lensing catalogs commonly keep ``resolution >= 0.3``).  A galaxy whose bulge
    and disk differ in axis ratio has no single pre-PSF ellipticity: re-Gaussianization
    weights its light on the scale of the PSF-convolved image, so the measured shape leans
    towards the outer component as the PSF grows.

    GalSim's HSM takes a weight image only as a mask, and leaves masked pixels out of its moment
    sums, which for a galaxy is the same as zero light there: a bad column through a galaxy's core
    biases its shape by more than the pixel noise of a galaxy at SNR 20 does.  Each masked pixel of
    the stamp therefore holds the source's model, its expected light there, as the fluxes of
    `measure_deblended` rely on the model where pixels are masked.  Stamp pixels beyond the image
    stay zero, as the model does there.
    """
    models = deblended.models
    n_sources = len(models)
    if psf_images.shape[0] != n_sources:
        raise ValueError(f"{psf_images.shape[0]} PSF images for {n_sources} sources.")
    shapes = {name: np.full(n_sources, np.nan) for name in ("e1", "e2", "sigma", "resolution")}
    shapes["flag"] = np.ones(n_sources, dtype=bool)
    centre = models.stamp_size // 2
    images = _model_filled_images(deblended)
    weights = deblended.valid.numpy()
    for index in range(n_sources):
        size = 2 * int(models.half_size[index]) + 1
        own = slice(centre - size // 2, centre + size // 2 + 1)
        valid = weights[index, own, own]
        if not valid.any():  # every pixel of the stamp masked: nothing to measure (flagged)
            continue
        galaxy = galsim.Image(np.ascontiguousarray(images[index, own, own]))
        psf = galsim.Image(np.ascontiguousarray(psf_images[index], dtype=np.float64))
        try:
            result = galsim.hsm.EstimateShear(
                galaxy, psf, sky_var=sky_variance_njy2, shear_est="REGAUSS", strict=False
            )
        except galsim.errors.GalSimHSMError:
            # strict=False reports failures of the measurement itself; GalSim still raises for inputs
            # it refuses outright, which are failures of this source's shape, not of the table.
            continue
        values = (result.corrected_e1, result.corrected_e2, result.corrected_shape_err)
        resolution = result.resolution_factor
        if (
            result.correction_status != 0
            or result.error_message
            or not np.isfinite(values).all()
            # A resolution outside [0, 1] means a source smaller than the PSF: its correction
            # divides by a meaningless factor.
            or not 0.0 <= resolution <= 1.0
        ):
            continue
        shapes["e1"][index], shapes["e2"][index], shapes["sigma"][index] = values
        shapes["resolution"][index] = resolution
        shapes["flag"][index] = False
    return shapes


def models_from_parameters(
    parameters: FullCatalog,
    psf_fwhm_pix: torch.Tensor,
    conditions: SurveyConditions,
    height: int,
    width: int,
    max_half_size: int = STAMP_HALF_SIZES[-1],
    flux_scale: torch.Tensor | None = None,
    latents: GalaxyLatents | None = None,
    autoencoder: GalaxyAutoencoder | None = None,
) -> SourceModels:
    """Render the model stamps of `model_sources` again from their stored parameters.

    Parameters
    ----------
    parameters, psf_fwhm_pix, flux_scale
        `SourceModels.parameters`, `SourceModels.psf_fwhm_pix` and `SourceModels.flux_scale` of
        the original models.
    conditions, height, width, max_half_size
        As for `render_source_models`.
    latents
        The autoencoder's posteriors, where it modelled galaxies (``modelled``).
    autoencoder
        The autoencoder that modelled them; needed when ``latents`` says it modelled any.

    Returns
    -------
    models
        The same stamps as the original, within float32 rounding.

    Raises
    ------
    ValueError
        If ``latents`` has autoencoder models but ``autoencoder`` is None.
    """
    models = render_source_models(parameters, psf_fwhm_pix, conditions, height, width, max_half_size)
    if flux_scale is not None:
        models.models *= flux_scale.float()[:, None, None]
        models.flux_scale = flux_scale.float().clone()
    if latents is None or not bool(latents.modelled.any()):
        return models
    if autoencoder is None:
        raise ValueError(
            f"{int(latents.modelled.sum())} galaxies were modelled by the galaxy autoencoder; "
            "rendering them needs the autoencoder of the model package that made them."
        )
    config = autoencoder.config
    models = _with_stamp_size(models, max(models.stamp_size, config.stamp_size))
    centre, half = models.stamp_size // 2, config.half_size
    crop = slice(centre - half, centre + half + 1)
    galaxies = torch.nonzero(latents.modelled).squeeze(1)
    sources = catalog_to_render_sources(parameters.to("cpu"), 1.0)
    offsets, fwhm, own_x0, own_y0 = _galaxy_stamp_inputs(
        sources, psf_fwhm_pix, models, galaxies, centre, half
    )
    _, _, inside = _window_index(own_x0, own_y0, config.stamp_size, height, width)
    device = next(autoencoder.parameters()).device
    decoded = []
    with torch.no_grad():
        for start in range(0, galaxies.numel(), 256):
            chosen = slice(start, start + 256)
            unit = autoencoder.decode(
                latents.latent_mean[galaxies][chosen].float().to(device),
                fwhm[chosen].to(device),
                offsets[chosen].to(device),
            )
            decoded.append(
                (unit * latents.flux_njy[galaxies][chosen].float().to(device)[:, None, None]).cpu()
            )
    own = torch.zeros(galaxies.numel(), models.stamp_size, models.stamp_size)
    own[:, crop, crop] = torch.cat(decoded) * inside
    models.models[galaxies] = own
    models.half_size[galaxies] = half
    models.clipped = _models_clipped(models, height, width)
    return models
