"""``bliss-migrate-model``: rewrite a model file of an older format version in the current one."""

from __future__ import annotations

__all__ = ["migrate_model_main"]

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..io import MODEL_FORMAT_VERSION, ModelFormatError, migrate_model_file


def migrate_model_main(argv: Sequence[str] | None = None) -> int:
    """Command line of `migrate_model_file`; returns the process exit code (1 on a refused file)."""
    parser = argparse.ArgumentParser(
        prog="bliss-migrate-model",
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
