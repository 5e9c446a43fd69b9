"""The model file: encoder and autoencoder weights as safetensors, with a JSON description of how
they were trained."""

from ._model_io import *
