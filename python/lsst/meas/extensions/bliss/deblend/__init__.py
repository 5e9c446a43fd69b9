"""Deblending: per-source models (galaxy autoencoder or parametric fit), deblended images and
their measurements."""

from ._deblend import *
from ._model_fit import *
