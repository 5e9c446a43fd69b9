"""Inference on images: posterior summaries and samples of tile catalogs, and chunked full-frame inference."""

from ._frame import *
from ._heap import *
from ._inference import *
from ._limits import *
