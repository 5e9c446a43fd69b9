"""Benchmarks of the project, run through the ``bliss-bench`` command.

Each suite is a module that registers a ``run(args) -> dict`` function and
its command-line options; ``bliss-bench SUITE [--quick] [--json PATH]``
runs one, prints its figures and, with ``--json``, writes them to a file.
"""

from ._main import main

__all__ = ["main"]
