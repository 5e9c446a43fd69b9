"""Mask planes: the bits of simulated masks and the planes whose pixels are not valid network inputs."""

from __future__ import annotations

__all__ = ["DEFAULT_INVALID_MASK_PLANES", "MASK_PLANES", "invalid_mask_bits"]

MASK_PLANES: dict[str, int] = {
    "BAD": 0,
    "SAT": 1,
    "INTRP": 2,
    "CR": 3,
    "EDGE": 4,
    "DETECTED": 5,
    "DETECTED_NEGATIVE": 6,
    "SUSPECT": 7,
    "NO_DATA": 8,
}
"""Bit of each mask plane in simulated masks (the LSST default bit order)."""

DEFAULT_INVALID_MASK_PLANES: tuple[str, ...] = ("NO_DATA", "BAD", "SAT", "EDGE", "CR", "INTRP", "SUSPECT")
"""Mask planes whose pixels are invalid network inputs by default."""


def invalid_mask_bits(planes: tuple[str, ...] | list[str], bits: dict[str, int] | None = None) -> int:
    """Bit mask of the named mask planes.

    Parameters
    ----------
    planes
        Mask plane names.
    bits
        Plane name -> bit index; default `MASK_PLANES` (simulated images).

    Raises
    ------
    ValueError
        If a plane is not in ``bits``.
    """
    bits = MASK_PLANES if bits is None else bits
    unknown = [plane for plane in planes if plane not in bits]
    if unknown:
        raise ValueError(f"Unknown mask plane(s) {unknown}; known planes: {sorted(bits)}.")
    value = 0
    for plane in planes:
        value |= 1 << bits[plane]
    return value
