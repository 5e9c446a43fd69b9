"""Benchmarks of the project, run through the ``bliss-bench`` command.

Each suite is a module with a ``DESCRIPTION``, an ``add_arguments(parser)``
function for its command-line options and a ``run(args) -> dict`` function;
`SUITES` registers them.  ``bliss-bench SUITE [--quick] [--json PATH]`` runs
one, prints its figures and, with ``--json``, writes them to a file.
"""

from ._suites import *
