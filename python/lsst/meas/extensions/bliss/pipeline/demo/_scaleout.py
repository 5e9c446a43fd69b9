"""Running BlissDRP beyond one ``pipetask`` process: BPS with Parsl, PostgreSQL registries, restarts.

The functions here drive the command-line tools (``pipetask``, ``bps``,
``butler``) in subprocesses, as a user or a batch system would, and read
the results back through the Butler; ``bliss-bench scaleout`` and the tests
are built from them.
"""

from __future__ import annotations

__all__ = [
    "OUTPUT_DATASET_TYPES",
    "bps_sigkill_and_restart",
    "bps_submit",
    "compare_collections",
    "completed_quanta",
    "pipetask_command",
    "run_checked",
    "sigkill_and_resume",
    "tool_environment",
]

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lsst.daf.butler import Butler

from ...io import resource_path, use_bliss_butler_config

OUTPUT_DATASET_TYPES = ("bliss_source", "bliss_catalog_samples", "bliss_deblended_models")
"""The tables BlissDRP writes per visit and detector."""

_LABEL = "blissDeblendMeasure"


def tool_environment(threads: int | None = None) -> dict[str, str]:
    """The environment of the tools: this Python's scripts first on ``PATH``, the package's Butler
    configuration on ``DAF_BUTLER_CONFIG_PATH``, and optionally a thread count for every library."""
    env = dict(os.environ)
    scripts = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([scripts, env.get("PATH", "")])
    env["PYTHONWARNINGS"] = "ignore"
    use_bliss_butler_config(env)
    if threads is not None:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = str(threads)
    return env


def run_checked(command: Sequence[str], cwd: str | Path | None = None, env: dict | None = None) -> float:
    """Run a command to completion; its wall time in seconds, or `RuntimeError` with its output's end."""
    start = time.perf_counter()
    completed = subprocess.run(
        list(command), cwd=cwd, capture_output=True, text=True, env=env or tool_environment()
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command[:2])} failed ({completed.returncode}):\n"
            f"{completed.stdout[-2000:]}\n{completed.stderr[-4000:]}"
        )
    return time.perf_counter() - start


def pipetask_command(
    repo: str,
    inputs: str,
    output: str,
    *options: str,
    pipeline: str | None = None,
    launcher: str = "pipetask",
) -> list[str]:
    """``pipetask run`` of BlissDRP (the packaged pipeline by default) with dataset type registration;
    ``launcher="bliss-pipetask"`` runs it through `pipetask_main` (quanta forked from a preloaded
    server)."""
    pipeline = pipeline or str(resource_path("pipelines", "BlissDRP.yaml"))
    return [
        launcher,
        "run",
        "-b",
        repo,
        "-i",
        inputs,
        "-o",
        output,
        "-p",
        pipeline,
        "--register-dataset-types",
        *options,
    ]


def completed_quanta(repo: str, collection: str, label: str = _LABEL) -> int:
    """How many quanta of ``label`` completed in ``collection`` (their task metadata datasets)."""
    with Butler.from_config(repo) as butler:
        return len(butler.query_datasets(f"{label}_metadata", collections=collection, explain=False))


def _rows_equal(a, b) -> bool:
    if a.colnames != b.colnames or len(a) != len(b):
        return False
    for name in a.colnames:
        left, right = np.asarray(a[name]), np.asarray(b[name])
        if left.shape != right.shape:
            return False
        if left.dtype.kind in "fc":
            if not np.array_equal(left, right, equal_nan=True):
                return False
        elif not np.array_equal(left, right):
            return False
    return True


def compare_collections(
    repo: str, first: str, second: str, dataset_types: Sequence[str] = OUTPUT_DATASET_TYPES
) -> dict[str, object]:
    """Compare every table of ``dataset_types`` in two collections, data ID by data ID.

    Returns
    -------
    comparison
        ``identical`` (bool), ``n_tables`` compared per collection, and
        ``differences`` (descriptions of the tables that differ or are missing).
    """
    differences: list[str] = []
    n_tables = 0
    with Butler.from_config(repo) as butler:
        for dataset_type in dataset_types:
            if not butler.registry.queryDatasetTypes(dataset_type):
                continue
            refs = [
                {
                    ref.dataId.required_values: ref
                    for ref in butler.query_datasets(dataset_type, collections=c, explain=False)
                }
                for c in (first, second)
            ]
            for key in sorted(set(refs[0]) | set(refs[1])):
                if key not in refs[0] or key not in refs[1]:
                    differences.append(f"{dataset_type} {key}: only in {first if key in refs[0] else second}")
                    continue
                n_tables += 1
                if not _rows_equal(butler.get(refs[0][key]), butler.get(refs[1][key])):
                    differences.append(f"{dataset_type} {key}: tables differ")
    return {"identical": not differences and n_tables > 0, "n_tables": n_tables, "differences": differences}


