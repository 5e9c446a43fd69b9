"""Observing conditions of a visit (pixel scale, PSF, sky, calibration) and the mask planes of an exposure."""

from ._conditions import *
from ._masks import *
