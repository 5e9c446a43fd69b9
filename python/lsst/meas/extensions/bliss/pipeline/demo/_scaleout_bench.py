"""The run of ``bliss-bench scaleout`` (options in ``bench._scaleout_suite``); see that module for what it
measures.  It needs the Rubin middleware, the ``bps`` command and PostgreSQL server binaries."""

from __future__ import annotations

__all__ = ["run_scaleout_suite"]

import argparse
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lsst.daf.butler import Butler

from ...inference import infer_frame
from ...io import resource_path, use_bliss_butler_config
from .. import DEFAULT_MODEL_RUN, exposure_pixels, ingest_model, psf_kernel_function
from .._deblend_task import BLISS_INVALID_PLANE, BlissDeblendMeasureConfig
from ._demo_repo import DemoRepoConfig, build_demo_repo
from ._postgres import temporary_postgres
from ._scaleout import (
    bps_sigkill_and_restart,
    bps_submit,
    compare_collections,
    completed_quanta,
    pipetask_command,
    run_checked,
    sigkill_and_resume,
    tool_environment,
)


def _file_state(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), stat.S_IMODE(path.stat().st_mode)


def _peak_rss_gib(metadata: Any) -> float | None:
    """The quantum's peak resident memory from its task metadata (pipe_base records it in bytes)."""
    quantum = metadata.get("quantum") if hasattr(metadata, "get") else None
    if quantum is None:
        return None
    for key in ("endMaxResidentSetSize", "startMaxResidentSetSize"):
        if key in quantum:
            return float(quantum[key]) / 2**30
    return None


def _shared_repo_parts(args: argparse.Namespace, workdir: Path, results: dict[str, Any]) -> None:

    n_quanta = 3 if args.quick else 4
    size = 96 if args.quick else 256
    options = ("-c", "blissDeblendMeasure:inference.n_samples=4") if args.quick else ()
    repo = str(workdir / "shared_repo")
    with temporary_postgres() as server:
        start = time.perf_counter()
        summary = build_demo_repo(
            repo,
            DemoRepoConfig(n_visits=1, n_detectors=n_quanta, height=size, width=size, seed=args.seed),
            registry_db=server.url,
        )
        config = Path(repo) / "butler.yaml"
        before = _file_state(config)
        run_checked(["butler", "bliss-register", repo])
        run_checked(["butler", "bliss-ingest-model", repo])
        results["repo_config_unchanged"] = _file_state(config) == before
        results["shared_repo_build_s"] = time.perf_counter() - start
        inputs = f"{summary['calexp_collection']},{DEFAULT_MODEL_RUN}"
        results["n_quanta"] = n_quanta
        results["shared_repo_detector_size"] = size

        results["postgres_pipetask_s"] = run_checked(pipetask_command(repo, inputs, "bench/clean", *options))
        results["postgres_completed"] = completed_quanta(repo, "bench/clean")

        restart = sigkill_and_resume(repo, inputs, "bench/restart", n_quanta, *options)
        comparison = compare_collections(repo, "bench/clean", "bench/restart")
        results["restart"] = {**restart, **comparison}
        results["restart_identical"] = bool(comparison["identical"] and restart["completed"] == n_quanta)

        bps_options = ("--extra-qgraph-options", " ".join(options)) if options else ()
        results["bps_submit_s"] = bps_submit(repo, inputs, "bench/bps", workdir / "bps", *bps_options)
        results["bps_completed"] = completed_quanta(repo, "bench/bps")
        bps_comparison = compare_collections(repo, "bench/clean", "bench/bps")
        results["bps_identical"] = bool(bps_comparison["identical"])
        results["bps_differences"] = bps_comparison["differences"]

        if not args.quick:
            # BPS's own restart after the submitting process and its workers were SIGKILLed.
            bps_restart = bps_sigkill_and_restart(
                repo, inputs, "bench/bps-restart", workdir / "bps_restart", n_quanta, *bps_options
            )
            comparison = compare_collections(repo, "bench/clean", "bench/bps-restart")
            results["bps_restart"] = {**bps_restart, **comparison}
            results["bps_restart_identical"] = bool(
                comparison["identical"] and bps_restart["completed"] == n_quanta
            )


