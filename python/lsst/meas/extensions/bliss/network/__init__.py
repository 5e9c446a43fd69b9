"""The neural networks: input normalisation, variational factors, the tiled encoder with its
checkerboard head, and the galaxy autoencoder."""

from ._autoencoder import *
from ._encoder import *
from ._factors import *
from ._normalize import *
from ._posterior import *
from ._random import *
from ._sparse_checkerboard import *
from ._stem import *
