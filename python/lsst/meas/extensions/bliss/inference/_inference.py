"""From images to probabilistic catalogs with a trained encoder (whole images).

`estimate_catalog` gives one catalog of point estimates with uncertainties
(detections where the detection probability exceeds a threshold);
`sample_catalogs` gives posterior catalog samples through the checkerboard.
Images of any size are padded with invalid pixels to whole tiles.
"""

from __future__ import annotations

__all__ = [
    "ESTIMATE_FIELDS",
    "estimate_catalog",
    "posterior_to_catalog",
    "posterior_to_tile_catalog",
    "run_encoder",
    "sample_catalogs",
]

import contextlib
import math
from collections.abc import Iterator

import torch

from ..catalog import SOURCE_FIELDS, FullCatalog, TileCatalog, empty_source_fields
from ..network import (
    BlissEncoder,
    LocationFactor,
    LogNormalFactor,
    NetworkInputs,
    TilePosterior,
    TileRandomness,
    prepare_inputs,
)

ESTIMATE_FIELDS: tuple[str, ...] = (
    "detection_prob",
    "galaxy_prob",
    "flux_err_njy",
    "flux_q16_njy",
    "flux_q84_njy",
    "x_err",
    "y_err",
)
"""Fields of an estimated catalog beyond `SOURCE_FIELDS`.

``detection_prob``: posterior probability that the tile holds a source;
``galaxy_prob``: probability that it is a galaxy; ``flux_err_njy``: standard
deviation of the log-normal flux posterior; ``flux_q16_njy``/``flux_q84_njy``:
its 16% and 84% quantiles; ``x_err``/``y_err``: position standard deviations
in pixels (half the central 68% interval of the truncated-normal posterior)."""


def _pad_to_tiles(tensor: torch.Tensor, tile_size: int, value: float) -> torch.Tensor:
    height, width = tensor.shape[-2:]
    pad_h, pad_w = -height % tile_size, -width % tile_size
    if pad_h == 0 and pad_w == 0:
        return tensor
    return torch.nn.functional.pad(tensor, (0, pad_w, 0, pad_h), value=value)


def run_encoder(
    encoder: BlissEncoder,
    image: torch.Tensor,
    variance: torch.Tensor,
    mask: torch.Tensor | None,
    psf_fwhm_pix: torch.Tensor | float,
    randomness: TileRandomness | None = None,
    backbone_dtype: torch.dtype = torch.float32,
) -> TilePosterior:
    """Normalize images (padding them to whole tiles) and run the encoder.

    Parameters
    ----------
    encoder
        Trained encoder.
    image, variance
        nJy and nJy^2, shape (B, H, W).
    mask
        Bit mask (B, H, W) or None.
    psf_fwhm_pix
        PSF FWHM in pixels, scalar or (B,).
    randomness
        See `BlissEncoder.posterior` (None: modes).
    backbone_dtype
        Arithmetic of the backbone (see `BlissEncoder.features`).

    Returns
    -------
    posterior
        Per-tile parameters and decided values on the padded tile grid.

    Raises
    ------
    ValueError
        If the shapes of image, variance and mask differ.
    """
    inputs = _normalized_inputs(encoder, image, variance, mask, psf_fwhm_pix)
    with evaluation_mode(encoder), torch.no_grad():
        encoded = encoder.encode(inputs, backbone_dtype)
        return encoder.posterior(inputs, randomness=randomness, encoded=encoded)


@contextlib.contextmanager
def evaluation_mode(encoder: BlissEncoder) -> Iterator[None]:
    was_training = encoder.training
    encoder.eval()
    try:
        yield
    finally:
        encoder.train(was_training)


def _normalized_inputs(
    encoder: BlissEncoder,
    image: torch.Tensor,
    variance: torch.Tensor,
    mask: torch.Tensor | None,
    psf_fwhm_pix: torch.Tensor | float,
    invalid_bits: int | None = None,
) -> NetworkInputs:
    """`prepare_inputs` of images padded with invalid pixels to whole tiles (`padded_to_tiles`)."""
    return prepare_inputs(
        *padded_to_tiles(encoder, image, variance, mask, psf_fwhm_pix),
        invalid_bits,
        input_noise=encoder.config.input_noise,
    )


