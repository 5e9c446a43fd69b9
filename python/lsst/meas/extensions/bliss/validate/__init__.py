"""``bliss-validate``: the validation report of a BLISS model against SEP and photutils.

Held-out simulated scenes (the default conditions, three PSF FWHMs, half and
double the source density), every metric of ``doc/lsst.meas.extensions.bliss/metrics.rst`` for
the three methods on the same images, BLISS's calibration, the two-galaxy
separation sweep and the tile-boundary check, written as ``metrics.json``
plus an HTML page of PNG figures.  Pure numpy/torch/matplotlib: no
``lsst.*`` imports (the pipeline's `BlissValidateTask` uses the core's
`catalog_scores`).
"""

from ._report import *
from ._scenes import *
from ._scores import *
from ._sweeps import *
