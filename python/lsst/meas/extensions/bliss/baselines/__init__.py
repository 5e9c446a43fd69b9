"""Classical detection and photometry baselines (SEP, photutils) run on the same images as BLISS."""

from ._photutils import *
from ._sep import *
