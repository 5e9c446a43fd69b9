"""Command-line entry point of ``bliss-paths``: where the package's resource files are."""

from __future__ import annotations

__all__ = ["paths_main"]

import argparse
from collections.abc import Sequence

from ..io import RESOURCE_KINDS, resource_path, resource_uri


def paths_main(argv: Sequence[str] | None = None) -> int:
    """Print resource locations; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="bliss-paths",
        description="Print where this installation keeps its pipelines, config overrides, BPS submit "
        "files and Butler configuration (for DAF_BUTLER_CONFIG_PATH). Without arguments, one "
        "'KIND PATH' line each.",
    )
    parser.add_argument("kind", nargs="?", choices=RESOURCE_KINDS, help="print only this directory")
    parser.add_argument("name", nargs="?", help="a file in that directory, e.g. BlissDRP.yaml")
    parser.add_argument(
        "--uri", action="store_true", help="print the resource:// URI of NAME instead of its path"
    )
    args = parser.parse_args(argv)
    if args.kind is None:
        for kind in RESOURCE_KINDS:
            print(f"{kind} {resource_path(kind)}")
        return 0
    if args.uri:
        if not args.name:
            parser.error("--uri needs a NAME")
        print(resource_uri(args.kind, args.name))
    else:
        print(resource_path(args.kind, args.name or ""))
    return 0
