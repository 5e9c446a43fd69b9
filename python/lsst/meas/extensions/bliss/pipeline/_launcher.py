"""``bliss-pipetask``: ``pipetask`` whose quanta start with BLISS imported.

``pipetask run -j N`` runs every quantum in a new process. With the default
``spawn`` start method each of them imports Python's scientific stack, the
Rubin middleware, torch, GalSim and Piff again before it reads a single pixel:
seconds per quantum, paid once per detector. ``--start-method forkserver``
forks the quanta from a server process instead, but that server imports only
``pipetask``'s own module. ``bliss-pipetask`` is ``pipetask`` with the server
told to import the middleware, the BLISS pipeline layer and Piff first
(`multiprocessing.set_forkserver_preload`), so that every quantum inherits
them, and with ``--start-method forkserver`` added to ``run`` when the
command line sets no start method. Everything else (options, subcommands,
exit codes, outputs) is ``pipetask``'s.

Importing modules in the server starts no threads, so the forked quanta are
as safe as spawned ones; ``pipetask`` still limits each quantum's threads
(``-n``, ``--enable-implicit-threading``).
"""

from __future__ import annotations

__all__ = ["FORKSERVER_PRELOAD", "pipetask_arguments", "pipetask_main"]

import multiprocessing
import sys
from collections.abc import Sequence

FORKSERVER_PRELOAD: tuple[str, ...] = (
    "lsst.ctrl.mpexec.cli.pipetask",
    "lsst.pipe.base.mp_graph_executor",
    "lsst.meas.extensions.bliss.pipeline",
    # Rubin's calexps carry Piff PSFs; Piff imports scikit-learn, about a second per quantum.
    "piff",
)
"""Modules the forkserver imports before it forks any quantum (one that fails to import is skipped)."""


def pipetask_arguments(argv: Sequence[str]) -> list[str]:
    """``pipetask``'s arguments: ``argv``, with ``--start-method forkserver`` added to ``run``.

    Parameters
    ----------
    argv
        The command line after the program name, e.g. ``["run", "-b", "REPO", ..., "-j", "2"]``.

    Returns
    -------
    arguments
        ``argv`` unchanged unless its subcommand is ``run`` and it sets no ``--start-method``.
    """
    import click

    from lsst.ctrl.mpexec.cli.pipetask import cli

    arguments = list(argv)
    # The first word that names a subcommand (global options such as --log-level take values).
    subcommands = set(cli.list_commands(click.Context(cli)))
    subcommand = next((word for word in arguments if word in subcommands), None)
    if subcommand == "run" and not any(word.split("=")[0] == "--start-method" for word in arguments):
        arguments += ["--start-method", "forkserver"]
    return arguments


def pipetask_main(argv: Sequence[str] | None = None) -> int:
    """Run ``pipetask`` with the forkserver preloaded; returns its exit code."""
    from lsst.ctrl.mpexec.cli.pipetask import main

    multiprocessing.set_forkserver_preload(list(FORKSERVER_PRELOAD))
    sys.argv = [sys.argv[0], *pipetask_arguments(sys.argv[1:] if argv is None else argv)]
    return main()
