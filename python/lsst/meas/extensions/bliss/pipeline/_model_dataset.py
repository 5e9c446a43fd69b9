"""The ``bliss_model`` Butler dataset: storage class, formatter, repo registration and ingestion.

A model is one safetensors file (weights plus the JSON description written
by `BlissModel.to_bytes`); the formatter reads it without unpickling anything.
Butlers learn the ``BlissModel`` storage class and its formatter from the
package's Butler configuration directory (`butler_config_dir`) on
``DAF_BUTLER_CONFIG_PATH``, which the EUPS table sets (pip users export it),
so a repo's own ``butler.yaml`` is never edited: a shared, PostgreSQL-backed
repo needs nothing beyond the ``bliss_model`` dataset type in its registry.
`register_bliss_storage_class` with ``write_config=True`` still writes the
definitions into a private repo's ``butler.yaml`` for a setup without the
environment variable.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_MODEL_DATASET_TYPE",
    "DEFAULT_MODEL_RUN",
    "MODEL_STORAGE_CLASS",
    "BlissModelFormatter",
    "ingest_model",
    "register_bliss_storage_class",
    "register_model_dataset_type",
    "registered_config_path",
    "storage_class_config",
]

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from lsst.daf.butler import Butler, DatasetRef, DatasetType, FormatterV2

from ..io import (
    BlissModel,
    atomic_write_path,
    load_default_model,
    use_bliss_butler_config,
)

MODEL_STORAGE_CLASS = "BlissModel"
"""Name of the storage class of trained BLISS models."""

DEFAULT_MODEL_DATASET_TYPE = "bliss_model"
"""Default dataset type name of a trained model (no dimensions)."""

DEFAULT_MODEL_RUN = "bliss/models/default"
"""RUN collection that receives the packaged default model."""

_FORMATTER_NAME = "lsst.meas.extensions.bliss.pipeline.BlissModelFormatter"


class BlissModelFormatter(FormatterV2):
    """Reads and writes `BlissModel` datasets as safetensors files.

    The file is exactly what `BlissModel.save` writes, so a dataset can be
    copied out of a datastore and loaded with `BlissModel.load`.
    """

    default_extension = ".safetensors"
    supported_extensions = frozenset({".safetensors"})
    can_read_from_local_file = True

    def read_from_local_file(self, path: str, component: str | None = None, expected_size: int = -1) -> Any:
        # Errors name the dataset, not only the datastore path, so a user knows what to re-ingest.
        return BlissModel.from_bytes(Path(path).read_bytes(), source=f"dataset {self.dataset_ref} ({path})")

    def to_bytes(self, in_memory_dataset: Any) -> bytes:
        if not isinstance(in_memory_dataset, BlissModel):
            raise TypeError(
                f"The {MODEL_STORAGE_CLASS} formatter writes BlissModel objects, "
                f"not {type(in_memory_dataset).__name__}."
            )
        return in_memory_dataset.to_bytes()


def storage_class_config() -> dict[str, Any]:
    """The ``butler.yaml`` sections that define the storage class and its formatter."""
    return {
        "storageClasses": {MODEL_STORAGE_CLASS: {"pytype": "lsst.meas.extensions.bliss.BlissModel"}},
        "datastore": {"formatters": {MODEL_STORAGE_CLASS: _FORMATTER_NAME}},
    }


def _add_formatter(datastore: dict[str, Any]) -> None:
    """Map the storage class to its formatter in one datastore config (chained ones recursively)."""
    children = datastore.get("datastores")
    if children:
        # A chained datastore lists its members as {"datastore": {...}} entries.
        for child in children:
            if isinstance(child, dict):
                _add_formatter(child.get("datastore", child))
        return
    datastore.setdefault("formatters", {})[MODEL_STORAGE_CLASS] = _FORMATTER_NAME


def register_model_dataset_type(
    repo: str | Path, dataset_type_name: str = DEFAULT_MODEL_DATASET_TYPE
) -> bool:
    """Register a model dataset type (no dimensions, storage class ``BlissModel``) in a repo's registry.

    Parameters
    ----------
    repo
        The repo (a directory or a ``butler.yaml``, local or shared).
    dataset_type_name
        Name of the dataset type.

    Returns
    -------
    inserted
        False if the registry already had it.

    Notes
    -----
    The package's Butler configuration goes onto ``DAF_BUTLER_CONFIG_PATH``
    of this process first (`use_bliss_butler_config`); the repo's
    ``butler.yaml`` is read, never written.
    """
    use_bliss_butler_config()
    butler = Butler.from_config(str(repo), writeable=True)
    try:
        dataset_type = DatasetType(
            dataset_type_name, butler.dimensions.empty, MODEL_STORAGE_CLASS, universe=butler.dimensions
        )
        return bool(butler.registry.registerDatasetType(dataset_type))
    finally:
        butler.close()


def register_bliss_storage_class(repo: str | Path, write_config: bool = False) -> bool:
    """Make a Butler repo ready for ``BlissModel`` datasets (idempotent).

    Parameters
    ----------
    repo
        Root directory of an existing repo (made by ``butler create`` or
        `Butler.makeRepo`).
    write_config
        Also write the storage class and formatter into the repo's
        ``butler.yaml`` (for a private repo used without
        ``DAF_BUTLER_CONFIG_PATH``); never needed where the EUPS table or the
        user sets that variable, and wrong for a shared repo.

    Returns
    -------
    changed
        False if the repo already had the ``bliss_model`` dataset type (and,
        with ``write_config``, its ``butler.yaml`` the definitions).

    Raises
    ------
    FileNotFoundError
        If ``repo`` holds no ``butler.yaml``.
    ValueError
        If ``butler.yaml`` is not a YAML mapping (``write_config`` only).

    Notes
    -----
    By default the repo's ``butler.yaml`` is left exactly as it is (bytes and
    permissions): the storage class and formatter come from the package's
    Butler configuration directory on ``DAF_BUTLER_CONFIG_PATH``
    (`butler_config_dir`), which this function puts there for its own process
    and which every other process must have too; the dataset type
    ``bliss_model`` is registered in the registry (`register_model_dataset_type`).

    With ``write_config`` the file is rewritten atomically (a new temporary
    file in the same directory, then a rename, `atomic_write_path`), so an
    interrupted registration leaves the original untouched.  The rewritten file
    keeps the original's permission bits.  A ``butler.yaml`` that is a
    symbolic link is followed deliberately: the file it points to is
    rewritten in its own directory and the link stays a link, so every repo
    that shares the configuration learns the storage class
    (`registered_config_path`).
    """
    config_path = registered_config_path(repo)
    changed = _write_storage_class_config(config_path) if write_config else False
    return register_model_dataset_type(repo) or changed


def _write_storage_class_config(config_path: Path) -> bool:
    """Add the storage class and formatter to one ``butler.yaml``; False if it had them."""
    document = yaml.safe_load(config_path.read_text())
    if not isinstance(document, dict):
        raise ValueError(f"{config_path} is not a YAML mapping; cannot register the storage class.")
    storage_classes = document.setdefault("storageClasses", {})
    datastore = document.setdefault("datastore", {})
    wanted_pytype = storage_class_config()["storageClasses"][MODEL_STORAGE_CLASS]
    already = storage_classes.get(MODEL_STORAGE_CLASS) == wanted_pytype and (
        datastore.get("formatters", {}).get(MODEL_STORAGE_CLASS) == _FORMATTER_NAME
        or bool(datastore.get("datastores"))
    )
    if already:
        return False
    storage_classes[MODEL_STORAGE_CLASS] = wanted_pytype
    _add_formatter(datastore)
    with atomic_write_path(config_path, mode=stat.S_IMODE(config_path.stat().st_mode)) as temporary:
        with temporary.open("w") as stream:
            yaml.safe_dump(document, stream, sort_keys=False)
    return True


def registered_config_path(repo: str | Path) -> Path:
    """The ``butler.yaml`` file of ``repo`` (the one ``write_config`` rewrites).

    A symbolic link is resolved to the file it points to, so that the link
    itself is kept; the file must be a regular file.

    Parameters
    ----------
    repo
        Root directory of a local repo.

    Returns
    -------
    path
        The regular file that holds the repo's configuration.

    Raises
    ------
    FileNotFoundError
        If ``repo`` holds no ``butler.yaml``, or it is a dangling link (naming its target).
    """
    link = Path(repo) / "butler.yaml"
    if link.is_symlink() and not link.exists():
        raise FileNotFoundError(
            f"{link} is a symbolic link to {os.readlink(link)}, which does not exist; restore the "
            "shared configuration or replace the link with the repo's own butler.yaml."
        )
    if not link.is_file():
        raise FileNotFoundError(
            f"No Butler repo at {repo} (no butler.yaml); create one first with 'butler create {repo}'."
        )
    return link.resolve()


def ingest_model(
    repo: str | Path,
    model: BlissModel | str | Path | None = None,
    run: str = DEFAULT_MODEL_RUN,
    dataset_type_name: str = DEFAULT_MODEL_DATASET_TYPE,
) -> DatasetRef:
    """Put a model into a RUN collection of a repo, registering what is needed.

    Parameters
    ----------
    repo
        Root directory of the repo.
    model
        The model, a path to a ``.safetensors`` model file, or None for the
        packaged default model.
    run
        RUN collection to write to (created if needed).
    dataset_type_name
        Dataset type (empty dimensions, storage class ``BlissModel``).

    Returns
    -------
    ref
        The stored dataset.

    Raises
    ------
    FileNotFoundError, ModelFormatError
        If ``model`` names a missing or invalid model file (see
        `BlissModel.load`); the repo is then left untouched.
    lsst.daf.butler.registry.ConflictingDefinitionError
        If ``run`` already holds a model of that dataset type (choose another
        RUN collection; models are never overwritten).
    """
    # The model is loaded (and checked) first, so that a bad model file leaves the repo untouched.
    if model is None:
        model = load_default_model()
    elif not isinstance(model, BlissModel):
        model = BlissModel.load(model)
    use_bliss_butler_config()
    registered_config_path(repo)
    butler = Butler.from_config(str(repo), writeable=True, run=run)
    try:
        dataset_type = DatasetType(
            dataset_type_name, butler.dimensions.empty, MODEL_STORAGE_CLASS, universe=butler.dimensions
        )
        butler.registry.registerDatasetType(dataset_type)
        return butler.put(model, dataset_type_name, dataId={})
    finally:
        butler.close()
