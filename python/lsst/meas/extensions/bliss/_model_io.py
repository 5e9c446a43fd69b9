"""The model package: encoder and galaxy-autoencoder weights in safetensors with their JSON description.

One ``.safetensors`` file holds the weights (names prefixed ``encoder.`` and
``autoencoder.``) and, in its metadata, a JSON document (key
``"bliss_model"``) with the architectures, the survey conditions, prior and
simulation settings the model was trained for, the package version, the
training summary, and a SHA-256 digest of the weights.  Loading never
unpickles; it rebuilds the architectures from the JSON and checks every
tensor's name and shape and the digest.  Format version 2 (encoder only,
unprefixed names) is still read.
"""

from __future__ import annotations

__all__ = [
    "MODEL_FORMAT_VERSION",
    "BlissModel",
    "MissingAutoencoderError",
    "ModelFormatError",
    "default_model_path",
    "load_default_model",
]

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from ._atomic import atomic_write_path
from ._autoencoder import AutoencoderConfig, GalaxyAutoencoder
from ._conditions import SurveyConditions
from ._encoder import BlissEncoder, EncoderConfig
from ._prior import PriorConfig
from ._simulate import SimulatorConfig
from .version import __version__

MODEL_FORMAT_VERSION = 3
_READABLE_FORMAT_VERSIONS = (2, 3)
_ENCODER_PREFIX, _AUTOENCODER_PREFIX = "encoder.", "autoencoder."
_METADATA_KEY = "bliss_model"
_REQUIRED_KEYS = (
    "format_version",
    "package_version",
    "encoder",
    "conditions",
    "prior",
    "simulator",
    "training",
    "weights_sha256",
)
DEFAULT_MODEL_NAME = "bliss_lsst_r_default.safetensors"


class ModelFormatError(ValueError):
    """A model file that cannot be loaded: truncated, tampered with, incomplete or incompatible."""


class MissingAutoencoderError(ValueError):
    """A model package without a galaxy autoencoder, used where one is required."""


def _weights_digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


