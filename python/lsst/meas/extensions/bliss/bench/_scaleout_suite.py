"""``bliss-bench scaleout``: BlissDRP through BPS, against PostgreSQL, after a SIGKILL, and at throughput.

Four parts, each through the command-line tools as a user runs them:

1. A tiny demo repo whose registry lives in a PostgreSQL server the suite
   starts (`temporary_postgres`): ``butler bliss-register`` and ``butler
   bliss-ingest-model`` must leave its ``butler.yaml`` bytes and mode as they
   were (``repo_config_unchanged``); ``pipetask run`` of BlissDRP must
   complete every quantum (``postgres_completed`` against ``n_quanta``).
2. The same run SIGKILLed midway and resumed with ``pipetask run
   --extend-run --skip-existing --clobber-outputs``; every output table must
   equal the clean run's (``restart_identical``).
3. ``bps submit bps/bps_BlissDRP.yaml`` with the local Parsl site on the same
   repo (``bps_completed``, ``bps_identical``).
4. Throughput: N simulated detectors (4096 x 4096 unless ``--size``) through
   ``bliss-pipetask run -j J`` (``pipetask`` with a preloaded forkserver;
   ``--runner pipetask`` for plain ``pipetask run -j J --start-method
   forkserver``, ``--runner bps`` for BPS with clustering) against a loop
   of `infer_frame` calls in one process with J torch threads on the same
   pixels; ``per_detector_overhead_ratio`` is the first
   wall time over the second.  Both leave out deblending
   (``do_deblend=False``), as in ``bliss-bench pipetask``; the loop's pixels
   are already in memory, so the reads count as pipeline overhead
   (``per_detector_overhead_ratio_reads_in_reference`` adds the loop's
   reads to its time instead).
"""

from __future__ import annotations

__all__ = ["DESCRIPTION", "add_arguments", "run"]

import argparse
from typing import Any

DESCRIPTION = (
    "BlissDRP through bps submit (local Parsl site), against a PostgreSQL registry, after SIGKILL and "
    "resume, and N 4096x4096 detectors through bliss-pipetask -j 2 against infer_frame in one process"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the scaleout suite."""
    parser.add_argument(
        "--detectors", type=int, default=None, help="detectors of the throughput part (default 8; quick 4)"
    )
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help="detector side of the throughput part (default 4096; quick 1024)",
    )
    parser.add_argument(
        "--jobs", type=int, default=2, help="pipetask processes / BPS jobs, and the loop's torch threads"
    )
    parser.add_argument(
        "--runner",
        choices=("bliss-pipetask", "pipetask", "bps"),
        default="bliss-pipetask",
        help="what runs the throughput part: bliss-pipetask run -j JOBS (pipetask with a preloaded "
        "forkserver), pipetask run -j JOBS, or bps submit with one cluster per job",
    )
    parser.add_argument(
        "--start-method",
        choices=("forkserver", "spawn"),
        default="forkserver",
        help="how (bliss-)pipetask -j starts a quantum's process (forkserver: the server's imports are "
        "inherited)",
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the suite; returns the JSON results and a ``summary``.  Imports the middleware."""
    from ..pipeline.demo import run_scaleout_suite

    return run_scaleout_suite(args)
