"""Scores of catalogs against their truth: matching, detection, calibration of the posterior, residuals."""

from ._catalog_scores import *
from ._metrics import *