@dataclasses.dataclass
class BlissModel:
    """A trained encoder (and galaxy autoencoder) with everything needed to use them correctly.

    Attributes
    ----------
    encoder
        The network.
    conditions
        Nominal survey conditions of the training simulations.
    prior
        Source prior of the training simulations.
    simulator
        Simulation settings (tile size, PSF FWHM range, ...).
    training
        Training summary (command, seed, steps, wall time, validation loss, ...;
        the autoencoder's under ``"autoencoder"``).
    package_version
        Version of this package that wrote the model.
    autoencoder
        The galaxy autoencoder, or None for a package without one (catalogs
        only; deblending then needs the parametric galaxy models).
    """

    encoder: BlissEncoder
    conditions: SurveyConditions
    prior: PriorConfig
    simulator: SimulatorConfig
    training: dict[str, Any] = dataclasses.field(default_factory=dict)
    package_version: str = __version__
    autoencoder: GalaxyAutoencoder | None = None

    def require_autoencoder(self, purpose: str) -> GalaxyAutoencoder:
        """The autoencoder, or a `MissingAutoencoderError` that says what needs it."""
        if self.autoencoder is None:
            raise MissingAutoencoderError(
                f"{purpose} needs a galaxy autoencoder, but this model package has none. Train one into "
                "the package (bliss-train CONFIG --output DIR --autoencoder-only --init MODEL) or use "
                "the parametric galaxy models."
            )
        return self.autoencoder

    def require_held_out_seed(self, seed: int, label: str = "seed") -> None:
        """Refuse a seed of this model's training or validation images for held-out simulations.

        Raises
        ------
        ValueError
            Naming the seed (as ``label``, e.g. the command-line option that set it).
        """
        if seed in {self.training.get("seed"), self.training.get("validation_seed")}:
            raise ValueError(f"{label} {seed} was used to train or validate this model; pick another.")

    def describe(self) -> dict[str, Any]:
        """The JSON document stored with the weights (without the digest)."""
        return {
            "format_version": MODEL_FORMAT_VERSION,
            "package_version": self.package_version,
            "encoder": self.encoder.config.to_dict(),
            "conditions": self.conditions.to_dict(),
            "prior": self.prior.to_dict(),
            "simulator": self.simulator.to_dict(),
            "training": self.training,
            "autoencoder": None if self.autoencoder is None else self.autoencoder.config.to_dict(),
        }

    def to_bytes(self) -> bytes:
        """Serialize to safetensors bytes."""
        networks = [(_ENCODER_PREFIX, self.encoder)]
        if self.autoencoder is not None:
            networks.append((_AUTOENCODER_PREFIX, self.autoencoder))
        tensors = {
            prefix + name: value.detach().cpu().contiguous()
            for prefix, network in networks
            for name, value in network.state_dict().items()
        }
        document = self.describe()
        document["weights_sha256"] = _weights_digest(tensors)
        return save_safetensors_bytes(tensors, metadata={_METADATA_KEY: json.dumps(document, sort_keys=True)})

    def save(self, path: str | Path) -> Path:
        """Write the model to ``path`` (a ``.safetensors`` file), atomically.

        A partially written file never replaces an existing model: the bytes
        go to a new temporary file in the same directory (`atomic_write_path`)
        that is renamed at the end.
        """
        path = Path(path)
        if path.suffix != ".safetensors":
            raise ValueError(f"Model path {path} must end in .safetensors.")
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.to_bytes()
        with atomic_write_path(path) as temporary:
            temporary.write_bytes(data)
        return path

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "model") -> BlissModel:
        """Deserialize; ``source`` names the file in error messages.

        Raises
        ------
        ModelFormatError
            If the bytes are not a complete safetensors file, lack the JSON
            document or one of its keys, were written by an incompatible
            format version, do not match the recorded architecture, or fail
            the weights digest.
        """
        try:
            tensors = load_safetensors_bytes(data)
            header_length = int.from_bytes(data[:8], "little")
            header = json.loads(data[8 : 8 + header_length])
        except (SafetensorError, ValueError, json.JSONDecodeError) as err:
            raise ModelFormatError(
                f"{source} is not a complete safetensors model file ({err}); it may be truncated. "
                "Re-create it with bliss-train or copy it again."
            ) from err
        metadata = header.get("__metadata__") or {}
        if _METADATA_KEY not in metadata:
            raise ModelFormatError(
                f"{source} has no '{_METADATA_KEY}' JSON document; it is not a BLISS model."
            )
        try:
            document = json.loads(metadata[_METADATA_KEY])
        except json.JSONDecodeError as err:
            raise ModelFormatError(
                f"{source}: the '{_METADATA_KEY}' JSON document is malformed ({err})."
            ) from err
        missing = [key for key in _REQUIRED_KEYS if key not in document]
        if missing:
            raise ModelFormatError(f"{source}: the model description lacks key(s) {missing}.")
        version = document["format_version"]
        if version not in _READABLE_FORMAT_VERSIONS:
            raise ModelFormatError(
                f"{source} has model format version {version}; this package "
                f"({__version__}) reads versions {_READABLE_FORMAT_VERSIONS}. Use a matching package version."
            )
        if _weights_digest(tensors) != document["weights_sha256"]:
            raise ModelFormatError(
                f"{source}: the weights do not match their recorded SHA-256 digest; the file was modified "
                "or corrupted."
            )
        try:
            encoder = BlissEncoder(EncoderConfig.from_dict(document["encoder"]))
            autoencoder_config = document.get("autoencoder") if version >= 3 else None
            autoencoder = (
                None
                if autoencoder_config is None
                else GalaxyAutoencoder(AutoencoderConfig.from_dict(autoencoder_config))
            )
        except (TypeError, ValueError) as err:
            raise ModelFormatError(f"{source}: invalid network architecture ({err}).") from err
        networks = [("" if version == 2 else _ENCODER_PREFIX, encoder)]
        if autoencoder is not None:
            networks.append((_AUTOENCODER_PREFIX, autoencoder))
        expected = {
            prefix + name: tuple(value.shape)
            for prefix, network in networks
            for name, value in network.state_dict().items()
        }
        found = {name: tuple(value.shape) for name, value in tensors.items()}
        if expected != found:
            differences = sorted(set(expected.items()) ^ set(found.items()))[:6]
            raise ModelFormatError(
                f"{source}: weights do not fit the recorded architecture (first differences "
                f"{differences}); the file mixes two models."
            )
        for prefix, network in networks:
            network.load_state_dict(
                {name[len(prefix) :]: value for name, value in tensors.items() if name.startswith(prefix)}
                if prefix
                else tensors
            )
            network.eval()
        return cls(
            encoder=encoder,
            conditions=SurveyConditions.from_dict(document["conditions"]),
            prior=PriorConfig.from_dict(document["prior"]),
            simulator=SimulatorConfig.from_dict(document["simulator"]),
            training=document["training"],
            package_version=document["package_version"],
            autoencoder=autoencoder,
        )

    @classmethod
    def load(cls, path: str | Path) -> BlissModel:
        """Read a model file written by `save`.

        Raises
        ------
        FileNotFoundError
            If the file does not exist.
        ModelFormatError
            See `from_bytes`.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No BLISS model file at {path}.")
        return cls.from_bytes(path.read_bytes(), source=str(path))


def default_model_path() -> Path:
    """Where the packaged default model lives."""
    return Path(__file__).parent / "data" / DEFAULT_MODEL_NAME


def load_default_model() -> BlissModel:
    """Load the packaged default model (LSST single visit, r band).

    Raises
    ------
    FileNotFoundError
        If this installation does not include the default model.
    """
    return BlissModel.load(default_model_path())