def sigkill_and_resume(
    repo: str,
    inputs: str,
    output: str,
    n_quanta: int,
    *options: str,
    pipeline: str | None = None,
    timeout_s: float = 600.0,
) -> dict[str, object]:
    """Start ``pipetask run``, SIGKILL it midway, then resume it as the documentation says.

    The process (its whole process group) is killed while it runs the quantum
    after the first half of ``n_quanta`` completed, so that the run holds some
    complete quanta and one interrupted.  The resume is ``pipetask run
    --extend-run --skip-existing --clobber-outputs`` with the same output.

    Returns
    -------
    record
        ``completed_before_kill`` (quanta complete when killed),
        ``killed_at_s``, ``resume_s``, and ``completed`` after the resume.
    """
    env = tool_environment()
    command = pipetask_command(repo, inputs, output, *options, pipeline=pipeline)
    kill_in_quantum = max(2, math.ceil(n_quanta / 2) + 1) if n_quanta > 1 else 1
    start = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    started_quanta = 0
    killed = False
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if "Constructing task and executing quantum" in line:
                started_quanta += 1
            # Kill during the inference of the chosen quantum (its task logs this line first).
            if started_quanta >= kill_in_quantum and "Running BLISS on" in line:
                os.killpg(process.pid, signal.SIGKILL)
                killed = True
                break
            if time.perf_counter() - start > timeout_s:
                break
    finally:
        if process.poll() is None:
            with_group = os.getpgid(process.pid) == process.pid
            if with_group:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
        process.wait()
    if not killed:
        raise RuntimeError(f"pipetask run ended (code {process.returncode}) before it could be killed.")
    killed_at_s = time.perf_counter() - start
    before = completed_quanta(repo, output)
    resume_s = run_checked(
        pipetask_command(
            repo,
            inputs,
            output,
            "--extend-run",
            "--skip-existing",
            "--clobber-outputs",
            *options,
            pipeline=pipeline,
        ),
        env=env,
    )
    return {
        "completed_before_kill": before,
        "killed_at_s": killed_at_s,
        "resume_s": resume_s,
        "completed": completed_quanta(repo, output),
    }


def bps_submit(
    repo: str,
    inputs: str,
    output: str,
    workdir: str | Path,
    *options: str,
    submit_file: str | Path | None = None,
    env: dict | None = None,
) -> float:
    """``bps submit`` of ``bps/bps_BlissDRP.yaml`` (its local Parsl site) from ``workdir``; wall time in s.

    ``workdir`` receives BPS's ``submit/`` directory and Parsl's ``runinfo/``.
    """
    submit_file = submit_file or resource_path("bps", "bps_BlissDRP.yaml")
    Path(workdir).mkdir(parents=True, exist_ok=True)
    command = ["bps", "submit", str(submit_file), "-b", repo, "-i", inputs, "-o", output, *options]
    # BPS puts submit/ under ${PWD}, which a child's working directory does not change by itself.
    env = {**(env or tool_environment()), "PWD": str(Path(workdir).resolve())}
    return run_checked(command, cwd=workdir, env=env)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux ``/proc``), children first found first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def _processes_naming(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (Linux ``/proc``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def bps_sigkill_and_restart(
    repo: str,
    inputs: str,
    output: str,
    workdir: str | Path,
    n_quanta: int,
    *options: str,
    timeout_s: float = 900.0,
) -> dict[str, object]:
    """``bps submit`` with one quantum per job and one job at a time, SIGKILLed midway, then ``bps restart``.

    When the job of the quantum after the first half has started, ``bps``
    and every process below it (Parsl's worker pool, the running job) are
    killed, as when the submitting node is lost; ``bps restart
    --wms-service-class lsst.ctrl.bps.parsl.ParslService --id SUBMIT_DIR``
    then runs what is left.

    Returns
    -------
    record
        ``killed_at_s``, ``restart_s`` and ``completed`` after the restart.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    submit = workdir / "bps_restart.yaml"
    submit.write_text(
        f"includeConfigs:\n  - {resource_path('bps', 'bps_BlissDRP.yaml')}\n"
        "cluster:\n  blissDetectors:\n    partitionMaxSize: 1\nsite:\n  local:\n    cores: 1\n"
    )
    env = {**tool_environment(), "PWD": str(workdir.resolve())}
    command = ["bps", "submit", str(submit), "-b", repo, "-i", inputs, "-o", output, *options]
    kill_in_job = max(2, math.ceil(n_quanta / 2) + 1) if n_quanta > 1 else 1
    start = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    submit_dir = None
    try:
        while process.poll() is None and time.perf_counter() - start < timeout_s:
            logs = list((workdir / "submit").glob("**/logs/blissDetectors/**/*.stdout"))
            if len(logs) >= kill_in_job:
                submit_dir = logs[0].parents[3]
                break
            time.sleep(0.5)
    finally:
        # Parsl starts its worker pool through a shell that exits, so the pool is found by its
        # script's path (under this run's runinfo/) as well as by descent.
        runinfo = str(workdir.resolve() / "runinfo")
        for pid in [process.pid, *_descendants(process.pid), *_processes_naming(runinfo)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait()
    if submit_dir is None:
        raise RuntimeError(f"bps submit ended (code {process.returncode}) before it could be killed.")
    killed_at_s = time.perf_counter() - start
    restart_s = run_checked(
        [
            "bps",
            "restart",
            "--wms-service-class",
            "lsst.ctrl.bps.parsl.ParslService",
            "--id",
            str(submit_dir),
        ],
        cwd=workdir,
        env=env,
    )
    return {"killed_at_s": killed_at_s, "restart_s": restart_s, "completed": completed_quanta(repo, output)}
