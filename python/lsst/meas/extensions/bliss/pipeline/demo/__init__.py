"""Demo tooling: a Butler repo of simulated calexps with truth tables, the report of a demo run, and
the drivers of runs beyond one pipetask process (BPS, PostgreSQL, restarts)."""

from ._demo_repo import *
from ._demo_report import *
from ._pipetask_bench import *
from ._postgres import *
from ._scaleout import *
from ._scaleout_bench import *
from ._tables_bench import *
from ._units_bench import *
from ._visit_image_factory import *
