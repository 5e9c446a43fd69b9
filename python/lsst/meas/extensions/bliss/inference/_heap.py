"""Allocator settings under which large inference tensors reuse freed memory on a CPU.

glibc serves each allocation above its mmap threshold (at most 32 MiB by
default) with a fresh mapping and returns it to the kernel when it is freed.
The activations of a detector-sized chunk are hundreds of MB each, so every
layer would write to new pages, and the kernel faults in and zeroes each of
them first, which costs about as much as the arithmetic on a virtual
machine with few cores.  With a higher
threshold the activations come from the heap and reuse the pages a previous
layer freed.
"""

from __future__ import annotations

__all__ = ["reuse_freed_memory"]

import ctypes
import functools
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD_BYTES = 1 << 30
"""Allocations below this size come from the heap (glibc's ``M_MMAP_THRESHOLD``)."""

TRIM_THRESHOLD_BYTES = (1 << 31) - 1
"""Free memory at the top of the heap kept for reuse rather than returned (``M_TRIM_THRESHOLD``)."""


@functools.cache
def reuse_freed_memory() -> bool:
    """Let large allocations of this process reuse freed heap memory (glibc on Linux only).

    The setting is process-wide and permanent: the resident memory of the
    process no longer drops when the inference tensors are freed, and the
    next call reuses it.  Its peak is unchanged.

    Returns
    -------
    applied
        Whether the allocator accepted the settings (False on other
        platforms or C libraries, where nothing is changed).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
