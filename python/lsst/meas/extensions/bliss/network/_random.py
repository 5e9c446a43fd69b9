"""Counter-based random numbers keyed by tile, so that posterior samples do not depend on chunking.

A sequential generator hands out numbers in the order tiles are visited, so
the sample a tile receives would change with the chunk layout of a large
image.  Here every uniform number is a hash of (seed, sample index, image,
global tile row, global tile column, stream, component): the same tile gets
the same numbers whether the image is processed whole or in chunks, on any
device.
"""

from __future__ import annotations

__all__ = ["TileRandomness"]

import dataclasses

import torch

_MASK32 = 0xFFFFFFFF


def _mix32(x: int) -> int:
    """A 32-bit integer hash (the "lowbias32" finalizer) of a Python int < 2**32."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def _as_int32(value: int) -> int:
    """The int32 whose two's-complement bits are those of ``0 <= value < 2**32``."""
    return value - 2**32 if value >= 2**31 else value


def _mix32_tensor(x: torch.Tensor) -> torch.Tensor:
    """`_mix32` of every element of an int32 tensor of 32-bit patterns.

    The products wrap around in two's complement, and the right shifts are masked to shift in zeros
    as unsigned ones do; int32 moves half the bytes of int64, which makes it faster.
    """
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * _as_int32(0x7FEB352D)
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * _as_int32(0x846CA68B)
    return x ^ ((x >> 16) & 0xFFFF)


@dataclasses.dataclass(frozen=True)
class TileRandomness:
    """Uniform random numbers per tile, reproducible from a seed.

    Attributes
    ----------
    seed
        Seed of the whole draw.
    sample_index
        Which posterior sample (each gets independent numbers).
    tile_origin
        Global ``(row, col)`` tile index of the first tile of the tensors
        being sampled (non-zero for a chunk of a larger image).
    sample_indices
        If given, the batch dimension of the tensors holds several samples of
        one image: batch element ``b`` gets the numbers of sample
        ``sample_indices[b]`` of image 0 (and ``sample_index`` is ignored), so
        samples drawn together equal samples drawn one at a time.
    """

    seed: int
    sample_index: int = 0
    tile_origin: tuple[int, int] = (0, 0)
    sample_indices: tuple[int, ...] | None = None

    def uniform(
        self,
        stream: int,
        shape: tuple[int, int, int],
        n: int,
        device: torch.device,
        dtype: torch.dtype,
        offset: tuple[int, int] = (0, 0),
        stride: int = 1,
    ) -> torch.Tensor:
        """Uniform numbers in (0, 1), shape ``shape + (n,)``.

        Parameters
        ----------
        stream
            Index of the consumer (a factor), so that consumers are independent.
        shape
            ``(B, Ht, Wt)``: images and tiles.
        n
            Numbers per tile.
        offset, stride
            The tiles are ``offset + stride * (i, j)`` of the tensors this
            object's ``tile_origin`` refers to (a sublattice of them).
        """
        batch, n_rows, n_cols = shape
        images = torch.arange(batch, dtype=torch.int64, device=device)[:, None, None, None]
        rows = (
            torch.arange(n_rows, dtype=torch.int64, device=device)[None, :, None, None] * stride + offset[0]
        )
        cols = (
            torch.arange(n_cols, dtype=torch.int64, device=device)[None, None, :, None] * stride + offset[1]
        )
        components = torch.arange(n, dtype=torch.int64, device=device)[None, None, None, :]
        return self._uniform(stream, images, rows, cols, components, dtype)

    def uniform_at(
        self,
        stream: int,
        images: torch.Tensor,
        rows: torch.Tensor,
        cols: torch.Tensor,
        n: int,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """The numbers `uniform` gives the listed tiles, shape (P, n).

        Parameters
        ----------
        stream
            Index of the consumer (a factor).
        images, rows, cols
            Image index and tile row and column (of the tensors ``tile_origin``
            refers to) of each of ``P`` tiles, int64, shape (P,).
        n
            Numbers per tile.
        """
        components = torch.arange(n, dtype=torch.int64, device=rows.device)[None, :]
        return self._uniform(stream, images[:, None], rows[:, None], cols[:, None], components, dtype)

    def _uniform(
        self,
        stream: int,
        images: torch.Tensor,
        rows: torch.Tensor,
        cols: torch.Tensor,
        components: torch.Tensor,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        # The key of (seed, sample, stream) is hashed in Python: as tensor operations on one element each
        # it cost more than the per-tile hashes of a small chunk.
        key = _mix32(_mix32(self.seed & _MASK32) ^ ((self.seed >> 32) & _MASK32))

        def sample_key(index: int) -> int:
            return _mix32(_mix32(key ^ (index & _MASK32)) ^ (stream & _MASK32))

        if self.sample_indices is None:
            bits = _mix32_tensor(images.to(torch.int32) ^ _as_int32(sample_key(self.sample_index)))
        else:
            # Batch element b holds sample sample_indices[b] of image 0.
            keys = [_as_int32(_mix32(sample_key(index))) for index in self.sample_indices]
            bits = torch.tensor(keys, dtype=torch.int32, device=rows.device)[images]
        # Casting to int32 keeps each counter's low 32 bits.
        for counter in (rows + self.tile_origin[0], cols + self.tile_origin[1], components):
            bits = _mix32_tensor(bits ^ counter.to(torch.int32))
        return (((bits >> 8) & 0xFFFFFF).to(dtype) + 0.5) * (1.0 / 2**24)
