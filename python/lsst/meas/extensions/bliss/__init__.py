"""BLISS, the Bayesian Light Source Separator, for the Rubin Science Pipelines.

The modules imported here form the pure torch/numpy core (simulation,
rendering, catalogs); they never import ``lsst.*``.  The Butler-facing
pipeline layer lives in the ``pipeline`` subpackage.
"""

from ._autoencoder import *
from ._autoencoder_training import *
from ._catalog import *
from ._catalog_scores import *
from ._conditions import *
from ._deblend import *
from ._device import *
from ._encoder import *
from ._factors import *
from ._frame import *
from ._heap import *
from ._inference import *
from ._metrics import *
from ._model_fit import *
from ._model_io import *
from ._normalize import *
from ._prior import *
from ._profiles import *
from ._psf import *
from ._random import *
from ._render import *
from ._sep_baseline import *
from ._simulate import *
from ._training import *
from .version import *
