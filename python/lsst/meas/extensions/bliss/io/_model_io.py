"""The model package: encoder and galaxy-autoencoder weights in safetensors with their JSON description.

One ``.safetensors`` file holds the weights (names prefixed ``encoder.`` and
``autoencoder.``) and, in its metadata, a JSON document (key
``"bliss_model"``) with the architectures, the survey conditions, prior and
simulation settings the model was trained for, the package version, the
training summary, a SHA-256 digest of the weights and a SHA-256 digest of the
whole file (``file_sha256``: every byte, the JSON description included, with
the digest's own 64 hex digits counted as zeros).  Loading never unpickles; it
checks the whole-file digest, validates every field of the description (no
unknown or missing field, each of its type and in its range; errors name the
file and the field), rebuilds the architectures from the JSON and checks every
tensor's name and shape and the weights digest.  The digests detect modified or
corrupted files; they are not a signature (whoever can write a file can also
rewrite its digests).

Format versions 2 and 3 (without the whole-file digest) are not loaded: their
description could have been changed unnoticed.  ``bliss-migrate-model FILE``
(`migrate_model_file`) checks such a file's weights digest, structure and
description, then writes the same model (bit-identical weights, the same
description) with the whole-file digest, and records the step in the
``training`` record's ``format_migrations`` list.  The migration is
deterministic (migrating a file twice gives the same bytes).  Migrate only
files you trust: a description edited before the migration cannot be told
from the original.
"""

from __future__ import annotations

