"""Maximum-a-posteriori refinement of the parametric source models before deblending.

The encoder's point estimates are amortized: one network pass gives every source's position, flux
and bulge+disk shape, but for a galaxy whose light overlaps a neighbour's the shape estimate is
far less accurate than for an isolated one, and the flux-conserving split inherits its errors
(``bliss-bench deblend``: with the true shapes the pair flux scatter falls to the isolated
galaxies' level).  `fit_source_models` starts from those estimates and maximizes, jointly for the
chosen sources of an image, the Gaussian likelihood of the observed pixels under the scene model
(the sum of the rendered sources) times a Gaussian prior centred on the encoder's estimates, in
unconstrained coordinates:

* position (pixels) with width ``position_sigma_pix``;
* disk fraction and axis ratios as logits, and half-light radii as logarithms, with their widths;
* log flux and position angle without a prior.

Stars keep their type and fit only position and flux.  The prior keeps the sources that the pixels
barely constrain near the encoder's estimates, while the pixels of bright blends move their
shapes to what the data say.  Each source's parameters are whitened by its own Gauss-Newton block
(the curvature of the likelihood of its stamp, with the prior's) at the start, so that they are of
unit curvature whatever the source's brightness and size.  Each blend (a connected group of
overlapping stamps) is then an independent problem with its own L-BFGS iterations and backtracking
line search; all blends of an image advance together in one batch of tensor operations
(`_batched_lbfgs`), so the cost is that of the largest blend's iterations, not of their sum.
Only the deblending models use the fitted values; the posterior catalog keeps the encoder's.
"""

from __future__ import annotations

__all__ = ["ModelFitConfig", "fit_source_models"]

import dataclasses
import math
from collections.abc import Callable

import scipy.ndimage
import torch

from ..catalog import SOURCE_FIELDS, FullCatalog
from ..rendering import (
    STAMP_HALF_SIZES,
    PointSpreadFunction,
    RenderSources,
    catalog_to_render_sources,
    render_stamps,
    stamp_half_size,
)
from ..survey import SurveyConditions

_SHAPE_FIELDS = tuple(name for name in SOURCE_FIELDS if name not in ("flux_njy", "is_galaxy"))
"""The galaxy shape fields, which stars keep as they are."""
_FRACTION_LIMITS = (0.01, 0.99)
"""Fractions and axis ratios are clamped into this range before their logits are taken."""
_MIN_HLR_PIX = 0.05
_RENDER_DTYPE = torch.float64
"""Arithmetic of the fit's stamps.  float32 stamps were slower, not faster, on a CPU: their
rounding noise in the objective costs line-search steps."""


@dataclasses.dataclass(frozen=True)
class ModelFitConfig:
    """Options of `fit_source_models`.

    Attributes
    ----------
    max_iterations
        L-BFGS iterations (each evaluates the scene model and its gradient one or more times).
    position_sigma_pix
        Prior width of each position coordinate around the encoder's estimate, pixels.
    log_hlr_sigma
        Prior width of the natural logarithm of each half-light radius.
    disk_frac_logit_sigma
        Prior width of the disk fraction's logit.
    axis_ratio_logit_sigma
        Prior width of each axis ratio's logit.
    blend_footprint_nsigma
        `model_sources` fits the sources whose footprints at this isophote (in units of the noise)
        touch another's (`blended_sources`).

    Notes
    -----
    The default widths were chosen on ``bliss-bench deblend`` scenes of another seed (7) than the
    benchmark's (12345): among four settings they gave the lowest pair flux scatter.  So was the
    isophote: 0.3 sigma gave pairs 0.089 against 0.095 at 1 sigma (300 scenes of each kind).
    """

    max_iterations: int = 60
    position_sigma_pix: float = 1.0
    log_hlr_sigma: float = 0.3
    disk_frac_logit_sigma: float = 1.0
    axis_ratio_logit_sigma: float = 0.7
    blend_footprint_nsigma: float = 0.3

    def __post_init__(self) -> None:
        if self.max_iterations < 1:
            raise ValueError(f"max_iterations={self.max_iterations} must be at least 1.")
        widths = (
            "position_sigma_pix",
            "log_hlr_sigma",
            "disk_frac_logit_sigma",
            "axis_ratio_logit_sigma",
            "blend_footprint_nsigma",
        )
        for name in widths:
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name}={value} must be positive.")


