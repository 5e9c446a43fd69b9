"""Source catalogs in the two layouts BLISS needs: per tile and per image.

`TileCatalog` holds up to ``K`` sources per ``T x T``-pixel tile in
fixed-size tensors, the layout of the encoder's variational posterior.
`FullCatalog` holds up to ``M`` sources per image as padded lists, the layout
of truth tables, renderers and output catalogs.  Both carry the same
per-source fields (`SOURCE_FIELDS`) and convert into each other.

Positions follow the LSST convention: ``x`` is the column, ``y`` the row, and
the centre of pixel ``(row, col)`` is at ``(x, y) = (col, row)``.  Tile
``(i, j)`` covers ``y`` in ``[i T - 0.5, (i + 1) T - 0.5)`` and ``x`` in
``[j T - 0.5, (j + 1) T - 0.5)``.
"""

from __future__ import annotations

__all__ = ["empty_source_fields", "SOURCE_FIELDS", "FullCatalog", "TileCatalog"]

import dataclasses

import torch

SOURCE_FIELDS: tuple[str, ...] = (
    "flux_njy",
    "is_galaxy",
    "disk_frac",
    "disk_hlr_arcsec",
    "disk_q",
    "bulge_hlr_arcsec",
    "bulge_q",
    "position_angle_rad",
)
"""Per-source fields shared by both layouts (besides the position).

``flux_njy`` total flux in nJy; ``is_galaxy`` bool; ``disk_frac`` the fraction
of a galaxy's flux in its exponential disk; ``*_hlr_arcsec`` half-light radii
in arcsec; ``*_q`` axis ratios in (0, 1]; ``position_angle_rad`` the major
axis angle counter-clockwise from +x.  Galaxy fields of stars are zero
(axis ratios one)."""


def empty_source_fields(
    shape: tuple[int, ...], device: torch.device, dtype: torch.dtype, names: tuple[str, ...] = SOURCE_FIELDS
) -> dict[str, torch.Tensor]:
    """Padding values: zeros, False for ``is_galaxy`` and one for axis ratios."""
    fields = {name: torch.zeros(shape, device=device, dtype=dtype) for name in names}
    fields["is_galaxy"] = torch.zeros(shape, device=device, dtype=torch.bool)
    fields["disk_q"] = torch.ones(shape, device=device, dtype=dtype)
    fields["bulge_q"] = torch.ones(shape, device=device, dtype=dtype)
    return fields


