"""The BLISS encoder: image -> per-tile variational posterior, with the checkerboard.

A fully convolutional backbone turns the normalized image (see
`prepare_inputs`) into features at tile resolution.  Tiles are split into
colour groups (a checkerboard); a shared head predicts the variational
parameters of group ``k`` from the features and a *context* map of the
sources already decided in groups ``< k`` (the truth in training, i.e.
teacher forcing, and the posterior's own samples or modes at inference).  A
source near a tile boundary thus conditions its neighbours' predictions,
which removes the dip of detection probability at tile edges.
"""

from __future__ import annotations

__all__ = [
    "STEMS",
    "BlissEncoder",
    "EncodedImage",
    "EncoderConfig",
    "checkerboard_groups",
    "make_tile_truth",
]

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..catalog import TileCatalog
from ._factors import Factor, TileTruth, make_factors
from ._normalize import N_INPUT_CHANNELS, NetworkInputs, check_input_noise
from ._posterior import TilePosterior
from ._random import TileRandomness
from ._sparse_checkerboard import (
    AbsentTrajectory,
    absent_trajectory,
    absent_trajectory_from_bordered,
    bordered_like,
    sparse_posterior,
)
from ._stem import is_foldable_stem, space_to_depth_conv

DEFAULT_FACTORS: tuple[str, ...] = (
    "detection",
    "location",
    "galaxy",
    "flux",
    "disk_frac",
    "disk_hlr",
    "bulge_hlr",
    "bulge_q",
    "disk_ellipticity",
)

STEMS: tuple[str, ...] = ("convolution", "space_to_depth")
"""Backbone stems (see `EncoderConfig.stem`)."""

CONTEXT_CHANNELS = 6
"""Context per tile: decided, present, location x and y (centred), asinh(flux), galaxy."""


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Architecture of the encoder.

    Attributes
    ----------
    tile_size
        Tile side in pixels; a power of two (the backbone halves the
        resolution log2(tile_size) times).
    factors
        Names of the variational factors (see `FACTORS`).
    checkerboard_groups
        1 (no checkerboard), 2 or 4 colour groups.
    pixel_channels
        Channels at each resolution the backbone computes, down to tile
        resolution: from full resolution (``stem="convolution"``, length
        ``log2(tile_size) + 1``) or from half resolution
        (``stem="space_to_depth"``, length ``log2(tile_size)``).
    tile_blocks
        Residual blocks at tile resolution (dilations 1, 2, 4, ...).
    head_channels
        Width of the checkerboard head.
    downsample_kernel
        Kernel of the two stride-2 convolutions.  With 4 (padding 1) the
        pixels that influence a tile's features are centred on the tile; with
        3, the layout of the packaged model, they are centred 1.5 px towards
        the tile's low corner (see ``doc/lsst.meas.extensions.bliss/encoder.rst`` for what each gives).
    stem
        How the backbone starts: ``"convolution"`` (the packaged model: a
        convolution and a residual block at full resolution, then a stride-2
        convolution) or ``"space_to_depth"`` (each 2x2 pixel block becomes
        one half-resolution pixel of 4x the channels, losslessly, followed
        by a convolution and a residual block there). The second skips the
        full-resolution layers, where a CPU runs narrow convolutions at a
        fraction of its arithmetic rate (see ``doc/lsst.meas.extensions.bliss/encoder.rst``).
    input_noise
        Noise unit of the data channels of the inputs the network is trained
        and run on (`prepare_inputs`): ``"pixel_variance"`` (the packaged
        model, and every model file without the field) divides each pixel by
        its own ``sqrt(variance)``; ``"background"`` divides every pixel by the
        image's median per-pixel noise, which makes the fluxes independent of
        the variance plane's source term and gain convention (see
        ``doc/lsst.meas.extensions.bliss/encoder.rst``).
    """

    tile_size: int = 4
    factors: tuple[str, ...] = DEFAULT_FACTORS
    checkerboard_groups: int = 2
    pixel_channels: tuple[int, ...] = (16, 32, 64)
    tile_blocks: int = 3
    head_channels: int = 64
    downsample_kernel: int = 3
    stem: str = "convolution"
    input_noise: str = "pixel_variance"

    def __post_init__(self) -> None:
        check_input_noise(self.input_noise)
        if self.tile_size < 1 or self.tile_size & (self.tile_size - 1):
            raise ValueError(f"tile_size={self.tile_size} is out of range; it must be a power of two.")
        if self.checkerboard_groups not in (1, 2, 4):
            raise ValueError(f"checkerboard_groups={self.checkerboard_groups} must be 1, 2 or 4.")
        if self.stem not in STEMS:
            raise ValueError(f"stem={self.stem!r} must be one of {', '.join(map(repr, STEMS))}.")
        if self.stem == "space_to_depth" and self.tile_size < 2:
            raise ValueError("stem='space_to_depth' needs tile_size >= 2 (it halves the resolution).")
        full_resolution = self.stem == "convolution"
        expected = int(math.log2(self.tile_size)) + int(full_resolution)
        if len(self.pixel_channels) != expected or min(self.pixel_channels) < 1:
            first = "full" if full_resolution else "half"
            raise ValueError(
                f"pixel_channels={self.pixel_channels} must list {expected} positive widths "
                f"({first} resolution down to tile_size={self.tile_size}, stem={self.stem!r})."
            )
        if self.tile_blocks < 0 or self.head_channels < 1:
            raise ValueError("tile_blocks must be >= 0 and head_channels >= 1.")
        if self.downsample_kernel not in (3, 4):
            raise ValueError(f"downsample_kernel={self.downsample_kernel} must be 3 or 4.")
        make_factors(self.factors)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable representation."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        """Inverse of `to_dict`; keys missing from older documents take their defaults."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    @property
    def widest_activation_channels(self) -> float:
        """Channels per input pixel of the backbone's largest activation (a layer's channels over the
        area of its pixels), which sets the memory a chunk of an image needs."""
        first_scale = 1 if self.stem == "convolution" else 2
        return max(
            channels / (first_scale * 2**index) ** 2 for index, channels in enumerate(self.pixel_channels)
        )

    @property
    def context_pixels(self) -> int:
        """Pixels of context the backbone sees beyond a tile on each side (receptive-field radius)."""
        if self.stem == "convolution":
            radius, scale = 1 + 2, 1  # stem and the full-resolution residual block
        else:
            radius, scale = 1 + 2 * (1 + 2), 2  # the 2x2 block, half-resolution convolution and block
        for _ in self.pixel_channels[1:]:
            scale *= 2
            radius += scale * 3  # strided conv and residual block at the new resolution
        radius += sum(2 * 2**i * self.tile_size for i in range(self.tile_blocks))
        return radius


