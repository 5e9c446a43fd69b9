"""BlissDRP beyond one pipetask process: a PostgreSQL registry, SIGKILL and resume, bps submit with Parsl.

One module-scoped PostgreSQL server (Debian's server binaries, run as the ``postgres`` system user
when the tests run as root, on a free port of 127.0.0.1, in a temporary directory) holds the
registry of a tiny demo repo; every run below reads from and writes to it.
"""

import stat
from pathlib import Path

import pytest
import yaml
from lsst.daf.butler.cli.cliLog import CliLog

from lsst.meas.extensions.bliss.pipeline import DEFAULT_MODEL_RUN, forks_quanta, pipetask_arguments
from lsst.meas.extensions.bliss.pipeline.demo import (
    DemoRepoConfig,
    bps_submit,
    build_demo_repo,
    compare_collections,
    completed_quanta,
    pipetask_command,
    run_checked,
    sigkill_and_resume,
    temporary_postgres,
)

N_DETECTORS = 3


@pytest.fixture(scope="module")
def postgres():
    with temporary_postgres() as server:
        yield server


@pytest.fixture(scope="module")
def repo(postgres, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("scaleout") / "repo"
    summary = build_demo_repo(
        root,
        DemoRepoConfig(n_visits=1, n_detectors=N_DETECTORS, height=96, width=96, seed=11),
        registry_db=postgres.url,
    )
    config = root / "butler.yaml"
    before = (config.read_bytes(), stat.S_IMODE(config.stat().st_mode))
    run_checked(["butler", "bliss-register", str(root)])
    run_checked(["butler", "bliss-ingest-model", str(root)])
    summary["config_unchanged"] = before == (config.read_bytes(), stat.S_IMODE(config.stat().st_mode))
    summary["root"] = str(root)
    summary["inputs"] = f"{summary['calexp_collection']},{DEFAULT_MODEL_RUN}"
    run_checked(
        pipetask_command(
            str(root), summary["inputs"], "u/test/clean", "-c", "blissDeblendMeasure:inference.n_samples=4"
        )
    )
    return summary


def test_registration_leaves_the_shared_repo_config_alone(repo: dict) -> None:
    assert repo["config_unchanged"]
    registry = yaml.safe_load((Path(repo["root"]) / "butler.yaml").read_text())["registry"]
    assert registry["db"].startswith("postgresql://")


def test_blissdrp_runs_against_a_postgresql_registry(repo: dict) -> None:
    assert completed_quanta(repo["root"], "u/test/clean") == N_DETECTORS


def test_sigkill_midway_then_resume_gives_the_clean_tables(repo: dict) -> None:
    record = sigkill_and_resume(
        repo["root"],
        repo["inputs"],
        "u/test/restart",
        N_DETECTORS,
        "-c",
        "blissDeblendMeasure:inference.n_samples=4",
    )
    assert 1 <= record["completed_before_kill"] < N_DETECTORS
    assert record["completed"] == N_DETECTORS
    comparison = compare_collections(repo["root"], "u/test/clean", "u/test/restart")
    assert comparison["identical"], comparison["differences"]
    assert comparison["n_tables"] == 3 * N_DETECTORS


def test_bps_submit_with_the_local_parsl_site(repo: dict, tmp_path: Path) -> None:
    bps_submit(
        repo["root"],
        repo["inputs"],
        "u/test/bps",
        tmp_path,
        "--extra-qgraph-options",
        "-c blissDeblendMeasure:inference.n_samples=4",
    )
    assert completed_quanta(repo["root"], "u/test/bps") == N_DETECTORS
    comparison = compare_collections(repo["root"], "u/test/clean", "u/test/bps")
    assert comparison["identical"], comparison["differences"]


@pytest.mark.parametrize(
    ("launcher", "start_method"),
    [("pipetask", ["--start-method", "forkserver"]), ("bliss-pipetask", [])],
    ids=["pipetask-forkserver", "bliss-pipetask"],
)
def test_parallel_quanta_from_a_forkserver_give_the_clean_tables(
    repo: dict, launcher: str, start_method: list[str]
) -> None:
    """``pipetask run -j 2 --start-method forkserver`` and ``bliss-pipetask run -j 2`` (which adds the
    start method and preloads its server), the throughput bench's ways of running quanta side by side:
    every quantum completes and writes the same tables as the one-process run."""
    output = f"u/test/{launcher}"
    run_checked(
        pipetask_command(
            repo["root"],
            repo["inputs"],
            output,
            "-j",
            "2",
            *start_method,
            "-c",
            "blissDeblendMeasure:inference.n_samples=4",
            launcher=launcher,
        )
    )
    assert completed_quanta(repo["root"], output) == N_DETECTORS
    comparison = compare_collections(repo["root"], "u/test/clean", output)
    assert comparison["identical"], comparison["differences"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "-b", "R", "-j", "2"], ["run", "-b", "R", "-j", "2", "--start-method", "forkserver"]),
        (
            ["--log-level", "DEBUG", "run", "-j", "2"],
            ["--log-level", "DEBUG", "run", "-j", "2", "--start-method", "forkserver"],
        ),
        (["--long-log", "run", "--start-method", "spawn"], ["--long-log", "run", "--start-method", "spawn"]),
        (["run", "--start-method=spawn"], ["run", "--start-method=spawn"]),
        (["qgraph", "-b", "R"], ["qgraph", "-b", "R"]),
        (["--help"], ["--help"]),
    ],
)
def test_bliss_pipetask_adds_the_forkserver_only_to_a_run_without_start_method(
    argv: list[str], expected: list[str]
) -> None:
    assert pipetask_arguments(argv) == expected


def test_bliss_pipetask_leaves_logging_to_pipetask() -> None:
    """Reading the command line sets up no logging, so ``--long-log`` and the like before ``run`` still
    take effect when pipetask parses them."""
    CliLog.resetLog()
    pipetask_arguments(["--long-log", "--log-level", "DEBUG", "run", "-j", "2"])
    assert CliLog.configState == []


@pytest.mark.parametrize(
    ("argv", "forks"),
    [
        (["run", "-j", "2", "--start-method", "forkserver"], True),
        (["run", "-j2", "--start-method=forkserver"], True),
        (["run", "--processes=4", "--start-method", "forkserver"], True),
        (["run", "-j", "1", "--start-method", "forkserver"], False),
        (["run", "-j", "2", "--start-method", "spawn"], False),
        (["run", "--start-method", "forkserver"], False),
        (["qgraph", "-j", "2", "--start-method", "forkserver"], False),
    ],
)
def test_bliss_pipetask_starts_its_server_early_only_for_parallel_forked_runs(
    argv: list[str], forks: bool
) -> None:
    assert forks_quanta(argv) == forks