@dataclasses.dataclass
class FullCatalog:
    """Per-image source lists, padded to ``M`` entries.

    Attributes
    ----------
    height, width
        Image size in pixels.
    n_sources
        Number of valid entries per image, shape (B,), int64; entries
        ``[:n_sources[b]]`` of image ``b`` are valid, the rest is padding.
    x, y
        Positions in pixels, shape (B, M).
    fields
        `SOURCE_FIELDS` tensors of shape (B, M), plus any others (e.g. the
        uncertainties of an estimated catalog), which conversions carry along.
    """

    height: int
    width: int
    n_sources: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    fields: dict[str, torch.Tensor]

    def __post_init__(self) -> None:
        shape = self.x.shape
        if self.x.ndim != 2 or self.y.shape != shape or self.n_sources.shape != shape[:1]:
            raise ValueError(
                "FullCatalog needs x, y of shape (B, M) and n_sources of shape (B,); got "
                f"x {tuple(self.x.shape)}, y {tuple(self.y.shape)}, n_sources {tuple(self.n_sources.shape)}."
            )
        missing = set(SOURCE_FIELDS) - set(self.fields)
        if missing:
            raise ValueError(f"FullCatalog is missing field(s) {sorted(missing)}.")
        for name, value in self.fields.items():
            if value.shape != shape:
                raise ValueError(
                    f"FullCatalog field {name!r} has shape {tuple(value.shape)}; expected {shape}."
                )

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    @property
    def max_sources(self) -> int:
        return self.x.shape[1]

    @property
    def is_valid(self) -> torch.Tensor:
        """True for real (non-padding) entries, shape (B, M)."""
        slots = torch.arange(self.max_sources, device=self.x.device)
        return slots[None, :] < self.n_sources[:, None]

    def to(self, device: torch.device | str) -> FullCatalog:
        """Copy to a device."""
        return FullCatalog(
            self.height,
            self.width,
            self.n_sources.to(device),
            self.x.to(device),
            self.y.to(device),
            {name: value.to(device) for name, value in self.fields.items()},
        )

    def select(self, keep: torch.Tensor) -> FullCatalog:
        """The entries where ``keep`` is True (padding is never kept), compacted to the front.

        Parameters
        ----------
        keep
            Shape (B, M), bool.

        Returns
        -------
        catalog
            Same image size and batch, ``max(n kept)`` entries per image, in
            their original order.
        """
        keep = keep & self.is_valid
        # A stable sort of "not kept" moves the kept entries to the front in their original order.
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
        n_sources = keep.sum(dim=1)
        width = int(n_sources.max()) if self.batch_size else 0
        order = order[:, :width]

        def gather(values: torch.Tensor) -> torch.Tensor:
            return torch.gather(values, 1, order)

        return FullCatalog(
            self.height,
            self.width,
            n_sources,
            gather(self.x),
            gather(self.y),
            {name: gather(value) for name, value in self.fields.items()},
        )

    def concatenate(self, other: FullCatalog) -> FullCatalog:
        """The sources of both catalogs, image by image: this one's first, then ``other``'s.

        Raises
        ------
        ValueError
            If the catalogs differ in batch size, image size or fields.
        """
        if (other.batch_size, other.height, other.width) != (self.batch_size, self.height, self.width):
            raise ValueError(
                f"Cannot concatenate a catalog of {other.batch_size} images of {other.height}x{other.width} "
                f"to one of {self.batch_size} images of {self.height}x{self.width}."
            )
        if set(other.fields) != set(self.fields):
            differing = sorted(set(other.fields) ^ set(self.fields))
            raise ValueError(f"Cannot concatenate catalogs with different fields: {differing}.")
        every_slot = torch.full_like(self.n_sources, self.max_sources + other.max_sources)
        joined = FullCatalog(
            self.height,
            self.width,
            every_slot,
            torch.cat([self.x, other.x], dim=1),
            torch.cat([self.y, other.y], dim=1),
            {name: torch.cat([value, other.fields[name]], dim=1) for name, value in self.fields.items()},
        )
        return joined.select(torch.cat([self.is_valid, other.is_valid], dim=1))

    def to_tile_catalog(self, tile_size: int, max_sources_per_tile: int) -> TileCatalog:
        """Assign sources to tiles.

        Sources outside the image are dropped; where a tile has more than
        ``max_sources_per_tile`` sources, the brightest are kept (the number
        dropped is in the result's ``n_dropped``).

        Parameters
        ----------
        tile_size
            Tile side ``T`` in pixels; ``height`` and ``width`` must be multiples of it.
        max_sources_per_tile
            ``K``.

        Returns
        -------
        catalog
            Tile catalog of shape (B, H / T, W / T, K).
        """
        if tile_size <= 0 or self.height % tile_size or self.width % tile_size:
            raise ValueError(
                f"Image size {self.height}x{self.width} is not a multiple of tile_size={tile_size}; "
                "pad or crop the image to whole tiles."
            )
        if max_sources_per_tile < 1:
            raise ValueError(f"max_sources_per_tile={max_sources_per_tile} must be >= 1.")
        n_rows, n_cols = self.height // tile_size, self.width // tile_size
        device, batch = self.x.device, self.batch_size
        tile_x = self.x + 0.5
        tile_y = self.y + 0.5
        col = torch.floor(tile_x / tile_size).long()
        row = torch.floor(tile_y / tile_size).long()
        inside = self.is_valid & (col >= 0) & (col < n_cols) & (row >= 0) & (row < n_rows)
        n_tiles = n_rows * n_cols
        image = torch.arange(batch, device=device)[:, None].expand_as(col)
        key = (image * n_tiles + row * n_cols + col)[inside]
        brightness = self.fields["flux_njy"][inside]
        # Brightest first within a tile: sort by flux, then stably by tile.
        by_flux = torch.argsort(brightness, descending=True, stable=True)
        order = by_flux[torch.argsort(key[by_flux], stable=True)]
        sorted_key = key[order]
        first_of_key = torch.searchsorted(sorted_key, sorted_key, right=False)
        rank = torch.arange(sorted_key.numel(), device=device) - first_of_key
        kept = rank < max_sources_per_tile
        target = sorted_key[kept] * max_sources_per_tile + rank[kept]
        source = order[kept]
        total_slots = batch * n_tiles * max_sources_per_tile
        shape = (batch, n_rows, n_cols, max_sources_per_tile)

        def scatter(values: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
            flat = template.reshape(-1).clone()
            flat[target] = values[inside][source].to(flat.dtype)
            return flat.reshape(shape)

        names = tuple(self.fields)
        fields = empty_source_fields(shape, device, self.x.dtype, names)
        fields = {name: scatter(self.fields[name], fields[name]) for name in names}
        zeros = torch.zeros(total_slots, device=device, dtype=self.x.dtype).reshape(shape)
        loc_x = scatter(tile_x / tile_size - col, zeros)
        loc_y = scatter(tile_y / tile_size - row, zeros)
        counts = torch.zeros(batch * n_tiles, device=device, dtype=torch.long)
        counts.index_add_(0, sorted_key[kept], torch.ones_like(sorted_key[kept]))
        return TileCatalog(
            tile_size=tile_size,
            n_sources=counts.reshape(batch, n_rows, n_cols),
            locations=torch.stack([loc_x, loc_y], dim=-1),
            fields=fields,
            n_dropped=int((~kept).sum()),
        )


@dataclasses.dataclass
class TileCatalog:
    """Per-tile sources in fixed-size tensors.

    Attributes
    ----------
    tile_size
        Tile side ``T`` in pixels.
    n_sources
        Sources per tile, shape (B, Ht, Wt), int64, at most ``K``.
    locations
        Position within the tile as fractions of the tile side,
        ``(x_frac, y_frac)`` in [0, 1), shape (B, Ht, Wt, K, 2).
    fields
        `SOURCE_FIELDS` tensors of shape (B, Ht, Wt, K); slots beyond
        ``n_sources`` hold the padding values.
    n_dropped
        Sources that did not fit (more than ``K`` in a tile) when this
        catalog was made from a `FullCatalog`.
    """

    tile_size: int
    n_sources: torch.Tensor
    locations: torch.Tensor
    fields: dict[str, torch.Tensor]
    n_dropped: int = 0

    def __post_init__(self) -> None:
        if self.n_sources.ndim != 3 or self.locations.ndim != 5 or self.locations.shape[-1] != 2:
            raise ValueError(
                f"TileCatalog needs n_sources (B, Ht, Wt) and locations (B, Ht, Wt, K, 2); got "
                f"{tuple(self.n_sources.shape)} and {tuple(self.locations.shape)}."
            )
        missing = set(SOURCE_FIELDS) - set(self.fields)
        if missing:
            raise ValueError(f"TileCatalog is missing field(s) {sorted(missing)}.")
        for name, value in self.fields.items():
            if value.shape != self.locations.shape[:-1]:
                raise ValueError(
                    f"TileCatalog field {name!r} has shape {tuple(value.shape)}; "
                    f"expected {tuple(self.locations.shape[:-1])}."
                )

    @property
    def batch_size(self) -> int:
        return self.n_sources.shape[0]

    @property
    def n_tiles_h(self) -> int:
        return self.n_sources.shape[1]

    @property
    def n_tiles_w(self) -> int:
        return self.n_sources.shape[2]

    @property
    def max_sources_per_tile(self) -> int:
        return self.locations.shape[3]

    @property
    def is_valid(self) -> torch.Tensor:
        """True for occupied slots, shape (B, Ht, Wt, K)."""
        slots = torch.arange(self.max_sources_per_tile, device=self.n_sources.device)
        return slots < self.n_sources[..., None]

    def to(self, device: torch.device | str) -> TileCatalog:
        """Copy to a device."""
        return TileCatalog(
            self.tile_size,
            self.n_sources.to(device),
            self.locations.to(device),
            {name: value.to(device) for name, value in self.fields.items()},
            self.n_dropped,
        )

    def crop(self, n_tiles: int) -> TileCatalog:
        """Remove ``n_tiles`` tiles from every side (e.g. a simulation border)."""
        if n_tiles == 0:
            return self
        window = (slice(None), slice(n_tiles, -n_tiles), slice(n_tiles, -n_tiles))
        return TileCatalog(
            self.tile_size,
            self.n_sources[window],
            self.locations[window],
            {name: value[window] for name, value in self.fields.items()},
            self.n_dropped,
        )

    def pixel_positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Absolute positions ``x, y`` in pixels, each of shape (B, Ht, Wt, K)."""
        device, dtype = self.locations.device, self.locations.dtype
        cols = torch.arange(self.n_tiles_w, device=device, dtype=dtype)[None, None, :, None]
        rows = torch.arange(self.n_tiles_h, device=device, dtype=dtype)[None, :, None, None]
        x = (cols + self.locations[..., 0]) * self.tile_size - 0.5
        y = (rows + self.locations[..., 1]) * self.tile_size - 0.5
        return x, y

    def to_full_catalog(self) -> FullCatalog:
        """Gather the occupied slots into per-image lists (row-major tile order).

        Returns
        -------
        catalog
            Full catalog with ``M`` the largest number of sources in an image.
        """
        batch = self.batch_size
        valid = self.is_valid.reshape(batch, -1)
        n_sources = valid.sum(dim=1)
        max_sources = int(n_sources.max()) if batch > 0 else 0
        # Stable sort puts the valid slots first, in their original order.
        order = torch.argsort((~valid).to(torch.uint8), dim=1, stable=True)[:, :max_sources]
        x, y = self.pixel_positions()

        def gather(values: torch.Tensor) -> torch.Tensor:
            return torch.gather(values.reshape(batch, -1), 1, order)

        slots = torch.arange(max_sources, device=valid.device)[None, :] < n_sources[:, None]
        padding = empty_source_fields(
            (batch, max_sources), valid.device, self.locations.dtype, tuple(self.fields)
        )
        fields = {name: torch.where(slots, gather(self.fields[name]), padding[name]) for name in self.fields}
        zero = torch.zeros((), device=valid.device, dtype=x.dtype)
        return FullCatalog(
            height=self.n_tiles_h * self.tile_size,
            width=self.n_tiles_w * self.tile_size,
            n_sources=n_sources,
            x=torch.where(slots, gather(x), zero),
            y=torch.where(slots, gather(y), zero),
            fields=fields,
        )