def padded_to_tiles(
    encoder: BlissEncoder,
    image: torch.Tensor,
    variance: torch.Tensor,
    mask: torch.Tensor | None,
    psf_fwhm_pix: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | float]:
    """Images (B, H, W) padded with invalid pixels to whole tiles; a per-pixel PSF FWHM map (B, H, W)
    is extended with its edge values (the arrays themselves where no padding is needed)."""
    tile = encoder.config.tile_size
    if image.ndim != 3 or min(image.shape[-2:]) < tile:
        raise ValueError(
            f"Image of shape {tuple(image.shape)} is not a batch (B, H, W) of images at least one tile "
            f"({tile} pixels) on a side; the network needs at least that (beyond the image edges it sees "
            "invalid pixels)."
        )
    if variance.shape != image.shape:
        raise ValueError(
            f"image and variance shapes differ: image {tuple(image.shape)}, variance {tuple(variance.shape)}."
        )
    image = _pad_to_tiles(image, tile, 0.0)
    variance = _pad_to_tiles(variance, tile, math.nan)
    mask = None if mask is None else _pad_to_tiles(mask, tile, 0)
    if isinstance(psf_fwhm_pix, torch.Tensor) and psf_fwhm_pix.ndim == 3:
        pad_h, pad_w = image.shape[-2] - psf_fwhm_pix.shape[-2], image.shape[-1] - psf_fwhm_pix.shape[-1]
        if pad_h or pad_w:  # a padding of zero still copies
            padded = torch.nn.functional.pad(psf_fwhm_pix[:, None], (0, pad_w, 0, pad_h), mode="replicate")
            psf_fwhm_pix = padded[:, 0]
    return image, variance, mask, psf_fwhm_pix


def _capped(value: torch.Tensor) -> torch.Tensor:
    """``value`` with overflows (+-inf) replaced by the largest finite value of its dtype; NaN stays NaN."""
    largest = torch.finfo(value.dtype).max
    return value.clamp(min=-largest, max=largest)


