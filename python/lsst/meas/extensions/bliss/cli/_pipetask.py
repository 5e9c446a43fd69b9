"""Command-line entry point of ``bliss-pipetask`` (defined with the pipeline layer, which it preloads)."""

from __future__ import annotations

__all__ = ["pipetask_main"]

from ..pipeline import pipetask_main