def _throughput_part(args: argparse.Namespace, workdir: Path, results: dict[str, Any]) -> None:

    n_detectors = args.detectors or (4 if args.quick else 8)
    size = args.size or (1024 if args.quick else 4096)
    jobs = args.jobs
    repo = str(workdir / "throughput_repo")
    start = time.perf_counter()
    summary = build_demo_repo(
        repo, DemoRepoConfig(n_visits=1, n_detectors=n_detectors, height=size, width=size, seed=args.seed)
    )
    ingest_model(repo)
    inputs = f"{summary['calexp_collection']},{DEFAULT_MODEL_RUN}"
    throughput: dict[str, Any] = {
        "n_detectors": n_detectors,
        "size": size,
        "jobs": jobs,
        "runner": args.runner,
        "start_method": args.start_method if args.runner != "bps" else None,
        "repo_build_s": time.perf_counter() - start,
        "load_average_before": os.getloadavg(),
    }
    output = "bench/throughput"
    no_deblend = "blissDeblendMeasure:do_deblend=False"
    if args.runner != "bps":
        throughput["pipeline_s"] = run_checked(
            pipetask_command(
                repo,
                inputs,
                output,
                "-j",
                str(jobs),
                "--start-method",
                args.start_method,
                "-c",
                no_deblend,
                launcher=args.runner,
            )
        )
    else:
        # One cluster per job, so that each process start is paid once per cluster.
        submit = workdir / "bps_throughput.yaml"
        per_job = -(-n_detectors // jobs)
        submit.write_text(
            f"includeConfigs:\n  - {resource_path('bps', 'bps_BlissDRP.yaml')}\n"
            f"cluster:\n  blissDetectors:\n    partitionMaxSize: {per_job}\n"
            f"site:\n  local:\n    cores: {jobs}\n"
        )
        throughput["pipeline_s"] = bps_submit(
            repo,
            inputs,
            output,
            workdir / "bps_throughput",
            "--extra-qgraph-options",
            f"-c {no_deblend}",
            submit_file=submit,
            env=tool_environment(),
        )
    throughput["completed"] = completed_quanta(repo, output)

    config = BlissDeblendMeasureConfig()
    threads_before = torch.get_num_threads()
    # The reference: one process, the same total threads; the loop is repeated with one thread so that
    # the per-job ideal (one-thread time / jobs) is known too, which a busy machine's threading skews less.
    direct_s = {jobs: 0.0, 1: 0.0}
    read_s = 0.0
    task_inference_s = 0.0
    peak_rss = []
    try:
        with Butler.from_config(repo, collections=[output, *inputs.split(",")]) as butler:
            model = butler.get("bliss_model")
            for ref in butler.query_datasets("calexp", collections=summary["calexp_collection"]):
                read_start = time.perf_counter()
                calexp = butler.get(ref)
                pixels = exposure_pixels(calexp, config.inference.invalid_mask_planes)
                psf = psf_kernel_function(calexp)
                read_s += time.perf_counter() - read_start
                visit, detector = int(ref.dataId["visit"]), int(ref.dataId["detector"])
                seed = int(
                    np.random.SeedSequence([config.inference.seed, visit, detector]).generate_state(1)[0]
                )
                for threads in direct_s:
                    torch.set_num_threads(threads)
                    infer_start = time.perf_counter()
                    infer_frame(
                        model,
                        pixels.image,
                        pixels.variance,
                        pixels.invalid.astype(np.uint8),
                        psf,
                        config.frame_config(seed),
                        mask_plane_bits={BLISS_INVALID_PLANE: 0},
                    )
                    direct_s[threads] += time.perf_counter() - infer_start
                metadata = butler.get("blissDeblendMeasure_metadata", ref.dataId)
                task_inference_s += float(metadata["blissDeblendMeasure"]["time_total_s"])
                peak = _peak_rss_gib(metadata)
                if peak is not None:
                    peak_rss.append(peak)
                del calexp, pixels
    finally:
        torch.set_num_threads(threads_before)
    throughput.update(
        {
            "direct_inference_s": direct_s[jobs],
            "direct_inference_one_thread_s": direct_s[1],
            "direct_read_s": read_s,
            "task_inference_s": task_inference_s,
            "peak_rss_gib": max(peak_rss) if peak_rss else None,
            "load_average_after": os.getloadavg(),
        }
    )
    # The pipeline's wall time over the ideal of JOBS one-thread workers that only infer.
    throughput["overhead_ratio_vs_one_thread_jobs"] = throughput["pipeline_s"] / (direct_s[1] / jobs)
    results["throughput"] = throughput
    results["per_detector_overhead_ratio"] = throughput["pipeline_s"] / direct_s[jobs]
    # A script that reads each calexp through the Butler before inferring: the reads are then the
    # reference's cost too, and what remains is what the pipeline itself adds.
    results["per_detector_overhead_ratio_reads_in_reference"] = throughput["pipeline_s"] / (
        direct_s[jobs] + read_s
    )


def run_scaleout_suite(args: argparse.Namespace) -> dict[str, Any]:
    """Run the suite; returns the JSON results and a ``summary``."""
    # This process's Butlers, and the tools it starts, learn the BlissModel storage class.
    use_bliss_butler_config()
    results: dict[str, Any] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bliss-bench-scaleout-") as workdir:
        _shared_repo_parts(args, Path(workdir), results)
        results["shared_parts_s"] = time.perf_counter() - start
        _throughput_part(args, Path(workdir), results)
    results["total_s"] = time.perf_counter() - start
    throughput = results["throughput"]
    results["summary"] = (
        f"scaleout: bps_completed {results['bps_completed']}/{results['n_quanta']}, "
        f"postgres_completed {results['postgres_completed']}/{results['n_quanta']}, "
        f"restart_identical {results['restart_identical']}, "
        f"repo_config_unchanged {results['repo_config_unchanged']}; "
        f"{throughput['n_detectors']} x {throughput['size']}^2 detectors: {throughput['runner']} "
        f"(-j {throughput['jobs']}) {throughput['pipeline_s']:.1f} s vs infer_frame loop "
        f"{throughput['direct_inference_s']:.1f} s: per_detector_overhead_ratio = "
        f"{results['per_detector_overhead_ratio']:.2f} (with the loop's reads: "
        f"{results['per_detector_overhead_ratio_reads_in_reference']:.2f}; against {throughput['jobs']} "
        "one-thread loops: "
        f"{throughput['overhead_ratio_vs_one_thread_jobs']:.2f}; total {results['total_s']:.0f} s)"
    )
    return results