def _log_normal_flux_summaries(
    mean: torch.Tensor, sigma: torch.Tensor, scale: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Standard deviation and 16th/84th percentiles of a log-normal flux posterior, finite for any
    finite parameters.

    Parameters
    ----------
    mean, sigma
        Mean and standard deviation of the log-flux (flux in units of ``scale``), any shape.
    scale
        Flux unit, nJy, broadcastable to ``mean``.

    Returns
    -------
    summaries
        ``flux_err_njy``, ``flux_q16_njy``, ``flux_q84_njy``, nJy, each of ``mean``'s shape and dtype.
        The standard deviation ``exp(mu + s^2/2) sqrt(exp(s^2) - 1)`` overflows float32 already for
        ``s`` above about 6.5, where the percentiles ``exp(mu +- s)`` are still finite: where the direct
        formula overflows, the value is computed from its logarithm
        (``mu + s^2/2 + log(expm1(s^2))/2 + log(scale)``, finite for every finite input) and capped at
        the dtype's largest finite value, which then means "wider than the dtype can state".  Where
        the direct formula is finite it is kept as it is, to the bit.
    """
    variance = sigma.square()
    direct_err = torch.exp(mean + 0.5 * variance) * torch.sqrt(torch.expm1(variance)) * scale
    # log(expm1(v)) = v + log(1 - exp(-v)): no overflow for large v, and v >= e^-10 > 0 here.
    log_err = mean + 0.5 * variance + 0.5 * (variance + torch.log(-torch.expm1(-variance))) + torch.log(scale)
    err = torch.where(torch.isfinite(direct_err), direct_err, _capped(torch.exp(log_err)))
    return {
        "flux_err_njy": err,
        "flux_q16_njy": _capped(torch.exp(mean - sigma) * scale),
        "flux_q84_njy": _capped(torch.exp(mean + sigma) * scale),
    }


def posterior_to_tile_catalog(
    posterior: TilePosterior,
    encoder: BlissEncoder,
    pixel_scale_arcsec: float,
    detection_threshold: float | None = 0.5,
) -> TileCatalog:
    """Turn decided tile values into a tile catalog with uncertainty fields.

    Parameters
    ----------
    posterior
        Output of `BlissEncoder.posterior`.
    encoder
        The encoder (for its factors and tile size).
    pixel_scale_arcsec
        Arcsec per pixel, to express radii in arcsec.
    detection_threshold
        A tile holds a source where its detection probability exceeds this;
        ``None`` uses the decided (sampled) detection instead.

    Returns
    -------
    catalog
        Shape (B, Ht, Wt, 1), fields `SOURCE_FIELDS` + `ESTIMATE_FIELDS`.
    """
    values, params = posterior.values, posterior.params
    factors = {factor.name: factor for factor in encoder.factors}
    detection_prob = torch.sigmoid(params["detection"][..., 0])
    if detection_threshold is None:
        present = values["detection"][..., 0] > 0.5
    else:
        present = detection_prob > detection_threshold
    # Padding values of catalogs (zeros, False, unit axis ratios) for whatever the factors leave out.
    padding = empty_source_fields(
        detection_prob.shape, detection_prob.device, detection_prob.dtype, SOURCE_FIELDS + ESTIMATE_FIELDS
    )
    scale = posterior.flux_scale_njy[:, None, None]
    fields: dict[str, torch.Tensor] = {"detection_prob": detection_prob}
    if "galaxy" in params:
        fields["galaxy_prob"] = torch.sigmoid(params["galaxy"][..., 0])
        fields["is_galaxy"] = values["galaxy"][..., 0] > 0.5
    if "flux" in params:
        flux_factor = factors["flux"]
        assert isinstance(flux_factor, LogNormalFactor)
        mean = flux_factor.latent_mean(params["flux"])[..., 0]
        sigma = flux_factor.sigma(params["flux"])[..., 0]
        fields["flux_njy"] = _capped(values["flux"][..., 0] * scale)
        fields.update(_log_normal_flux_summaries(mean, sigma, scale))
    location_factor = factors["location"]
    assert isinstance(location_factor, LocationFactor)
    location = values["location"]
    location_sigma = location_factor.std(params["location"])
    fields["x_err"] = location_sigma[..., 0] * encoder.config.tile_size
    fields["y_err"] = location_sigma[..., 1] * encoder.config.tile_size
    if "disk_frac" in values:
        fields["disk_frac"] = values["disk_frac"][..., 0]
    for name in ("disk_hlr", "bulge_hlr"):
        if name in values:
            fields[f"{name}_arcsec"] = values[name][..., 0] * pixel_scale_arcsec
    if "bulge_q" in values:
        fields["bulge_q"] = values["bulge_q"][..., 0]
    if "disk_ellipticity" in values:
        e1, e2 = values["disk_ellipticity"].unbind(-1)
        modulus = torch.sqrt(e1.square() + e2.square())
        fields["disk_q"] = (1 - modulus) / (1 + modulus)
        fields["position_angle_rad"] = torch.remainder(0.5 * torch.atan2(e2, e1), math.pi)
    for name, value in padding.items():
        fields.setdefault(name, value)
    # Stars carry no galaxy shape.
    for name in SOURCE_FIELDS:
        if name not in ("flux_njy", "is_galaxy"):
            fields[name] = torch.where(fields["is_galaxy"], fields[name], padding[name])
    return TileCatalog(
        tile_size=encoder.config.tile_size,
        n_sources=present.long(),
        locations=location[..., None, :],
        fields={name: value[..., None] for name, value in fields.items()},
    )


def _crop(catalog: FullCatalog, height: int, width: int) -> FullCatalog:
    """Drop sources that fall in the padding beyond ``height x width``."""
    inside = catalog.is_valid & (catalog.x < width - 0.5) & (catalog.y < height - 0.5)
    order = torch.argsort((~inside).to(torch.uint8), dim=1, stable=True)
    n_sources = inside.sum(dim=1)

    def take(values: torch.Tensor) -> torch.Tensor:
        return torch.gather(values, 1, order)

    return FullCatalog(
        height,
        width,
        n_sources,
        take(catalog.x),
        take(catalog.y),
        {name: take(value) for name, value in catalog.fields.items()},
    )


def estimate_catalog(
    encoder: BlissEncoder,
    image: torch.Tensor,
    variance: torch.Tensor,
    mask: torch.Tensor | None,
    psf_fwhm_pix: torch.Tensor | float,
    pixel_scale_arcsec: float,
    detection_threshold: float = 0.5,
    backbone_dtype: torch.dtype = torch.float32,
) -> FullCatalog:
    """Point-estimate catalog of each image (modes through the checkerboard).

    Parameters
    ----------
    encoder
        Trained encoder.
    image, variance, mask
        Shape (B, H, W); nJy, nJy^2, bit mask (or None).
    psf_fwhm_pix
        PSF FWHM in pixels, scalar or (B,).
    pixel_scale_arcsec
        Arcsec per pixel.
    detection_threshold
        Minimum detection probability of a reported source.
    backbone_dtype
        Arithmetic of the backbone (see `BlissEncoder.features`).

    Returns
    -------
    catalog
        Per-image lists with `SOURCE_FIELDS` and `ESTIMATE_FIELDS`.
    """
    posterior = run_encoder(encoder, image, variance, mask, psf_fwhm_pix, backbone_dtype=backbone_dtype)
    return posterior_to_catalog(
        posterior, encoder, pixel_scale_arcsec, *image.shape[-2:], detection_threshold
    )


def posterior_to_catalog(
    posterior: TilePosterior,
    encoder: BlissEncoder,
    pixel_scale_arcsec: float,
    height: int,
    width: int,
    detection_threshold: float = 0.5,
) -> FullCatalog:
    """Point-estimate catalog of each image from its (padded) tile posterior.

    For callers that also need the tile posterior itself (e.g. calibration
    checks), so that the encoder runs once.

    Parameters
    ----------
    posterior
        Output of `run_encoder` (modes through the checkerboard).
    encoder
        The encoder that produced it.
    pixel_scale_arcsec
        Arcsec per pixel.
    height, width
        Size of the images before padding to whole tiles; sources beyond it are dropped.
    detection_threshold
        Minimum detection probability of a reported source.

    Returns
    -------
    catalog
        Per-image lists with `SOURCE_FIELDS` and `ESTIMATE_FIELDS`.
    """
    tiles = posterior_to_tile_catalog(posterior, encoder, pixel_scale_arcsec, detection_threshold)
    return _crop(tiles.to_full_catalog(), height, width)


def sample_catalogs(
    encoder: BlissEncoder,
    image: torch.Tensor,
    variance: torch.Tensor,
    mask: torch.Tensor | None,
    psf_fwhm_pix: torch.Tensor | float,
    pixel_scale_arcsec: float,
    n_samples: int = 16,
    seed: int = 0,
    checkerboard: bool = True,
    backbone_dtype: torch.dtype = torch.float32,
) -> list[FullCatalog]:
    """Posterior catalog samples, each drawn group by group through the checkerboard.

    The same seed gives the same samples; ``checkerboard=False`` is the
    ablation of `BlissEncoder.posterior`; ``backbone_dtype`` is the
    arithmetic of the backbone (see `BlissEncoder.features`).

    Returns
    -------
    samples
        ``n_samples`` catalogs of shape (B, M_k).
    """
    inputs = _normalized_inputs(encoder, image, variance, mask, psf_fwhm_pix)
    samples = []
    with evaluation_mode(encoder), torch.no_grad():
        encoded = encoder.encode(inputs, backbone_dtype)
        for index in range(n_samples):
            randomness = TileRandomness(seed, sample_index=index)
            posterior = encoder.posterior(
                inputs, randomness=randomness, encoded=encoded, checkerboard=checkerboard
            )
            tiles = posterior_to_tile_catalog(
                posterior, encoder, pixel_scale_arcsec, detection_threshold=None
            )
            samples.append(_crop(tiles.to_full_catalog(), *image.shape[-2:]))
    return samples
