"""Command-line programs of the core (no Butler): ``bliss-train``."""

from ._train import train_main

__all__ = ["train_main"]
