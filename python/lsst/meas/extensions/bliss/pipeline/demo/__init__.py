"""Demo tooling: a Butler repo of simulated calexps with truth tables, and the report of a demo run."""

from ._demo_repo import *
from ._demo_report import *
from ._pipetask_bench import *
from ._tables_bench import *
from ._visit_image_factory import *
