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
command line sets no start method. A ``run`` with more than one process
starts the server at once, so that it imports while ``pipetask`` builds the
quantum graph. Everything else (options, subcommands, exit codes, outputs)
is ``pipetask``'s.

Importing modules in the server starts no threads, so the forked quanta are
as safe as spawned ones; ``pipetask`` still limits each quantum's threads
(``-n``, ``--enable-implicit-threading``).
"""

from __future__ import annotations

__all__ = ["FORKSERVER_PRELOAD", "forks_quanta", "pipetask_arguments", "pipetask_main"]

import multiprocessing
import multiprocessing.forkserver
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


def _subcommand(arguments: Sequence[str]) -> str | None:
    """The ``pipetask`` subcommand of a command line: its first word that names one (global options
    such as ``--log-level`` take values, so the first bare word need not be it)."""
    # The commands of pipetask's command package, named as click names them; asking the CLI itself
    # (list_commands) would set up logging before pipetask has read --long-log and the like.
    import lsst.ctrl.mpexec.cli.cmd as commands

    subcommands = {name.replace("_", "-") for name in commands.__all__}
    return next((word for word in arguments if word in subcommands), None)


def _option_value(arguments: Sequence[str], long_name: str, short_name: str | None = None) -> str | None:
    """The value of an option given as ``--name V``, ``--name=V``, ``-n V`` or ``-nV`` (the last one
    given wins, as in click), or None."""
    value = None
    for index, word in enumerate(arguments):
        following = arguments[index + 1] if index + 1 < len(arguments) else None
        if word in (long_name, short_name):
            value = following
        elif word.startswith(long_name + "="):
            value = word.split("=", 1)[1]
        elif short_name is not None and word.startswith(short_name) and len(word) > len(short_name):
            value = word[len(short_name) :]
    return value


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
    arguments = list(argv)
    if _subcommand(arguments) == "run" and _option_value(arguments, "--start-method") is None:
        arguments += ["--start-method", "forkserver"]
    return arguments


def forks_quanta(arguments: Sequence[str]) -> bool:
    """Whether ``pipetask`` with these arguments runs quanta in processes forked from the server: a
    ``run`` with more than one process (``-j``/``--processes``) and ``--start-method forkserver``."""
    if _subcommand(arguments) != "run" or _option_value(arguments, "--start-method") != "forkserver":
        return False
    processes = _option_value(arguments, "--processes", "-j")
    try:
        return processes is not None and int(processes) > 1
    except ValueError:  # pipetask itself reports the malformed option
        return False


def pipetask_main(argv: Sequence[str] | None = None) -> int:
    """Run ``pipetask`` with the forkserver preloaded; returns its exit code."""
    from lsst.ctrl.mpexec.cli.pipetask import main

    arguments = pipetask_arguments(sys.argv[1:] if argv is None else argv)
    multiprocessing.set_forkserver_preload(list(FORKSERVER_PRELOAD))
    if forks_quanta(arguments):
        # Started now, the server imports its modules on the second core while pipetask reads the
        # pipeline and builds the quantum graph, instead of after it, before the first quantum.
        multiprocessing.forkserver.ensure_running()
    sys.argv = [sys.argv[0], *arguments]
    return main()
