"""Command-line programs of the pipeline layer: ``butler`` subcommands (found through the
``butler.cli`` entry point), ``bliss-make-demo-repo`` and ``bliss-demo-report``."""

from ._butler_commands import *
from ._demo_report_main import *
from ._make_demo_repo_main import *