__all__ = [
    "migrate_model_file",
    "default_training_recipe_path",
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
import types
import typing
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from ..network import AutoencoderConfig, BlissEncoder, EncoderConfig, GalaxyAutoencoder
from ..simulation import PriorConfig, SimulatorConfig
from ..survey import SurveyConditions
from ..version import __version__
from ._atomic import atomic_write_path

MODEL_FORMAT_VERSION = 4
_READABLE_FORMAT_VERSIONS = (4,)
# Versions written before the whole-file digest: not loaded, but migrated by `migrate_model_file`.
_MIGRATABLE_FORMAT_VERSIONS = (2, 3)
_ENCODER_PREFIX, _AUTOENCODER_PREFIX = "encoder.", "autoencoder."
_METADATA_KEY = "bliss_model"
_LEGACY_REQUIRED_KEYS = (
    "format_version",
    "package_version",
    "encoder",
    "conditions",
    "prior",
    "simulator",
    "training",
    "weights_sha256",
)
_REQUIRED_KEYS = (*_LEGACY_REQUIRED_KEYS, "autoencoder", "file_sha256")
_FILE_DIGEST_PLACEHOLDER = "0" * 64
"""What the ``file_sha256`` value is replaced with while the file's digest is computed."""
_MIGRATE_COMMAND = "bliss-migrate-model"
"""Command that rewrites a model file of an older format version in the current one."""
DEFAULT_MODEL_NAME = "bliss_lsst_default.safetensors"


class ModelFormatError(ValueError):
    """A model file that cannot be loaded: truncated, tampered with, incomplete or incompatible."""


class MissingAutoencoderError(ValueError):
    """A model package without a galaxy autoencoder, used where one is required."""


def _file_digest(data: bytes, recorded: str) -> str | None:
    """SHA-256 of a model file's bytes with its recorded ``file_sha256`` value zeroed.

    The digest covers every byte of the file, the safetensors header with the
    JSON description included, except the 64 hex digits that hold it.

    Parameters
    ----------
    data
        The whole file.
    recorded
        The ``file_sha256`` value of its description (`_FILE_DIGEST_PLACEHOLDER`
        while a file is written).

    Returns
    -------
    digest
        Hex digest, or None if ``recorded`` does not occur exactly once in
        the safetensors header (then the file cannot have been written by
        `BlissModel.to_bytes`).
    """
    header_end = 8 + int.from_bytes(data[:8], "little")
    value = recorded.encode("ascii")
    position = data.find(value, 8, header_end)
    if position < 0 or data.find(value, position + 1, header_end) >= 0:
        return None
    zeroed = data[:position] + _FILE_DIGEST_PLACEHOLDER.encode("ascii") + data[position + len(value) :]
    return hashlib.sha256(zeroed).hexdigest()


def _is_hex_digest(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _matches_type(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a dataclass field's annotation (JSON arrays stand for tuples; an
    integer is a valid float, a boolean is neither)."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_matches_type(value, argument) for argument in arguments)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return False
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return all(_matches_type(item, arguments[0]) for item in value)
        return len(value) == len(arguments) and all(
            _matches_type(item, argument) for item, argument in zip(value, arguments, strict=True)
        )
    # A field type this check does not know is refused rather than let through unchecked.
    raise TypeError(f"no JSON check for the field annotation {hint!r}; extend _matches_type.")


def _header_section[Config](config_class: type[Config], section: str, data: Any, source: str) -> Config:
    """Build one configuration of the model description, or a `ModelFormatError` naming the field.

    Parameters
    ----------
    config_class
        The dataclass (with ``from_dict``) that the section describes.
    section
        Key of the section in the description, for messages.
    data
        The section's JSON value.
    source
        The file, for messages.

    Raises
    ------
    ModelFormatError
        If the section is not a JSON object, has a key the dataclass does not
        know, lacks one without a default, has a value of the wrong type, or
        has a value out of range (the dataclass's own check, whose message
        names the field).
    """
    if not isinstance(data, dict):
        raise ModelFormatError(
            f"{source}: model description field '{section}' must be a JSON object; got "
            f"{type(data).__name__}. The file was edited or corrupted; re-create or copy it again."
        )
    fields = {field.name: field for field in dataclasses.fields(config_class)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(config_class)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ModelFormatError(
            f"{source}: unknown model description field(s) {[f'{section}.{key}' for key in unknown]}; "
            f"'{section}' has the fields {sorted(fields)}. The file was edited or written by another "
            "package version; re-create it or use a matching package version."
        )
    missing = sorted(
        name
        for name, field in fields.items()
        if name not in data
        and field.default is dataclasses.MISSING
        and field.default_factory is dataclasses.MISSING
    )
    if missing:
        raise ModelFormatError(
            f"{source}: the model description lacks field(s) {[f'{section}.{key}' for key in missing]}."
        )
    for name, value in data.items():
        if not _matches_type(value, hints[name]):
            raise ModelFormatError(
                f"{source}: model description field {section}.{name}={value!r} has the wrong type "
                f"({type(value).__name__}); expected {_type_name(hints[name])}. The file was edited or "
                "corrupted; re-create or copy it again."
            )
    try:
        return config_class.from_dict(data)  # type: ignore[attr-defined]
    except (TypeError, ValueError) as err:
        raise ModelFormatError(
            f"{source}: model description field '{section}' is invalid: {err} The file was edited or "
            "corrupted; re-create or copy it again."
        ) from err


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
    band_conditions
        Nominal conditions of every band the encoder was trained for, when
        it was trained for several (each training image drew its band among
        them); ``conditions`` is one of them.  Empty (every model file
        without the field): the model serves ``conditions.band`` alone.
    """

    encoder: BlissEncoder
    conditions: SurveyConditions
    prior: PriorConfig
    simulator: SimulatorConfig
    training: dict[str, Any] = dataclasses.field(default_factory=dict)
    package_version: str = __version__
    autoencoder: GalaxyAutoencoder | None = None
    band_conditions: tuple[SurveyConditions, ...] = ()

    def __post_init__(self) -> None:
        self.band_conditions = tuple(self.band_conditions)
        if self.band_conditions and self.conditions not in self.band_conditions:
            raise ValueError(
                f"band_conditions (bands {[item.band for item in self.band_conditions]}) must include the "
                f"model's nominal conditions (band {self.conditions.band!r}) as they are."
            )

    @property
    def trained_bands(self) -> tuple[str, ...]:
        """The bands the encoder was trained for, in training order."""
        return tuple(item.band for item in self.band_conditions) or (self.conditions.band,)

    def conditions_for_band(self, band: str | None) -> SurveyConditions:
        """Nominal conditions of a trained band; ``conditions`` for None or a band not trained."""
        for item in self.band_conditions:
            if item.band == band:
                return item
        return self.conditions

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
            # Written for models of several bands only: a single-band model's file is as before.
            **({"bands": [item.to_dict() for item in self.band_conditions]} if self.band_conditions else {}),
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
        # The file's digest covers the file itself: it is computed with a placeholder of the same
        # length in its place, which it then replaces (no offset in the file moves).
        document["file_sha256"] = _FILE_DIGEST_PLACEHOLDER
        data = save_safetensors_bytes(tensors, metadata={_METADATA_KEY: json.dumps(document, sort_keys=True)})
        digest = _file_digest(data, _FILE_DIGEST_PLACEHOLDER)
        if digest is None:
            raise RuntimeError("The model description holds the file digest's placeholder twice.")
        return data.replace(_FILE_DIGEST_PLACEHOLDER.encode("ascii"), digest.encode("ascii"), 1)

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
            description, were written by another format version (an older one
            names the migration command), fail the whole-file digest (any
            modified byte), or have a description that does not validate
            (unknown or missing field, wrong type, value out of range: the
            message names the field), or weights that do not fit the recorded
            architecture or fail the weights digest.
        """
        tensors, document = _parse_model_file(data, source)
        version = document.get("format_version")
        if version in _MIGRATABLE_FORMAT_VERSIONS:
            raise ModelFormatError(
                f"{source} has model format version {version}, which has no digest of its description "
                f"(only of its weights); this package ({__version__}) loads version {MODEL_FORMAT_VERSION}. "
                f"Migrate the file once with '{_MIGRATE_COMMAND} {source}' (it checks the weights, then "
                "re-saves the same model with a digest of the whole file), or re-create it with bliss-train."
            )
        if version not in _READABLE_FORMAT_VERSIONS:
            raise ModelFormatError(
                f"{source} has model format version {version!r}; this package "
                f"({__version__}) reads versions {_READABLE_FORMAT_VERSIONS}. Use a matching package version."
            )
        recorded = document.get("file_sha256")
        if not _is_hex_digest(recorded) or _file_digest(data, recorded) != recorded:
            raise ModelFormatError(
                f"{source}: the file does not match its recorded SHA-256 digest (file_sha256, which covers "
                "the description and the weights); the file was modified or corrupted. Re-create it with "
                "bliss-train or copy it again."
            )
        return cls._from_document(document, tensors, source)

    @classmethod
    def _from_document(
        cls, document: dict[str, Any], tensors: dict[str, torch.Tensor], source: str
    ) -> BlissModel:
        """The model of a parsed description and its weights, every field and the weights checked.

        Raises
        ------
        ModelFormatError
            See `from_bytes`.
        """
        version = document["format_version"]
        required = _REQUIRED_KEYS if version == MODEL_FORMAT_VERSION else _LEGACY_REQUIRED_KEYS
        allowed = (
            (*_REQUIRED_KEYS, "bands")
            if version == MODEL_FORMAT_VERSION
            else (*_LEGACY_REQUIRED_KEYS, "autoencoder")
        )
        missing = [key for key in required if key not in document]
        if missing:
            raise ModelFormatError(f"{source}: the model description lacks key(s) {missing}.")
        unknown = sorted(set(document) - set(allowed))
        if unknown:
            raise ModelFormatError(
                f"{source}: unknown model description field(s) {unknown}; the known fields are "
                f"{sorted(allowed)}. The file was edited or written by another package version."
            )
        for key, check, expected in (
            ("package_version", lambda value: isinstance(value, str), "a string"),
            ("training", lambda value: isinstance(value, dict), "a JSON object"),
            ("weights_sha256", _is_hex_digest, "64 lowercase hex digits"),
        ):
            if not check(document[key]):
                raise ModelFormatError(
                    f"{source}: model description field {key}={document[key]!r} is invalid; expected "
                    f"{expected}. The file was edited or corrupted; re-create or copy it again."
                )
        if _weights_digest(tensors) != document["weights_sha256"]:
            raise ModelFormatError(
                f"{source}: the weights do not match their recorded SHA-256 digest; the file was modified "
                "or corrupted."
            )
        encoder_config = _header_section(EncoderConfig, "encoder", document["encoder"], source)
        autoencoder_document = document.get("autoencoder") if version >= 3 else None
        autoencoder_config = (
            None
            if autoencoder_document is None
            else _header_section(AutoencoderConfig, "autoencoder", autoencoder_document, source)
        )
        conditions = _header_section(SurveyConditions, "conditions", document["conditions"], source)
        prior = _header_section(PriorConfig, "prior", document["prior"], source)
        simulator = _header_section(SimulatorConfig, "simulator", document["simulator"], source)
        band_conditions = _band_conditions(document.get("bands", []), conditions, source)
        try:
            encoder = BlissEncoder(encoder_config)
            autoencoder = None if autoencoder_config is None else GalaxyAutoencoder(autoencoder_config)
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
            conditions=conditions,
            prior=prior,
            simulator=simulator,
            training=document["training"],
            package_version=document["package_version"],
            autoencoder=autoencoder,
            band_conditions=band_conditions,
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


def _band_conditions(data: Any, nominal: SurveyConditions, source: str) -> tuple[SurveyConditions, ...]:
    """The trained bands' conditions of a model description (its optional ``bands`` list).

    Raises
    ------
    ModelFormatError
        If ``bands`` is not a list of valid conditions of distinct bands that includes the nominal ones.
    """
    if not isinstance(data, list):
        raise ModelFormatError(
            f"{source}: model description field 'bands' must be a JSON list; got {type(data).__name__}. "
            "The file was edited or corrupted; re-create or copy it again."
        )
    bands = tuple(
        _header_section(SurveyConditions, f"bands[{index}]", item, source) for index, item in enumerate(data)
    )
    names = [item.band for item in bands]
    if bands and (nominal not in bands or len(set(names)) != len(names)):
        raise ModelFormatError(
            f"{source}: model description field 'bands' (bands {names}) must list distinct bands and "
            f"include the nominal conditions (band {nominal.band!r}). The file was edited or corrupted."
        )
    return bands


def _parse_model_file(data: bytes, source: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights and the JSON description of a model file, unchecked beyond their syntax.

    Raises
    ------
    ModelFormatError
        If the bytes are not a complete safetensors file or hold no JSON
        object under the description's key.
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
        raise ModelFormatError(f"{source} has no '{_METADATA_KEY}' JSON document; it is not a BLISS model.")
    try:
        document = json.loads(metadata[_METADATA_KEY])
    except json.JSONDecodeError as err:
        raise ModelFormatError(
            f"{source}: the '{_METADATA_KEY}' JSON document is malformed ({err})."
        ) from err
    if not isinstance(document, dict):
        raise ModelFormatError(
            f"{source}: the '{_METADATA_KEY}' JSON document is a {type(document).__name__}, not an object."
        )
    return tensors, document


def migrate_model_file(path: str | Path, output: str | Path | None = None) -> Path:
    """Rewrite a model file of format version 2 or 3 in the current format version.

    Parameters
    ----------
    path
        The old ``.safetensors`` model file.
    output
        Where to write the migrated file; default ``path`` itself (replaced
        atomically, so an interrupted migration leaves the old file).

    Returns
    -------
    written
        The migrated file.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ModelFormatError
        If ``path`` is already in the current format version (naming it), of
        a version this package cannot migrate, or fails the checks of its
        weights, structure or description (see `BlissModel.from_bytes`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No BLISS model file at {path}.")
    tensors, document = _parse_model_file(path.read_bytes(), str(path))
    version = document.get("format_version")
    if version == MODEL_FORMAT_VERSION:
        raise ModelFormatError(f"{path} already has model format version {version}; nothing to migrate.")
    if version not in _MIGRATABLE_FORMAT_VERSIONS:
        raise ModelFormatError(
            f"{path} has model format version {version!r}; this package ({__version__}) migrates versions "
            f"{_MIGRATABLE_FORMAT_VERSIONS} to {MODEL_FORMAT_VERSION}. Use a matching package version."
        )
    model = BlissModel._from_document(document, tensors, str(path))
    migrations = list(model.training.get("format_migrations", []))
    migrations.append(
        {
            "from_format_version": version,
            "to_format_version": MODEL_FORMAT_VERSION,
            "package_version": __version__,
            "command": _MIGRATE_COMMAND,
        }
    )
    model.training = {**model.training, "format_migrations": migrations}
    return model.save(path if output is None else output)


PACKAGED_DATA_DIR = Path(__file__).parents[1] / "data"
"""The folder of the packaged model and its training recipe (in the top-level package)."""

DEFAULT_TRAINING_RECIPE_NAME = "train_default.yaml"
"""File name of the packaged model's ``bliss-train`` config, beside the model."""


def default_model_path() -> Path:
    """Where the packaged default model lives."""
    return PACKAGED_DATA_DIR / DEFAULT_MODEL_NAME


def default_training_recipe_path() -> Path:
    """Where the packaged model's training recipe (a ``bliss-train`` YAML config) lives."""
    return PACKAGED_DATA_DIR / DEFAULT_TRAINING_RECIPE_NAME


def load_default_model() -> BlissModel:
    """Load the packaged default model (LSST single visit, r band).

    Raises
    ------
    FileNotFoundError
        If this installation does not include the default model.
    """
    return BlissModel.load(default_model_path())