def checkerboard_groups(
    n_tiles_h: int, n_tiles_w: int, n_groups: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Colour group of each tile, shape (Ht, Wt), int64 in [0, n_groups)."""
    rows = torch.arange(n_tiles_h, device=device)[:, None]
    cols = torch.arange(n_tiles_w, device=device)[None, :]
    if n_groups == 1:
        return torch.zeros(n_tiles_h, n_tiles_w, dtype=torch.long, device=device)
    if n_groups == 2:
        return (rows + cols) % 2
    return 2 * (rows % 2) + cols % 2


def _group_sublattices(n_groups: int, group: int) -> list[tuple[int, int]]:
    """Offsets ``(row, col)`` of the stride-2 sublattices of tiles that make up a colour group (the
    groups of `checkerboard_groups` repeat every two tiles)."""
    pattern = checkerboard_groups(2, 2, n_groups)
    return [(row, col) for row in range(2) for col in range(2) if int(pattern[row, col]) == group]


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.first = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.second = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)
        # Start as the identity so that deep stacks train stably without normalization layers.
        nn.init.zeros_(self.second.weight)
        nn.init.zeros_(self.second.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return nn.functional.silu(x + self.second(nn.functional.silu(self.first(x))))
        # Without autograd the activations may be overwritten: fewer fresh full-resolution tensors,
        # whose first touch costs about as much as the activation itself on a CPU.
        hidden = self.second(nn.functional.silu(self.first(x), inplace=True))
        hidden += x
        return nn.functional.silu(hidden, inplace=True)


@dataclasses.dataclass
class EncodedImage:
    """What every posterior pass over the same images shares.

    Attributes
    ----------
    features
        Backbone features, (B, C, Ht, Wt); None in an encoding made for the
        sparse passes only (``BlissEncoder.encode(..., keep_dense=False)``).
    projected
        The head's feature convolution of them, (B, head_channels, Ht, Wt),
        or None as ``features``.
    hidden_empty
        The head's first hidden layer with an empty context (no tile
        decided), (B, head_channels, Ht, Wt): the first colour group's input;
        or None as ``features``.
    absent
        With four colour groups, the pass in which every tile is decided
        empty, from which every pass is computed sparsely.
    """

    features: torch.Tensor | None
    projected: torch.Tensor | None
    hidden_empty: torch.Tensor | None
    absent: AbsentTrajectory | None = None

    def crop(self, rows: slice, cols: slice) -> EncodedImage:
        """A window of tiles; passes over it are exact at least ``2 x groups`` tiles from its edges."""

        def window(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor[..., rows, cols]

        return EncodedImage(
            window(self.features),
            window(self.projected),
            window(self.hidden_empty),
            None if self.absent is None else self.absent.crop(rows, cols),
        )


class BlissEncoder(nn.Module):
    """Convolutional encoder with checkerboard heads.

    Parameters
    ----------
    config
        Architecture.
    """

    def __init__(self, config: EncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config or EncoderConfig()
        self.factors: list[Factor] = make_factors(self.config.factors)
        channels = self.config.pixel_channels
        layers: list[nn.Module] = []
        n_stem_inputs = N_INPUT_CHANNELS
        if self.config.stem == "space_to_depth":
            layers.append(nn.PixelUnshuffle(2))
            n_stem_inputs *= 4
        layers += [
            nn.Conv2d(n_stem_inputs, channels[0], 3, padding=1),
            nn.SiLU(),
            _ResidualBlock(channels[0]),
        ]
        for previous, current in zip(channels[:-1], channels[1:], strict=True):
            layers += [
                nn.Conv2d(previous, current, self.config.downsample_kernel, stride=2, padding=1),
                nn.SiLU(),
                _ResidualBlock(current),
            ]
        layers += [_ResidualBlock(channels[-1], dilation=2**i) for i in range(self.config.tile_blocks)]
        self.backbone = nn.Sequential(*layers)
        width = self.config.head_channels
        self.context_embedding = nn.Sequential(nn.Conv2d(CONTEXT_CHANNELS, width // 2, 1), nn.SiLU())
        # The head's first convolution acts on [features, context]; it is split in its two linear parts
        # so that the feature part runs once and only the context part once per colour group.
        self.head_features = nn.Conv2d(channels[-1], width, 3, padding=1)
        self.head_context = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.head = nn.Sequential(
            nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, sum(f.n_params for f in self.factors), 1),
        )

    @property
    def factor_names(self) -> list[str]:
        return [factor.name for factor in self.factors]

    def features(self, inputs: NetworkInputs, compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Backbone features, shape (B, C, Ht, Wt), for inputs of shape (B, N_INPUT_CHANNELS, H, W).

        ``compute_dtype`` other than float32 runs the backbone's convolutions in it (autocast, e.g.
        bfloat16 on CPUs that compute it natively); the features are returned as float32.

        Raises
        ------
        ValueError
            If H or W is not a multiple of the tile size.
        """
        self._check_tiling(inputs)
        if compute_dtype != torch.float32:
            with torch.autocast(inputs.tensor.device.type, dtype=compute_dtype):
                return self._backbone(inputs.tensor).float()
        return self._backbone(inputs.tensor)

    def _check_tiling(self, inputs: NetworkInputs) -> None:
        tile = self.config.tile_size
        height, width = inputs.tensor.shape[-2:]
        if height % tile or width % tile or height == 0 or width == 0:
            raise ValueError(
                f"Image size {height}x{width} is not a positive multiple of tile_size={tile}; "
                "pad it to whole tiles."
            )

    def _backbone(self, pixels: torch.Tensor) -> torch.Tensor:
        """The backbone on ``pixels`` (B, N_INPUT_CHANNELS, H, W).  Without autograd its activations are
        overwritten in place and a space-to-depth stem runs as one strided convolution (see `_stem`):
        the same features within float32 rounding."""
        if torch.is_grad_enabled():
            return self.backbone(pixels)
        layers = list(self.backbone)
        features, first = pixels, 0
        if len(layers) > 1 and is_foldable_stem(layers[0], layers[1]):
            features, first = space_to_depth_conv(layers[1], pixels), 2
        for layer in layers[first:]:
            # In place (the same values) when no gradient needs the pre-activation.
            is_activation = isinstance(layer, nn.SiLU) and features is not pixels
            features = nn.functional.silu(features, inplace=True) if is_activation else layer(features)
        return features

    def source_context(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Context of decided tiles without the ``decided`` flag, shape (..., 5), from values (..., d):
        present, location x and y (centred), asinh(flux), galaxy; zero where no source."""
        present = values["detection"][..., 0]
        zeros = torch.zeros_like(present)

        def channel(name: str) -> torch.Tensor:
            return values[name][..., 0] if name in values else zeros

        location = values["location"] - 0.5
        channels = [
            present,
            location[..., 0],
            location[..., 1],
            torch.asinh(channel("flux")),
            channel("galaxy"),
        ]
        return torch.stack(channels, dim=-1) * present[..., None]

    def _context(self, values: dict[str, torch.Tensor], decided: torch.Tensor) -> torch.Tensor:
        """Context map (B, 6, Ht, Wt) of decided tiles (``decided`` (Ht, Wt) bool)."""
        source = self.source_context(values)
        flag = decided.to(source.dtype).expand(source.shape[:3])
        return torch.cat([flag[..., None], source], dim=-1).permute(0, 3, 1, 2) * flag[:, None]

    def _group_params(self, projected: torch.Tensor, context: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw parameters per factor, (B, Ht, Wt, n); ``projected`` is ``head_features(features)``."""
        return self._raw_to_params(self.head(projected + self.head_context(self.context_embedding(context))))

    def encode(
        self, inputs: NetworkInputs, compute_dtype: torch.dtype = torch.float32, keep_dense: bool = True
    ) -> EncodedImage:
        """Backbone and the context-free part of the head, to be shared by several posterior passes.

        Parameters
        ----------
        inputs
            Normalized images, (B, N_INPUT_CHANNELS, H, W).
        compute_dtype
            Arithmetic of the backbone (see `features`).
        keep_dense
            False, with four colour groups, keeps only the absent trajectory
            that the sparse passes start from, and frees the features, their
            projection and the empty-context hidden layer before it is
            computed (three tile-resolution tensors of ``head_channels``
            each, 0.1 GB for a 2k x 2k chunk).  Such an encoding serves
            `posterior` with the checkerboard only.  Ignored with other group
            counts, whose passes are dense.
        """
        return self.encode_features(self.features(inputs, compute_dtype), keep_dense)

    def encode_features(self, features: torch.Tensor, keep_dense: bool = True) -> EncodedImage:
        """`encode` of backbone features (B, C, Ht, Wt) already computed (`features`), so that a caller
        may free the inputs before the absent trajectory is made.  With ``keep_dense=False`` the
        features are freed early only if the caller holds no other reference to them."""
        projected = self.head_features(features)
        batch, _, n_rows, n_cols = features.shape
        empty = features.new_zeros(batch, CONTEXT_CHANNELS, n_rows, n_cols)
        empty_context = self.head_context(self.context_embedding(empty))
        dense = keep_dense or self.config.checkerboard_groups != 4
        if dense:
            hidden_empty = projected + empty_context
            absent = absent_trajectory(self, hidden_empty) if self.config.checkerboard_groups == 4 else None
            return EncodedImage(features, projected, hidden_empty, absent)
        # Written straight into the trajectory's first bordered hidden layer, and the rest freed before
        # the other three are made: memory touched for the first time costs a first call on a CPU about
        # as much as the arithmetic on it.
        del features
        if torch.is_grad_enabled():
            bordered = nn.functional.pad(projected + empty_context, (1, 1, 1, 1))
        else:
            bordered = bordered_like(projected)
            torch.add(projected, empty_context, out=bordered[..., 1:-1, 1:-1])
        del projected, empty, empty_context
        return EncodedImage(None, None, None, absent_trajectory_from_bordered(self, bordered))

    def _raw_to_params(self, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split the head's output (B, n_total, Ht, Wt) into raw parameters per factor, (B, Ht, Wt, n)."""
        return self.split_params(raw.permute(0, 2, 3, 1))

    def split_params(self, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split raw parameters (..., n_total) per factor, (..., n)."""
        # One split (its gradient is one concatenation) rather than a slice per factor (each slice's
        # gradient is a zero-filled tensor of the whole output's size).
        pieces = raw.split([factor.n_params for factor in self.factors], dim=-1)
        return {factor.name: piece for factor, piece in zip(self.factors, pieces, strict=True)}

    def _head_on_sublattice(self, hidden: torch.Tensor, row: int, col: int) -> dict[str, torch.Tensor]:
        """`head` evaluated only at tiles ``(row + 2 i, col + 2 j)`` of the hidden layer (B, C, Ht, Wt):
        params (B, h, w, n), with h or w zero where the grid has no such tile (an image one tile high or
        wide)."""
        return self.head_on_bordered_sublattice(nn.functional.pad(hidden, (1, 1, 1, 1)), row, col)

    def head_on_bordered_sublattice(
        self, bordered: torch.Tensor, row: int, col: int
    ) -> dict[str, torch.Tensor]:
        """`_head_on_sublattice` of a hidden layer given with a zero border of one tile, shape
        (B, C, Ht + 2, Wt + 2): the head convolution's padding, since silu(0) = 0."""
        _, conv, _, output = self.head
        n_rows, n_cols = (bordered.shape[-2] - 1 - row) // 2, (bordered.shape[-1] - 1 - col) // 2
        if n_rows == 0 or n_cols == 0:
            return self._raw_to_params(
                bordered.new_zeros(bordered.shape[0], output.out_channels, n_rows, n_cols)
            )
        # Cropped before the activation, which writes a dense tensor: a convolution of a view that
        # starts one column in is several times slower on a CPU (oneDNN takes a generic path).
        active = nn.functional.silu(bordered[..., row:, col:])
        hidden = nn.functional.silu(nn.functional.conv2d(active, conv.weight, conv.bias, stride=2))
        # The last layer gives the factors' parameters: float32 even under autocast (bfloat16's 8-bit
        # mantissa would round a log-flux mean by a few per cent).
        with torch.autocast(hidden.device.type, enabled=False):
            return self._raw_to_params(output(hidden.float()))

    def context_update(
        self, values: dict[str, torch.Tensor], row: int, col: int, shape: tuple[int, int]
    ) -> torch.Tensor:
        """Change of ``head_context(context_embedding(context))`` when the tiles ``(row + 2 i, col + 2 j)``
        become decided with ``values`` (given on that sublattice), (B, head_channels, Ht, Wt).

        The context embedding changes only on the sublattice, so its convolution is a stride-2
        transposed convolution of the sublattice (a quarter of the dense cost)."""
        if values["detection"].shape[1:3].numel() == 0:  # no such tile in a grid one tile high or wide
            return values["detection"].new_zeros(
                values["detection"].shape[0], self.head_context.out_channels, *shape
            )
        embedding = self.context_embedding
        context = self._context(values, values["detection"].new_ones(values["detection"].shape[1:3]).bool())
        empty = embedding(torch.zeros_like(context[:, :, :1, :1]))
        change = embedding(context) - empty
        weight = self.head_context.weight.flip(-2, -1).transpose(0, 1)
        update = nn.functional.conv_transpose2d(change, weight, stride=2, padding=(1 - row, 1 - col))
        n_rows, n_cols = shape
        update = update[..., :n_rows, :n_cols]
        missing_rows, missing_cols = n_rows - update.shape[-2], n_cols - update.shape[-1]
        if missing_rows or missing_cols:  # a padding of zero still copies
            update = nn.functional.pad(update, (0, missing_cols, 0, missing_rows))
        return update

    def _groups(self, features: torch.Tensor) -> torch.Tensor:
        return checkerboard_groups(*features.shape[-2:], self.config.checkerboard_groups, features.device)

    def log_prob(
        self, inputs: NetworkInputs, truth: TileTruth, compute_dtype: torch.dtype = torch.float32
    ) -> dict[str, torch.Tensor]:
        """Log-probability of the truth under the posterior (teacher forcing).

        Parameters
        ----------
        inputs
            Normalized images, (B, N_INPUT_CHANNELS, H, W).
        truth
            Truth per tile from `make_tile_truth`, values (B, Ht, Wt, d).
        compute_dtype
            Arithmetic of the backbone (see `features`); the head and the
            log-probabilities are float32.

        Returns
        -------
        log_prob
            Per factor, the gated log-probability summed over tiles, shape (B,).
        """
        self._check_tiling(inputs)
        n_groups = self.config.checkerboard_groups
        mixed = compute_dtype != torch.float32
        # Mixed precision: every convolution but the head's last runs in ``compute_dtype`` (see
        # `head_on_bordered_sublattice`), the factors' log-probabilities in float32.
        with torch.autocast(inputs.tensor.device.type, dtype=compute_dtype, enabled=mixed):
            features = self._backbone(inputs.tensor)
            projected = self.head_features(features)
            groups = self._groups(features)
            batch, _, n_rows, n_cols = features.shape
            # Every group's context at once, stacked along the batch (group-major): one call of each
            # context convolution instead of one per group; a training step is dominated by such calls.
            contexts = torch.cat([self._context(truth.values, groups < group) for group in range(n_groups)])
            context_hidden = self.head_context(self.context_embedding(contexts))
            hidden = (context_hidden.unflatten(0, (n_groups, batch)) + projected).flatten(0, 1)
            # A tile's parameters count only in its own group, so the head's last layers run only on the
            # group's tiles, which are one or more of the four stride-2 sublattices (a quarter of the
            # cost each); the hidden layer they read stays dense.
            lattices = [
                (g, row, col) for g in range(n_groups) for row, col in _group_sublattices(n_groups, g)
            ]
            equal_lattices = n_rows % 2 == 0 and n_cols % 2 == 0
            if equal_lattices:
                # Equal sublattices (every training image): the four are stacked along the batch, each
                # cropped so that the head's stride-2 convolution starts on its first tile.
                bordered = nn.functional.pad(hidden, (1, 1, 1, 1))
                stacked = torch.cat(
                    [
                        bordered[
                            g * batch : (g + 1) * batch, :, row : row + n_rows + 1, col : col + n_cols + 1
                        ]
                        for g, row, col in lattices
                    ]
                )
                stacked_params = self.head_on_bordered_sublattice(stacked, 0, 0)
            else:  # a grid of odd size: one head call per sublattice
                lattice_params = [
                    self._head_on_sublattice(hidden[g * batch : (g + 1) * batch], row, col)
                    for g, row, col in lattices
                ]
        gates = {"always": torch.ones_like(truth.present), "source": truth.present, "galaxy": truth.is_galaxy}
        totals = {}
        for factor in self.factors:
            truth_values, gate = truth.values[factor.name], gates[factor.gate]
            if equal_lattices:  # each factor's log-probability in one call over the four sublattices
                term = factor.log_prob(
                    stacked_params[factor.name],
                    torch.cat([truth_values[:, row::2, col::2] for _, row, col in lattices]),
                )
                weight = torch.cat([gate[:, row::2, col::2] for _, row, col in lattices]).to(term.dtype)
                per_lattice = (term * weight).sum(dim=(1, 2)).unflatten(0, (len(lattices), batch))
                totals[factor.name] = per_lattice.sum(dim=0)
                continue
            totals[factor.name] = features.new_zeros(batch, dtype=torch.float32)
            for params, (_, row, col) in zip(lattice_params, lattices, strict=True):
                term = factor.log_prob(params[factor.name], truth_values[:, row::2, col::2])
                weight = gate[:, row::2, col::2].to(term.dtype)
                totals[factor.name] = totals[factor.name] + (term * weight).sum(dim=(1, 2))
        return totals

    def loss(
        self,
        inputs: NetworkInputs,
        truth: TileTruth,
        weights: Mapping[str, float] | None = None,
        compute_dtype: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward-KL (NPE) loss: ``-log q(truth)`` summed over tiles, averaged over images.

        Parameters
        ----------
        inputs, truth, compute_dtype
            As for `log_prob`.
        weights
            Weight of each named factor's term (default 1 for every factor).

        Returns
        -------
        loss
            Scalar tensor.
        terms
            Each factor's unweighted contribution (mean over images), for logging.
        """
        log_prob = self.log_prob(inputs, truth, compute_dtype)
        terms = {name: -float(value.detach().mean()) for name, value in log_prob.items()}
        weights = weights or {}
        unknown = sorted(set(weights) - set(log_prob))
        if unknown:
            raise ValueError(
                f"Loss weights for unknown factors {unknown}; the factors are {sorted(log_prob)}."
            )
        weighted = [value * weights.get(name, 1.0) for name, value in log_prob.items()]
        return -torch.stack(weighted).sum(0).mean(), terms

    @torch.no_grad()
    def posterior(
        self,
        inputs: NetworkInputs,
        randomness: TileRandomness | None = None,
        encoded: EncodedImage | None = None,
        checkerboard: bool = True,
    ) -> TilePosterior:
        """Decide every tile group by group, conditioning on earlier groups.

        Parameters
        ----------
        inputs
            Normalized images, (B, N_INPUT_CHANNELS, H, W).
        randomness
            Draw each group's values from the posterior (one catalog sample)
            with these tile-keyed random numbers; None uses modes (detection
            where the probability > 0.5).
        encoded
            Precomputed `encode` of ``inputs`` (to draw several samples cheaply).
        checkerboard
            False decides every tile in one pass with the first group's empty
            context, as if the network had no checkerboard: an ablation that
            shows what the conditioning buys at tile boundaries.

        Returns
        -------
        posterior
            Parameters and decided values of every tile.
        """
        encoded = self.encode(inputs) if encoded is None else encoded
        return self.posterior_from_encoded(encoded, inputs.flux_scale_njy, randomness, checkerboard)

    @torch.no_grad()
    def posterior_from_encoded(
        self,
        encoded: EncodedImage,
        flux_scale_njy: torch.Tensor,
        randomness: TileRandomness | None = None,
        checkerboard: bool = True,
    ) -> TilePosterior:
        """`posterior` of images already encoded, without their inputs: ``flux_scale_njy`` (B,) is
        their flux unit in nJy (``NetworkInputs.flux_scale_njy``)."""
        if checkerboard and encoded.absent is not None:
            return sparse_posterior(self, encoded.absent, randomness, flux_scale_njy)
        return self._posterior_dense(encoded, randomness, flux_scale_njy, checkerboard)

    def _posterior_dense(
        self,
        encoded: EncodedImage,
        randomness: TileRandomness | None,
        flux_scale_njy: torch.Tensor,
        checkerboard: bool = True,
    ) -> TilePosterior:
        """`posterior` with the head evaluated on every tile for every colour group."""
        if encoded.features is None or encoded.projected is None or encoded.hidden_empty is None:
            raise ValueError(
                "This encoding kept only the absent trajectory (encode(..., keep_dense=False)), which "
                "serves the four-group checkerboard passes; encode with keep_dense=True for dense passes."
            )
        groups = self._groups(encoded.features)
        n_groups = self.config.checkerboard_groups
        if not checkerboard:
            groups, n_groups = torch.zeros_like(groups), 1
        values: dict[str, torch.Tensor] = {}
        params_out: dict[str, torch.Tensor] = {}
        for group in range(n_groups):
            if group == 0:
                params = self._raw_to_params(self.head(encoded.hidden_empty))
            else:
                params = self._group_params(encoded.projected, self._context(values, groups < group))
            in_group = groups == group
            chosen = self._decide(params, randomness)
            for name, value in chosen.items():
                if name not in values:
                    values[name] = torch.zeros_like(value)
                    params_out[name] = torch.zeros_like(params[name])
                values[name] = torch.where(in_group[..., None], value, values[name])
                params_out[name] = torch.where(in_group[..., None], params[name], params_out[name])
        return TilePosterior(params=params_out, values=values, flux_scale_njy=flux_scale_njy)

    def _decide(
        self, params: dict[str, torch.Tensor], randomness: TileRandomness | None
    ) -> dict[str, torch.Tensor]:
        """Modes of every tile, or one sample with the tile-keyed numbers of ``randomness``."""
        chosen = {}
        for stream, factor in enumerate(self.factors):
            value = params[factor.name]
            if randomness is None:
                chosen[factor.name] = factor.mode(value)
            else:
                uniform = randomness.uniform(stream, value.shape[:3], factor.dims, value.device, value.dtype)
                chosen[factor.name] = factor.sample(value, uniform)
        return chosen


def make_tile_truth(
    encoder: BlissEncoder, catalog: TileCatalog, flux_scale_njy: torch.Tensor, pixel_scale_arcsec: float
) -> TileTruth:
    """Truth of a one-source-per-tile catalog in the encoder's factor representation.

    Raises
    ------
    ValueError
        If the catalog's tiling differs from the encoder's or allows more than one source per tile.
    """
    if catalog.tile_size != encoder.config.tile_size or catalog.max_sources_per_tile != 1:
        raise ValueError(
            f"Truth catalog has tile_size={catalog.tile_size} and max_sources_per_tile="
            f"{catalog.max_sources_per_tile}; the encoder needs tile_size={encoder.config.tile_size} and 1."
        )
    values = {f.name: f.truth(catalog, flux_scale_njy, pixel_scale_arcsec) for f in encoder.factors}
    present = catalog.n_sources > 0
    return TileTruth(values=values, present=present, is_galaxy=present & catalog.fields["is_galaxy"][..., 0])
