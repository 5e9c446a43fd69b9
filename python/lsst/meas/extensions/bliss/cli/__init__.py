"""Every command-line program of the package.

``bliss-train``, ``bliss-bench``, ``bliss-validate`` and ``bliss-paths`` use the core only and
are imported with this package.  ``bliss-make-demo-repo``,
``bliss-demo-report``, ``bliss-pipetask`` and the ``butler`` subcommands (found through the
``butler.cli`` entry point) need the Rubin middleware, so their modules are
imported on first access to their names: importing this package does not load
the middleware.
"""

import importlib
from typing import Any

from ._bench import *
from ._migrate_model import *
from ._paths import *
from ._train import *
from ._validate import *

_PIPELINE_COMMANDS = {
    "bliss_ingest_model": "._butler_commands",
    "bliss_register": "._butler_commands",
    "get_cli_subcommands": "._butler_commands",
    "demo_report_main": "._demo_report",
    "make_demo_repo_main": "._make_demo_repo",
    "pipetask_main": "._pipetask",
}


def __getattr__(name: str) -> Any:
    if name in _PIPELINE_COMMANDS:
        return getattr(importlib.import_module(_PIPELINE_COMMANDS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
