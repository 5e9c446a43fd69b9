"""Scores of catalogs against their truth: matching, detection, calibration of the posterior, residuals."""

from ._calibration import *
from ._catalog_scores import *
from ._detection import *
from ._matching import *
from ._residuals import *
from ._shredding import *
