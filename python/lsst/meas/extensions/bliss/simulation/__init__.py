"""The prior over sources and the image simulator that draws training and validation scenes from it."""

from ._config import *
from ._galaxy_stamps import *
from ._prior import *
from ._simulate import *