def _logit(values: torch.Tensor) -> torch.Tensor:
    clamped = values.clamp(*_FRACTION_LIMITS)
    return torch.log(clamped) - torch.log1p(-clamped)


def fit_source_models(
    catalog: FullCatalog,
    psf_fwhm_pix: torch.Tensor,
    conditions: SurveyConditions,
    image: torch.Tensor,
    variance: torch.Tensor,
    valid: torch.Tensor | None = None,
    config: ModelFitConfig | None = None,
    max_half_size: int = STAMP_HALF_SIZES[-1],
    selected: torch.Tensor | None = None,
) -> tuple[FullCatalog, torch.Tensor]:
    """Refine the sources' parametric models by a joint maximum-a-posteriori fit to the image.

    Parameters
    ----------
    catalog
        Sources of one image (batch of one) with ``is_galaxy``: the encoder's estimates.
    psf_fwhm_pix
        PSF FWHM at each source, pixels, shape (N,).
    conditions
        The PSF family and pixel scale.
    image, variance
        Observed image (nJy) and variance (nJy^2), shape (H, W).
    valid
        Usable pixels, shape (H, W), bool; default: finite with positive variance.
    config
        Prior widths and iterations (default: `ModelFitConfig`'s defaults).
    max_half_size
        Largest stamp half-size, pixels (as for `render_source_models`).
    selected
        Sources to fit, shape (N,), bool; default all.  The others keep their estimates and are
        left out of the objective (`model_sources` fits the blended ones).

    Returns
    -------
    fitted
        A copy of ``catalog`` with fitted ``x``, ``y``, ``flux_njy`` and, for galaxies, shapes,
        for the selected sources.
    fit_failed
        Selected sources that keep the encoder's estimate because it or their fitted values are
        not finite, or because their blend's objective is not finite at the start, shape (N,),
        bool.  Every other blend's objective only decreases (Armijo steps).
    """
    config = config or ModelFitConfig()
    if catalog.batch_size != 1:
        raise ValueError(f"fit_source_models takes a catalog of one image; got {catalog.batch_size}.")
    n_sources = int(catalog.n_sources[0])
    fit_failed = torch.zeros(n_sources, dtype=torch.bool)
    if n_sources == 0:
        return catalog, fit_failed
    if image.shape != variance.shape:
        raise ValueError(f"image {tuple(image.shape)} and variance {tuple(variance.shape)} differ in shape.")
    height, width = image.shape
    scale = conditions.pixel_scale_arcsec
    sources = catalog_to_render_sources(catalog, scale)
    fwhm = torch.as_tensor(psf_fwhm_pix, dtype=torch.float64).reshape(-1)
    if fwhm.numel() != n_sources or not bool(torch.isfinite(fwhm).all() & (fwhm > 0).all()):
        raise ValueError(f"psf_fwhm_pix needs one finite positive FWHM per source ({n_sources}).")
    psf = conditions.psf(fwhm.numpy() * scale)
    sources = dataclasses.replace(sources, psf_index=torch.arange(n_sources))
    half_size = stamp_half_size(sources, psf, max_half_size)

    is_galaxy = sources.is_galaxy.bool()
    start = torch.stack(
        [
            sources.x.double(),
            sources.y.double(),
            torch.log(sources.flux.double().clamp(min=1e-6)),
            _logit(sources.disk_frac.double()),
            torch.log(sources.disk_hlr_pix.double().clamp(min=_MIN_HLR_PIX)),
            _logit(sources.disk_q.double()),
            torch.log(sources.bulge_hlr_pix.double().clamp(min=_MIN_HLR_PIX)),
            _logit(sources.bulge_q.double()),
            sources.position_angle_rad.double(),
        ],
        dim=1,
    )
    if selected is None:
        selected = torch.ones(n_sources, dtype=torch.bool)
    elif selected.shape != (n_sources,):
        raise ValueError(f"selected has shape {tuple(selected.shape)}; expected ({n_sources},).")
    # Only sources that were to be fitted can fail; the others keep their estimates unflagged.
    fit_failed = selected.bool() & ~torch.isfinite(start).all(dim=1)
    centre_x, centre_y = torch.round(sources.x).long(), torch.round(sources.y).long()
    chosen = torch.nonzero(selected.bool() & ~fit_failed).squeeze(1)
    fitted = start.clone()
    if chosen.numel() > 0:
        region = _covered(centre_x[chosen], centre_y[chosen], half_size[chosen] + 1, height, width)
        usable = torch.isfinite(image) & torch.isfinite(variance) & (variance > 0) & region
        if valid is not None:
            usable &= valid
        result, failed = _fit(
            sources.select(chosen),
            start[chosen],
            half_size[chosen],
            psf,
            torch.where(usable, image.double(), 0.0),
            torch.where(usable, 1.0 / variance.double().clamp(min=1e-300), 0.0),
            region,
            config,
        )
        fitted[chosen] = result
        fit_failed[chosen] |= failed | ~torch.isfinite(result).all(dim=1)
    updated = torch.zeros(n_sources, dtype=torch.bool)
    updated[chosen] = True
    return _with_parameters(catalog, fitted, updated & ~fit_failed, is_galaxy, scale), fit_failed


