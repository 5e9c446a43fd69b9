"""The model file: encoder and autoencoder weights as safetensors, with a JSON description of how
they were trained; the atomic writes every file the package writes goes through; and where the
package's resource files (pipelines, config overrides, BPS and Butler configuration) are."""

from ._atomic import *
from ._model_io import *
from ._resources import *
