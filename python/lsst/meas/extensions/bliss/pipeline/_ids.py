"""Source IDs unique across visits and detectors.

This follows the scheme of ``lsst.meas.base.IdGenerator`` (which is not
available without the full stack): the visit+detector data ID is packed into
the low bits of a 64-bit integer by pipe_base's `ObservationDimensionPacker`,
a release number above it, and a per-catalog counter (from 1) in the high bits.
"""

from __future__ import annotations

__all__ = ["SourceIdGenerator", "SourceIdGeneratorConfig"]

import numpy as np

from lsst.daf.butler import DataCoordinate
from lsst.pex.config import Config, ConfigField, Field
from lsst.pipe.base import ObservationDimensionPacker, ObservationDimensionPackerConfig

_ID_BITS = 63
"""Usable bits of a signed 64-bit ID."""


class SourceIdGeneratorConfig(Config):
    """How source IDs are made from a visit+detector data ID."""

    release_id = Field[int](
        doc="Identifier of this data release or processing run, in [0, n_releases).", default=0
    )
    n_releases = Field[int](doc="Number of release identifiers to reserve bits for.", default=1)
    packer = ConfigField[ObservationDimensionPackerConfig](
        doc="Packing of visit+detector into an integer (defaults from the instrument record)."
    )

    def validate(self) -> None:
        super().validate()
        if self.n_releases < 1 or not 0 <= self.release_id < self.n_releases:
            raise ValueError(
                f"release_id={self.release_id} must lie in [0, n_releases={self.n_releases}) "
                "with n_releases >= 1."
            )

    def apply(self, data_id: DataCoordinate) -> SourceIdGenerator:
        """The generator of one visit+detector data ID (expanded unless the packer sizes are set)."""
        packer = ObservationDimensionPacker(data_id, self.packer)
        packed = int(packer.pack(data_id, returnMaxBits=False))
        release_bits = (self.n_releases - 1).bit_length()
        catalog_id = packed * self.n_releases + self.release_id
        return SourceIdGenerator(catalog_id, packer.maxBits + release_bits)


class SourceIdGenerator:
    """IDs for the sources of one catalog.

    Parameters
    ----------
    catalog_id
        Packed data ID and release, stored in the low ``reserved_bits``.
    reserved_bits
        Bits reserved for ``catalog_id``; the counter uses the rest.
    """

    def __init__(self, catalog_id: int, reserved_bits: int) -> None:
        if catalog_id >= 1 << reserved_bits:
            raise ValueError(f"catalog_id {catalog_id} does not fit in {reserved_bits} bits.")
        self.catalog_id = catalog_id
        self.reserved_bits = reserved_bits

    @property
    def max_sources(self) -> int:
        """Most sources one catalog can number."""
        return (1 << (_ID_BITS - self.reserved_bits)) - 1

    def arange(self, n: int) -> np.ndarray:
        """IDs of ``n`` sources, shape (n,), int64.

        Raises
        ------
        ValueError
            If ``n`` exceeds `max_sources`.
        """
        if n > self.max_sources:
            raise ValueError(f"{n} sources exceed the {self.max_sources} IDs available per catalog.")
        counter = np.arange(1, n + 1, dtype=np.int64)
        return (counter << np.int64(self.reserved_bits)) | np.int64(self.catalog_id)