def _covered(
    centre_x: torch.Tensor, centre_y: torch.Tensor, half_size: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Pixels inside at least one of the boxes ``centre +- half_size`` (clipped to the image), (H, W),
    bool: the boxes' corners marked +-1 and summed along both axes count the boxes over each pixel."""
    x0 = (centre_x - half_size).clamp(0, width)
    x1 = (centre_x + half_size + 1).clamp(0, width)
    y0 = (centre_y - half_size).clamp(0, height)
    y1 = (centre_y + half_size + 1).clamp(0, height)
    corners = torch.zeros(height + 1, width + 1, dtype=torch.int32)
    ones = torch.ones_like(x0, dtype=torch.int32)
    for rows, cols, sign in ((y0, x0, 1), (y0, x1, -1), (y1, x0, -1), (y1, x1, 1)):
        corners.index_put_((rows, cols), sign * ones, accumulate=True)
    return corners.cumsum(0).cumsum(1)[:height, :width] > 0


def _fit(
    sources: RenderSources,
    start: torch.Tensor,
    half_size: torch.Tensor,
    psf: PointSpreadFunction,
    observed: torch.Tensor,
    weight: torch.Tensor,
    region: torch.Tensor,
    config: ModelFitConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fitted parameters (n, 9) of ``sources`` and which of them failed (their blend's objective was
    not finite), shape (n,); ``observed`` and ``weight`` (H, W) are zero outside the usable pixels of
    ``region``, the pixels the objective is summed over."""
    height, width = observed.shape
    is_galaxy = sources.is_galaxy.bool()
    # The objective runs over the region's pixels only: a lookup from image pixel to region pixel.
    region_flat = torch.nonzero(region.reshape(-1)).squeeze(1)
    lookup = torch.full((height * width,), -1, dtype=torch.int64)
    lookup[region_flat] = torch.arange(region_flat.numel())
    observed, weight = observed.reshape(-1)[region_flat], weight.reshape(-1)[region_flat]
    n_region = region_flat.numel()
    free = torch.ones_like(start)
    free[:, 3:] = is_galaxy[:, None].double()
    prior_sigma = torch.tensor(
        [
            config.position_sigma_pix,
            config.position_sigma_pix,
            torch.inf,
            config.disk_frac_logit_sigma,
            config.log_hlr_sigma,
            config.axis_ratio_logit_sigma,
            config.log_hlr_sigma,
            config.axis_ratio_logit_sigma,
            torch.inf,
        ],
        dtype=torch.float64,
    )
    sizes = torch.unique(half_size).tolist()
    by_size = {value: torch.nonzero(half_size == value).squeeze(1) for value in sizes}

    lower, upper = _parameter_bounds(start)

    def stamps(
        params: torch.Tensor, subset: torch.Tensor | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per stamp size: the sources (of ``subset``, default all), their stamps (m, S, S), each stamp
        pixel's region index and whether it lies in the region."""
        # A trial step of the line search may reach absurd values; the renderer gets sane ones.
        params = torch.maximum(torch.minimum(torch.nan_to_num(params), upper), lower)
        current = dataclasses.replace(
            sources,
            x=params[:, 0],
            y=params[:, 1],
            flux=torch.exp(params[:, 2]),
            disk_frac=torch.sigmoid(params[:, 3]),
            disk_hlr_pix=torch.exp(params[:, 4]),
            disk_q=torch.sigmoid(params[:, 5]),
            bulge_hlr_pix=torch.exp(params[:, 6]),
            bulge_q=torch.sigmoid(params[:, 7]),
            position_angle_rad=params[:, 8],
        )
        # Stamps are centred on the nearest pixel, which may change as a position moves.
        centre_x = torch.round(params[:, 0].detach()).long()
        centre_y = torch.round(params[:, 1].detach()).long()
        groups = []
        for value in sizes:
            chosen = by_size[value] if subset is None else by_size[value][subset[by_size[value]]]
            if chosen.numel() == 0:
                continue
            rendered = render_stamps(current.select(chosen), psf, value, dtype=_RENDER_DTYPE).double()
            offsets = torch.arange(-value, value + 1)
            rows = (centre_y[chosen, None] + offsets)[:, :, None].expand(rendered.shape)
            cols = (centre_x[chosen, None] + offsets)[:, None, :].expand(rendered.shape)
            on_image = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
            index = lookup[rows.clamp(0, height - 1) * width + cols.clamp(0, width - 1)]
            inside = on_image & (index >= 0)
            groups.append((chosen, rendered, index.clamp(min=0), inside))
        return groups

    def scene(params: torch.Tensor, subset: torch.Tensor, kept: torch.Tensor, n_kept: int) -> torch.Tensor:
        """The scene model of the ``subset`` of sources on the ``n_kept`` region pixels that ``kept``
        (n_region,) numbers 0, 1, ... (the others -1)."""
        total = torch.zeros(n_kept, dtype=torch.float64)
        for _, rendered, index, inside in stamps(params, subset):
            index = kept[index]
            inside = inside & (index >= 0)
            flat = index.clamp(min=0).reshape(-1)
            total = total.index_add(0, flat, torch.where(inside, rendered, 0.0).reshape(-1))
        return total

    prior_precision = free / prior_sigma.square()
    whitening = _whitening(stamps, start, weight, sizes, by_size, free, prior_precision)

    # Blends are independent problems: each connected part of the region is one group, fitted by
    # its own L-BFGS iterations (in one batch), so that no group waits on another's line search.
    labels, n_groups = scipy.ndimage.label(region.numpy())
    labels = torch.from_numpy(labels).reshape(-1).long() - 1
    pixel_group = labels[region_flat]
    centre_rows = torch.round(start[:, 1]).long().clamp(0, height - 1)
    centre_cols = torch.round(start[:, 0]).long().clamp(0, width - 1)
    source_group = labels[centre_rows * width + centre_cols]

    def evaluate(whitened: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The objective (G,) and its gradient with respect to ``whitened`` (n, 9) of the ``groups``
        (G,), bool; zero for the others, whose sources are not rendered."""
        whitened = whitened.detach().requires_grad_(True)
        params = start + torch.einsum("nij,nj->ni", whitening, whitened)
        subset = groups[source_group]
        # Only the pixels of the groups still being fitted are modelled (late iterations hold few).
        pixels = torch.nonzero(groups[pixel_group]).squeeze(1)
        kept = torch.full((n_region,), -1, dtype=torch.int64)
        kept[pixels] = torch.arange(pixels.numel())
        model = scene(params, subset, kept, pixels.numel())
        chi2 = weight[pixels] * (observed[pixels] - model).square()
        prior = ((params - start).square() * prior_precision).sum(dim=1) * subset
        value = 0.5 * (
            torch.zeros(n_groups, dtype=torch.float64)
            .index_add(0, pixel_group[pixels], chi2)
            .index_add(0, source_group, prior)
        )
        (gradient,) = torch.autograd.grad(value.sum(), whitened)
        return value.detach(), gradient

    whitened, failed = _batched_lbfgs(evaluate, start.shape, source_group, n_groups, config.max_iterations)
    with torch.no_grad():
        return start + torch.einsum("nij,nj->ni", whitening, whitened), failed


_LBFGS_HISTORY = 10
_ARMIJO = 1e-4
_MAX_HALVINGS = 10
_GRADIENT_TOLERANCE = 1e-3
"""In whitened units a gradient g promises a gain of about g^2 / 2 in the objective (chi^2 / 2, whose
own noise is of order one): a group stops when no parameter promises 1e-6 ..."""
_VALUE_TOLERANCE = 1e-6
"""... or when an iteration gains less than this."""


def _parameter_bounds(start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds (n, 9) of what the renderer is given: positions within 5 px and fluxes within a factor
    e^5 of the start, logits within +-8, half-light radii 0.05-200 px, angles within 2 pi."""
    lower, upper = start.clone(), start.clone()
    span = torch.tensor([5.0, 5.0, 5.0, 0, 0, 0, 0, 0, 2 * math.pi], dtype=torch.float64)
    lower -= span
    upper += span
    for column in (3, 5, 7):
        lower[:, column], upper[:, column] = -8.0, 8.0
    for column in (4, 6):
        lower[:, column], upper[:, column] = math.log(_MIN_HLR_PIX), math.log(200.0)
    return lower, upper


def _batched_lbfgs(
    evaluate: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    shape: tuple[int, ...],
    group: torch.Tensor,
    n_groups: int,
    max_iterations: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimize a sum of independent group objectives, each with its own L-BFGS and line search.

    Parameters
    ----------
    evaluate
        Maps the variables (n, P) and the groups to evaluate (G,), bool, to their objectives (G,)
        and the gradient (n, P) (other groups: anything, unused).
    shape
        ``(n, P)``: ``P`` variables for each of ``n`` sources.
    group
        Group of each source, shape (n,), int64 in ``[0, G)``.
    n_groups, max_iterations
        ``G`` and the iterations.

    Returns
    -------
    variables, failed
        The minimizer (n, P), zero for the sources of groups whose objective was not finite at the
        start, which are ``failed`` (n,), bool.
    """

    def group_dot(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n_groups, dtype=first.dtype).index_add(0, group, (first * second).sum(dim=1))

    def per_source(values: torch.Tensor) -> torch.Tensor:
        return values[group][:, None]

    variables = torch.zeros(shape, dtype=torch.float64)
    value, gradient = evaluate(variables, torch.ones(n_groups, dtype=torch.bool))
    failed_groups = ~torch.isfinite(value) | ~torch.isfinite(group_dot(gradient, gradient))
    gradient = torch.where(per_source(failed_groups), 0.0, gradient)
    stalled = torch.zeros(n_groups, dtype=torch.bool)
    history: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for _ in range(max_iterations):
        largest = torch.zeros(n_groups, dtype=torch.float64).scatter_reduce(
            0, group, gradient.abs().amax(dim=1), "amax", include_self=True
        )
        active = (largest > _GRADIENT_TOLERANCE) & ~failed_groups & ~stalled
        if not bool(active.any()):
            break
        # Two-loop recursion, with every scalar per group.
        direction = gradient.clone()
        alphas = []
        for step, change, rho in reversed(history):
            alpha = rho * group_dot(step, direction)
            alphas.append(alpha)
            direction -= per_source(alpha) * change
        if history:
            step, change, _ = history[-1]
            curvature = group_dot(change, change)
            scale = torch.where(curvature > 0, group_dot(step, change) / curvature.clamp(min=1e-300), 1.0)
            direction *= per_source(torch.where(scale > 0, scale, 1.0))
        for (step, change, rho), alpha in zip(history, reversed(alphas), strict=True):
            beta = rho * group_dot(change, direction)
            direction += per_source(alpha - beta) * step
        direction = -direction
        slope = group_dot(gradient, direction)
        # A direction that does not descend falls back to the gradient's.
        direction = torch.where(per_source(slope < 0), direction, -gradient)
        slope = torch.where(slope < 0, slope, -group_dot(gradient, gradient))
        # Backtracking (Armijo) line search, per group; each group keeps the first step it accepts.
        length = active.double()
        pending = active.clone()
        new_value, new_gradient = value.clone(), gradient.clone()
        for _ in range(_MAX_HALVINGS):
            trial_value, trial_gradient = evaluate(variables + per_source(length) * direction, pending)
            sufficient = trial_value <= value + _ARMIJO * length * slope
            accepted = pending & torch.isfinite(trial_value) & sufficient
            new_value = torch.where(accepted, trial_value, new_value)
            new_gradient = torch.where(per_source(accepted), trial_gradient, new_gradient)
            pending &= ~accepted
            if not bool(pending.any()):
                break
            length = torch.where(pending, 0.5 * length, length)
        # A group whose step was never accepted stays where it was and stops: it is at the precision
        # of its objective. So does one whose objective no longer changes.
        length = torch.where(pending, 0.0, length)
        stalled |= pending | ((length > 0) & (value - new_value < _VALUE_TOLERANCE))
        step = per_source(length) * direction
        change = new_gradient - gradient
        curvature = group_dot(step, change)
        rho = torch.where((length > 0) & (curvature > 1e-12), 1.0 / curvature.clamp(min=1e-300), 0.0)
        history = [*history[-(_LBFGS_HISTORY - 1) :], (step, change, rho)]
        variables = variables + step
        value, gradient = new_value, new_gradient
    failed = failed_groups[group]
    return torch.where(failed[:, None], 0.0, variables), failed


def _with_parameters(
    catalog: FullCatalog,
    params: torch.Tensor,
    updated: torch.Tensor,
    is_galaxy: torch.Tensor,
    pixel_scale_arcsec: float,
) -> FullCatalog:
    """``catalog`` with the fitted parameters (N, 9) of its first ``N`` sources where ``updated``
    (N,); stars keep their (unused) shape fields."""
    count = params.shape[0]
    x, y = catalog.x.clone(), catalog.y.clone()
    x[0, :count] = torch.where(updated, params[:, 0].to(x.dtype), x[0, :count])
    y[0, :count] = torch.where(updated, params[:, 1].to(y.dtype), y[0, :count])
    fitted = {
        "flux_njy": torch.exp(params[:, 2]),
        "disk_frac": torch.sigmoid(params[:, 3]),
        "disk_hlr_arcsec": torch.exp(params[:, 4]) * pixel_scale_arcsec,
        "disk_q": torch.sigmoid(params[:, 5]),
        "bulge_hlr_arcsec": torch.exp(params[:, 6]) * pixel_scale_arcsec,
        "bulge_q": torch.sigmoid(params[:, 7]),
        "position_angle_rad": params[:, 8],
    }
    fields = dict(catalog.fields)
    for name, values in fitted.items():
        column = fields[name].clone()
        change = updated & is_galaxy if name in _SHAPE_FIELDS else updated
        column[0, :count] = torch.where(change, values.to(column.dtype), column[0, :count])
        fields[name] = column
    return dataclasses.replace(catalog, x=x, y=y, fields=fields)


_JACOBIAN_STEP = 1e-4
"""Step of the central differences that give each source's Jacobian (its parameters are O(1))."""


def _whitening(
    stamps: Callable[[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]],
    start: torch.Tensor,
    flat_weight: torch.Tensor,
    sizes: list[int],
    by_size: dict[int, torch.Tensor],
    free: torch.Tensor,
    prior_precision: torch.Tensor,
) -> torch.Tensor:
    """Per-source matrices ``A`` (N, P, P) with ``A^T (H + prior) A = 1`` at the start, where ``H`` is
    the source's own Gauss-Newton block ``J^T W J`` of its stamp; fixed parameters map to zero.

    With ``params = start + A v`` every source's parameters are decorrelated and of unit curvature,
    whatever its brightness or size, so that one L-BFGS run over all sources of an image converges
    about as fast as a run over one; only the coupling between blended neighbours is left to it.
    """
    n_sources, n_params = start.shape
    jacobians: list[list[torch.Tensor]] = [[] for _ in sizes]
    with torch.no_grad():
        for index in range(n_params):
            step = torch.zeros_like(start)
            step[:, index] = _JACOBIAN_STEP
            plus, minus = stamps(start + step), stamps(start - step)
            for group, ((_, up, flat, inside), (_, down, _, _)) in enumerate(zip(plus, minus, strict=True)):
                derivative = (up - down) / (2 * _JACOBIAN_STEP)
                jacobians[group].append(torch.where(inside, derivative, 0.0) * flat_weight[flat].sqrt())
        information = torch.zeros(n_sources, n_params, n_params, dtype=torch.float64)
        for value, columns in zip(sizes, jacobians, strict=True):
            matrix = torch.stack(columns, dim=-1).flatten(1, 2)
            information[by_size[value]] = matrix.transpose(1, 2) @ matrix
        information *= free[:, :, None] * free[:, None, :]
        # Fixed parameters get a unit diagonal so that the blocks stay positive definite.
        information += torch.diag_embed(prior_precision + (1 - free))
        information += 1e-9 * torch.diag_embed(information.diagonal(dim1=1, dim2=2).clamp(min=1.0))
        factor, status = torch.linalg.cholesky_ex(information)
        fallback = torch.diag_embed(information.diagonal(dim1=1, dim2=2).rsqrt())
        identity = torch.eye(n_params, dtype=torch.float64).expand_as(information)
        inverse_factor = torch.linalg.solve_triangular(factor, identity, upper=False)
        whitening = torch.where((status == 0)[:, None, None], inverse_factor.transpose(1, 2), fallback)
        return torch.nan_to_num(whitening) * free[:, :, None]
