"""Four-group checkerboard passes computed only where sources change the context.

With four colour groups, group ``g`` is the stride-2 sublattice of tiles
``(r + 2 i, c + 2 j)`` with ``(r, c) = divmod(g, 2)``.  A pass in which every
tile is decided empty (the *absent trajectory*) is the same for the mode and
for every posterior sample, so it is computed once per image.  Any actual pass
differs from it only through the tiles it decides to hold a source: their
context changes the head's hidden layer within one tile (a 3x3 convolution),
hence the parameters of later groups within two tiles.  Those few tiles are
recomputed from gathered 3x3 neighbourhoods; the rest keep the absent
trajectory's parameters.  The result equals the dense group loop
(``BlissEncoder._posterior_dense``, tested) at a small fraction of its cost, since
sources occupy a few percent of the tiles.  A posterior sample's catalog needs
only the tiles it decides to hold a source: `sample_sources` returns those,
without the dense per-sample parameter and value tensors of `sparse_posterior`.
"""

from __future__ import annotations

__all__ = ["SampledSources", "sample_sources"]

import dataclasses
from typing import Protocol

import torch
from torch import nn

from ._factors import Factor
from ._posterior import TilePosterior
from ._random import TileRandomness

N_GROUPS = 4
HEAD_BLOCK_TILES = 16384
"""Tiles whose head `_head_at` evaluates at once (their gathered inputs take 18 MB for 32 channels)."""


