"""Rewrite a model file of an older format version (2 or 3) in the current one.

Versions 2 and 3 carried a digest of the weights only, so their JSON
description could change unnoticed; the current version adds a digest of the
whole file (see `_model_io`).  Migration checks what the old file can prove
(its weights digest, its structure, every field of its description), then
writes the same model (bit-identical weights, the same description) with the
new digest, and records the step in the description's provenance, the
``training`` record, as an entry of ``training["format_migrations"]``::

    {"from_format_version": 3, "to_format_version": 4,
     "package_version": "<version that migrated it>", "command": "<this module>"}

The migration is deterministic (no time stamp, no host name), so migrating
the same file twice gives the same bytes; this is how the packaged default
model was migrated (``python -m lsst.meas.extensions.bliss._model_migration
python/lsst/meas/extensions/bliss/data/bliss_lsst_r_default.safetensors``).
Migrate only files you trust: a description edited before the migration
cannot be told from the original.

Usage::

    python -m lsst.meas.extensions.bliss._model_migration OLD.safetensors [--output NEW.safetensors]

Without ``--output`` the file is replaced in place (atomically).
"""

from __future__ import annotations

__all__ = ["main", "migrate_model_file"]

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ._model_io import (
    _MIGRATABLE_FORMAT_VERSIONS,
    _MIGRATE_COMMAND,
    MODEL_FORMAT_VERSION,
    BlissModel,
    ModelFormatError,
    _parse_model_file,
)
from .version import __version__


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


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of `migrate_model_file`; returns the process exit code (1 on a refused file)."""
    parser = argparse.ArgumentParser(
        prog=_MIGRATE_COMMAND,
        description="Rewrite a BLISS model file of format version 2 or 3 in the current format version "
        "(same weights and description, plus a digest of the whole file).",
    )
    parser.add_argument("model", type=Path, help="the old .safetensors model file")
    parser.add_argument("--output", type=Path, default=None, help="write here instead of in place")
    args = parser.parse_args(argv)
    try:
        written = migrate_model_file(args.model, args.output)
    except (FileNotFoundError, ModelFormatError) as err:
        print(f"{parser.prog}: {err}", file=sys.stderr)
        return 1
    print(f"wrote {written} (model format version {MODEL_FORMAT_VERSION})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
