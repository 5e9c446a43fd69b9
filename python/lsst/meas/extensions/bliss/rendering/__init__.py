"""Light profiles, point-spread functions and the batched torch renderer, with GalSim as its reference."""

from ._galsim_reference import *
from ._knots import *
from ._profiles import *
from ._psf import *
from ._render import *