class CheckerboardHead(Protocol):
    """What the sparse passes need of the network (`BlissEncoder` provides it).

    Stated as a protocol so that this module depends on the head's interface,
    not on the encoder that uses it.
    """

    factors: list[Factor]
    head: nn.Sequential
    head_context: nn.Conv2d
    context_embedding: nn.Module

    def head_on_bordered_sublattice(
        self, bordered: torch.Tensor, row: int, col: int
    ) -> dict[str, torch.Tensor]: ...

    def context_update(
        self, values: dict[str, torch.Tensor], row: int, col: int, shape: tuple[int, int]
    ) -> torch.Tensor: ...

    def split_params(self, raw: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def source_context(self, values: dict[str, torch.Tensor]) -> torch.Tensor: ...


@dataclasses.dataclass
class AbsentTrajectory:
    """The four-group pass with every tile decided empty.

    Attributes
    ----------
    hidden
        Per group, the head's first hidden layer before that group is decided,
        (B, Ht, Wt, C), channels last (for gathering).
    params
        Raw parameters per factor, (B, Ht, Wt, n): each tile's, given that all
        earlier groups were decided empty.
    """

    hidden: list[torch.Tensor]
    params: dict[str, torch.Tensor]

    def repeat(self, count: int) -> AbsentTrajectory:
        """The trajectory of a batch of one image repeated ``count`` times (views, no copy), to draw
        several posterior samples in one pass."""
        if self.hidden[0].shape[0] != 1:
            raise ValueError("Only the trajectory of a single image can be repeated.")
        return AbsentTrajectory(
            [hidden.expand(count, -1, -1, -1) for hidden in self.hidden],
            {name: value.expand(count, -1, -1, -1) for name, value in self.params.items()},
        )

    def crop(self, rows: slice, cols: slice) -> AbsentTrajectory:
        """The trajectory of a window of tiles (valid where the window keeps the needed margin)."""
        return AbsentTrajectory(
            [hidden[:, rows, cols] for hidden in self.hidden],
            {name: value[:, rows, cols] for name, value in self.params.items()},
        )


def absent_trajectory(encoder: CheckerboardHead, hidden_empty: torch.Tensor) -> AbsentTrajectory:
    """Compute `AbsentTrajectory` from the empty-context hidden layer (B, C, Ht, Wt)."""
    return absent_trajectory_from_bordered(encoder, nn.functional.pad(hidden_empty, (1, 1, 1, 1)))


def bordered_like(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor for ``tensor`` (B, C, Ht, Wt) with a zero border of one tile, (B, C, Ht + 2, Wt + 2), in
    its memory format; the inside is left to be written."""
    batch, channels, n_rows, n_cols = tensor.shape
    channels_last = tensor.is_contiguous(memory_format=torch.channels_last) and not tensor.is_contiguous()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    bordered = torch.empty(
        (batch, channels, n_rows + 2, n_cols + 2),
        dtype=tensor.dtype,
        device=tensor.device,
        memory_format=layout,
    )
    return _zero_border(bordered, 2)


def absent_trajectory_from_bordered(encoder: CheckerboardHead, bordered: torch.Tensor) -> AbsentTrajectory:
    """`absent_trajectory` of the empty-context hidden layer given with a zero border of one tile,
    (B, C, Ht + 2, Wt + 2) (see `bordered_like`), which it keeps as the first group's."""
    batch, _, n_rows, n_cols = bordered.shape
    n_rows, n_cols = n_rows - 2, n_cols - 2
    # Each group's hidden layer is written with a zero border of one tile, the head convolution's
    # padding, instead of being padded by a copy in every group.
    hiddens: list[torch.Tensor] = []
    params: dict[str, torch.Tensor] = {}
    for group in range(N_GROUPS):
        row, col = divmod(group, 2)
        hidden = bordered[..., 1:-1, 1:-1]
        hiddens.append(hidden.permute(0, 2, 3, 1))
        group_params = encoder.head_on_bordered_sublattice(bordered, row, col)
        for name, value in group_params.items():
            if name not in params:
                params[name] = value.new_zeros(batch, n_rows, n_cols, value.shape[-1])
            params[name][:, row::2, col::2] = value
        if group < N_GROUPS - 1:
            shape = group_params["detection"].shape[:3]
            absent = {factor.name: hidden.new_zeros(*shape, factor.dims) for factor in encoder.factors}
            update = encoder.context_update(absent, row, col, (n_rows, n_cols))
            if torch.is_grad_enabled():
                bordered = nn.functional.pad(hidden + update, (1, 1, 1, 1))
            else:
                bordered = _zero_border(torch.empty_like(bordered), 2)
                torch.add(hidden, update, out=bordered[..., 1:-1, 1:-1])
    return AbsentTrajectory(hiddens, params)


def _zero_border(grid: torch.Tensor, row_dim: int) -> torch.Tensor:
    """Zero, in place, the first and last rows and columns of ``grid``, whose tile rows and columns
    are dimensions ``row_dim`` and ``row_dim + 1``; returns ``grid``."""
    for dim in (row_dim, row_dim + 1):
        grid.select(dim, 0).zero_()
        grid.select(dim, -1).zero_()
    return grid


class _ContextChange:
    """What the tiles decided to hold sources add to the head's hidden layer, relative to their being
    decided empty, stored only where it is non-zero (within one tile of a source).

    A dense (B, Ht, Wt, C) tensor per posterior sample would cost more to allocate and gather from
    than the few per cent of tiles near sources need.

    Parameters
    ----------
    shape
        ``(B, Ht, Wt)`` of the tile grid.
    channels
        Channels ``C`` of the hidden layer.
    reference
        A tensor giving the device and dtype.
    """

    def __init__(self, shape: tuple[int, int, int], channels: int, reference: torch.Tensor) -> None:
        # Row 0 of ``values`` is the zero change of every tile without an entry.  ``row_of`` covers the
        # grid with a border of one tile (the 3x3 convolution's padding, which never changes), so that
        # the neighbours of any tile index it without bounds checks; ``tiles`` holds the `flat_index` of
        # every other row.  Rows are int32, which index as well as int64 and halve the grid's memory
        # (16 samples of a 2k x 2k chunk: 17 MB instead of 34).
        batch, n_rows, n_cols = shape
        self.shape = shape
        self.row_of = torch.zeros((batch, n_rows + 2, n_cols + 2), dtype=torch.int32, device=reference.device)
        self.values = reference.new_zeros(1, channels)
        self.tiles = torch.zeros(0, dtype=torch.int64, device=reference.device)

    def flat_index(self, images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Index of tiles (each argument (P,), int64) in the flattened bordered grid of ``row_of``."""
        _, grid_rows, grid_cols = self.row_of.shape
        return (images * grid_rows + rows + 1) * grid_cols + cols + 1

    def add(
        self, images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, contribution: torch.Tensor
    ) -> None:
        """Accumulate ``contribution`` (P, C) at the listed tiles (each (P,), repeats allowed)."""
        flat = self.flat_index(images, rows, cols)
        new = torch.unique(flat[torch.take(self.row_of, flat) == 0])
        if new.numel():
            first = self.values.shape[0]
            self.row_of.view(-1)[new] = torch.arange(
                first, first + new.numel(), dtype=self.row_of.dtype, device=new.device
            )
            self.tiles = torch.cat([self.tiles, new])
            self.values = torch.cat([self.values, self.values.new_zeros(new.numel(), self.values.shape[1])])
        # An int64 index: index_add_ with an int32 one took four times as long on the CPU.
        self.values.index_add_(0, torch.take(self.row_of, flat).long(), contribution)


def _gather_tiles(
    tensor: torch.Tensor, images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """``tensor[images, rows, cols]`` of a (B, Ht, Wt, C) tensor, without indexing a batch that only
    repeats one image (`AbsentTrajectory.repeat`)."""
    if tensor.shape[0] > 1 and tensor.stride(0) == 0:
        return tensor[0][rows, cols]
    return tensor[images, rows, cols]


def _head_at(
    encoder: CheckerboardHead,
    hidden: torch.Tensor,
    change: _ContextChange,
    images: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """`head` at the listed tiles from the hidden layer ``hidden`` (B, Ht, Wt, C) plus ``change``."""
    _, conv, _, output = encoder.head
    batch, _, _, channels = hidden.shape
    _, grid_rows, grid_cols = change.row_of.shape
    grid_size = grid_rows * grid_cols
    # One table holds every input the 3x3 convolution may read: the absent trajectory's activations on
    # the bordered grid of ``change`` (zero on the border), then those of the tiles whose hidden layer
    # sources change.  A batch that repeats one image (`AbsentTrajectory.repeat`) needs one grid.
    shared = batch > 1 and hidden.stride(0) == 0
    n_grids = 1 if shared else batch
    table = hidden.new_empty(n_grids * grid_size + change.tiles.numel(), channels)
    grids = table[: n_grids * grid_size].view(n_grids, grid_rows, grid_cols, channels)
    _zero_border(grids, 1)[:, 1:-1, 1:-1] = hidden[:n_grids]
    changed = change.tiles % grid_size if shared else change.tiles
    changed_rows = table[n_grids * grid_size :]
    if torch.is_grad_enabled():
        changed_rows[:] = table.index_select(0, changed) + change.values[1:]
    else:  # gathered and summed in place, without two temporaries of the changed rows' size
        torch.index_select(table[: n_grids * grid_size], 0, changed, out=changed_rows)
        changed_rows += change.values[1:]
    nn.functional.silu(table, inplace=True)  # silu(0) = 0: the border stays the padding
    shifts = torch.arange(-1, 2, device=rows.device)
    neighbours = (shifts[:, None] * grid_cols + shifts).view(-1)  # in the weight's (ky, kx) order
    centres = change.flat_index(images, rows, cols)
    grid_centres = centres % grid_size if shared else centres
    weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, 9 * channels)
    raw = table.new_empty(len(centres), output.out_channels)
    # In blocks of tiles, so that the gathered inputs (9 C values per tile) and their indices stay a few
    # tens of MB instead of growing with the samples (the indices of every tile at once took 60 MB for
    # 16 samples of a 2k x 2k chunk): memory touched for the first time costs as much as the work.
    for start in range(0, len(centres), HEAD_BLOCK_TILES):
        block = slice(start, start + HEAD_BLOCK_TILES)
        # take and index_select gather about twice as fast as advanced indexing.
        change_rows = torch.take(change.row_of, centres[block, None] + neighbours)
        in_grids = grid_centres[block, None] + neighbours
        index = torch.where(change_rows > 0, change_rows + (n_grids * grid_size - 1), in_grids)
        inputs = table.index_select(0, index.view(-1)).view(-1, 9 * channels)
        layer = nn.functional.silu(nn.functional.linear(inputs, weight, conv.bias))
        raw[block] = nn.functional.linear(layer, output.weight[:, :, 0, 0], output.bias)
    return encoder.split_params(raw)


def _add_context(
    encoder: CheckerboardHead,
    change: _ContextChange,
    chosen: dict[str, torch.Tensor],
    images: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
) -> None:
    """Add to ``change`` what tiles decided to hold sources add to the hidden layer, relative to their
    being decided empty."""
    source = torch.cat([torch.ones_like(chosen["detection"]), encoder.source_context(chosen)], dim=-1)
    empty_source = torch.zeros_like(source[:1])
    empty_source[:, 0] = 1.0

    def embed(context: torch.Tensor) -> torch.Tensor:
        """`context_embedding` of context rows (P, 6), as 1 x 1 maps."""
        return encoder.context_embedding(context[:, :, None, None])[:, :, 0, 0]

    difference = embed(source) - embed(empty_source)
    # Output (y, x) of a 3x3 convolution takes input (y + ky - 1, x + kx - 1) with weight (ky, kx).
    contribution = torch.einsum("pc,ockl->pklo", difference, encoder.head_context.weight)
    _, n_rows, n_cols = change.shape
    shifts = torch.arange(2, -1, -1, device=rows.device) - 1  # ky = 0, 1, 2 -> y = row + 1, row, row - 1
    target_rows = (rows[:, None, None] + shifts[None, :, None]).expand(-1, 3, 3)
    target_cols = (cols[:, None, None] + shifts[None, None, :]).expand(-1, 3, 3)
    inside = (target_rows >= 0) & (target_rows < n_rows) & (target_cols >= 0) & (target_cols < n_cols)
    target_images = images[:, None, None].expand(-1, 3, 3)
    change.add(target_images[inside], target_rows[inside], target_cols[inside], contribution[inside])


def _tiles_near(
    images: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    shape: tuple[int, int, int],
    row: int,
    col: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tiles ``(row + 2 i, col + 2 j)`` within two tiles (Chebyshev) of the listed ones, each once,
    as (images, rows, cols) in raster order."""
    batch, n_rows, n_cols = shape
    # Within two tiles of r lie i = m - 1 (where r - row is even), m and m + 1, for m = (r - row) // 2;
    # they are marked on the sublattice's grid with a border of one tile, which takes what falls off it.
    near = torch.zeros(
        (batch, (n_rows - row + 1) // 2 + 2, (n_cols - col + 1) // 2 + 2),
        dtype=torch.bool,
        device=rows.device,
    )
    middle_rows, middle_cols = (rows - row) // 2 + 1, (cols - col) // 2 + 1
    even_rows, even_cols = (rows - row) % 2 == 0, (cols - col) % 2 == 0
    for shift_row in (-1, 0, 1):
        for shift_col in (-1, 0, 1):
            target = (images, middle_rows + shift_row, middle_cols + shift_col)
            conditions = [
                even for even, shift in ((even_rows, shift_row), (even_cols, shift_col)) if shift < 0
            ]
            if conditions:
                keep = conditions[0] & conditions[-1]
                target = (target[0][keep], target[1][keep], target[2][keep])
            near[target] = True
    near_images, sub_rows, sub_cols = torch.nonzero(near[:, 1:-1, 1:-1], as_tuple=True)
    return near_images, row + 2 * sub_rows, col + 2 * sub_cols


def sparse_posterior(
    encoder: CheckerboardHead,
    trajectory: AbsentTrajectory,
    randomness: TileRandomness | None,
    flux_scale_njy: torch.Tensor,
) -> TilePosterior:
    """The four-group posterior pass (modes, or one sample) from the absent trajectory."""

    params = {name: value.clone() for name, value in trajectory.params.items()}
    batch, n_rows, n_cols, _ = trajectory.hidden[0].shape
    reference = trajectory.hidden[0]
    values = {
        factor.name: reference.new_zeros(batch, n_rows, n_cols, factor.dims) for factor in encoder.factors
    }
    change = _ContextChange((batch, n_rows, n_cols), reference.shape[-1], reference)
    present_tiles: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    streams = {factor.name: stream for stream, factor in enumerate(encoder.factors)}
    detection = encoder.factors[streams["detection"]]
    for group in range(N_GROUPS):
        row, col = divmod(group, 2)
        if present_tiles:
            sources = [torch.cat(parts) for parts in zip(*present_tiles, strict=True)]
            images, rows, cols = _tiles_near(*sources, (batch, n_rows, n_cols), row, col)
            recomputed = _head_at(encoder, trajectory.hidden[group], change, images, rows, cols)
            for name, value in recomputed.items():
                params[name][images, rows, cols] = value
        group_detection = params["detection"][:, row::2, col::2]
        if randomness is None:
            decided = detection.mode(group_detection)
        else:
            uniform = randomness.uniform(
                streams["detection"],
                group_detection.shape[:3],
                1,
                reference.device,
                reference.dtype,
                (row, col),
                2,
            )
            decided = detection.sample(group_detection, uniform)
        values["detection"][:, row::2, col::2] = decided
        if randomness is None:
            # Modes of every tile (cheap), so that a catalog may use a detection threshold below 0.5.
            for factor in encoder.factors:
                if factor.name != "detection":
                    values[factor.name][:, row::2, col::2] = factor.mode(
                        params[factor.name][:, row::2, col::2]
                    )
        images, sub_rows, sub_cols = torch.nonzero(decided[..., 0] > 0.5, as_tuple=True)
        if images.numel() == 0:
            continue
        rows, cols = row + 2 * sub_rows, col + 2 * sub_cols
        present_tiles.append((images, rows, cols))
        chosen = {"detection": decided[images, sub_rows, sub_cols]}
        for factor in encoder.factors:
            if factor.name == "detection":
                continue
            if randomness is None:
                chosen[factor.name] = values[factor.name][images, rows, cols]
                continue
            uniform = randomness.uniform_at(
                streams[factor.name], images, rows, cols, factor.dims, reference.dtype
            )
            chosen[factor.name] = factor.sample(params[factor.name][images, rows, cols], uniform)
            values[factor.name][images, rows, cols] = chosen[factor.name]
        if group < N_GROUPS - 1:
            _add_context(encoder, change, chosen, images, rows, cols)
    return TilePosterior(params=params, values=values, flux_scale_njy=flux_scale_njy)


@dataclasses.dataclass
class SampledSources:
    """The tiles that posterior samples decided to hold a source.

    Attributes
    ----------
    images
        Batch element (sample) of each of ``P`` tiles, int64, shape (P,).
    rows, cols
        Tile row and column, int64, shape (P,).
    params
        Raw parameters per factor at those tiles, shape (P, n).
    values
        Decided values per factor at those tiles, shape (P, dims) (detection: ones).
    """

    images: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    params: dict[str, torch.Tensor]
    values: dict[str, torch.Tensor]

    def select(self, keep: torch.Tensor) -> SampledSources:
        """The tiles where the boolean ``keep`` (P,) is true, or those that the integer ``keep`` lists,
        in its order."""
        return SampledSources(
            self.images[keep],
            self.rows[keep],
            self.cols[keep],
            {name: value[keep] for name, value in self.params.items()},
            {name: value[keep] for name, value in self.values.items()},
        )

    @classmethod
    def concatenate(cls, parts: list[SampledSources]) -> SampledSources:
        """The tiles of ``parts`` (at least one) in order."""

        def cat(tensors: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat(tensors) if len(tensors) > 1 else tensors[0]

        return cls(
            cat([part.images for part in parts]),
            cat([part.rows for part in parts]),
            cat([part.cols for part in parts]),
            {name: cat([part.params[name] for part in parts]) for name in parts[0].params},
            {name: cat([part.values[name] for part in parts]) for name in parts[0].values},
        )


def sample_sources(
    encoder: CheckerboardHead, trajectory: AbsentTrajectory, randomness: TileRandomness
) -> SampledSources:
    """The sources of one four-group posterior sample per batch element of ``trajectory``.

    The same tiles, parameters and values as `sparse_posterior` with ``randomness`` gives where its
    decided detection is 1, at a fraction of the cost: each colour group draws the detection of all
    its tiles from the absent trajectory's parameters, then redraws, with the same uniform numbers,
    the tiles near earlier sources whose parameters those sources change; nothing of size (B, Ht, Wt)
    is kept beyond the group.

    Parameters
    ----------
    encoder
        The encoder (its head, context embedding and factors).
    trajectory
        Absent trajectory of B images (`AbsentTrajectory.repeat` for B samples of one image).
    randomness
        The samples' random numbers.

    Returns
    -------
    sources
        The sampled sources of all batch elements, group by group.
    """
    batch, n_rows, n_cols, _ = trajectory.hidden[0].shape
    reference = trajectory.hidden[0]
    change = _ContextChange((batch, n_rows, n_cols), reference.shape[-1], reference)
    streams = {factor.name: stream for stream, factor in enumerate(encoder.factors)}
    detection = encoder.factors[streams["detection"]]
    found: list[SampledSources] = []
    for group in range(N_GROUPS):
        row, col = divmod(group, 2)
        group_params = {name: value[:, row::2, col::2] for name, value in trajectory.params.items()}
        uniform = randomness.uniform(
            streams["detection"],
            group_params["detection"].shape[:3],
            1,
            reference.device,
            reference.dtype,
            (row, col),
            2,
        )
        decided = detection.sample(group_params["detection"], uniform)[..., 0] > 0.5
        recomputed = None
        if found:
            images, rows, cols = _tiles_near(
                torch.cat([part.images for part in found]),
                torch.cat([part.rows for part in found]),
                torch.cat([part.cols for part in found]),
                (batch, n_rows, n_cols),
                row,
                col,
            )
            new_params = _head_at(encoder, trajectory.hidden[group], change, images, rows, cols)
            sub_rows, sub_cols = rows // 2, cols // 2
            redrawn = detection.sample(new_params["detection"], uniform[images, sub_rows, sub_cols])
            decided[images, sub_rows, sub_cols] = redrawn[..., 0] > 0.5
            recomputed = (images, sub_rows, sub_cols, new_params)
        images, sub_rows, sub_cols = torch.nonzero(decided, as_tuple=True)
        if images.numel() == 0:
            continue
        params = {
            name: _gather_tiles(value, images, sub_rows, sub_cols) for name, value in group_params.items()
        }
        if recomputed is not None and recomputed[0].numel():
            # Both tile lists are in raster order, so a binary search finds the recomputed ones.
            group_rows, group_cols = decided.shape[1:]
            recomputed_flat = (recomputed[0] * group_rows + recomputed[1]) * group_cols + recomputed[2]
            present_flat = (images * group_rows + sub_rows) * group_cols + sub_cols
            position = torch.searchsorted(recomputed_flat, present_flat).clamp(
                max=recomputed_flat.numel() - 1
            )
            hit = recomputed_flat[position] == present_flat
            for name, value in params.items():
                value[hit] = recomputed[3][name][position[hit]]
        rows, cols = row + 2 * sub_rows, col + 2 * sub_cols
        values = {"detection": torch.ones_like(params["detection"])}
        for factor in encoder.factors:
            if factor.name == "detection":
                continue
            uniform_at = randomness.uniform_at(
                streams[factor.name], images, rows, cols, factor.dims, reference.dtype
            )
            values[factor.name] = factor.sample(params[factor.name], uniform_at)
        if group < N_GROUPS - 1:
            _add_context(encoder, change, values, images, rows, cols)
        found.append(SampledSources(images, rows, cols, params, values))
    if found:
        return SampledSources.concatenate(found)
    empty = torch.zeros(0, dtype=torch.int64, device=reference.device)
    return SampledSources(
        empty,
        empty,
        empty,
        {name: value.new_zeros(0, value.shape[-1]) for name, value in trajectory.params.items()},
        {factor.name: reference.new_zeros(0, factor.dims) for factor in encoder.factors},
    )
