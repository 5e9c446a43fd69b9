"""BLISS, the Bayesian Light Source Separator, for the Rubin Science Pipelines.

The sub-packages imported here form the pure torch/numpy core; they never
import ``lsst.*``.  Their public names are re-exported, so
``from lsst.meas.extensions.bliss import infer_frame`` works whichever
sub-package defines the name.  The Butler-facing layer lives in ``pipeline``,
the command-line programs in ``cli``, the benchmark suites in ``bench`` and
the validation report in ``validate``.
"""

from .baselines import *
from .catalog import *
from .deblend import *
from .inference import *
from .io import *
from .metrics import *
from .network import *
from .rendering import *
from .runtime import *
from .simulation import *
from .survey import *
from .training import *
from .version import *
