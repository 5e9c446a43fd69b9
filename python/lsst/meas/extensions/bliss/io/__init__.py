"""The model file: encoder and autoencoder weights as safetensors, with a JSON description of how
they were trained; and the atomic writes every file the package writes goes through."""

from ._atomic import *
from ._model_io import *
