"""``butler`` subcommands of this package (found through the ``butler.cli`` entry point)."""

from ._butler_commands import *
