"""Training loops of the encoder and the galaxy autoencoder on simulated images."""

from ._autoencoder_training import *
from ._schedule import *
from ._training import *
