"""Where and in which precision computations run (CPU or GPU)."""

from ._device import *
