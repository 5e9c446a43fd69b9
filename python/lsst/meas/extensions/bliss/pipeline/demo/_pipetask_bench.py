"""``bliss-bench pipetask``: the cost of running BLISS as a pipeline stage.

One simulated 2048 x 2048 calexp (spatially varying PSF, masks) goes into a
fresh Butler repo with the default model.  The suite times a complete
``pipetask run`` of ``pipelines/BlissDRP.yaml`` on it (process start,
imports, quantum-graph build, reads, inference, table writes) and, in the
same run, `infer_frame` called directly on the same pixels with the same
PSF and options; ``pipetask_overhead_ratio`` is the first over the second.
Both leave out the task's deblending step (``do_deblend=False``), which is
work beyond the inference.
"""

from __future__ import annotations

__all__ = ["run_pipetask_suite"]

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lsst.daf.butler import Butler

from ...inference import infer_frame
from ...io import resource_path
from .. import DEFAULT_MODEL_RUN, children, exposure_pixels, ingest_model, psf_kernel_function
from .._deblend_task import BLISS_INVALID_PLANE, BlissDeblendMeasureConfig
from ._demo_repo import DemoRepoConfig, build_demo_repo
from ._scaleout import pipetask_command, run_checked, tool_environment


def run_pipetask_suite(args: argparse.Namespace) -> dict[str, Any]:
    """Run the suite (options in ``bench._pipetask_options``); returns the JSON results and a ``summary``."""
    size = args.size or (512 if args.quick else 2048)
    pipeline = args.pipeline if args.pipeline is not None else resource_path("pipelines", "BlissDRP.yaml")
    if not pipeline.is_file():
        raise FileNotFoundError(f"Pipeline {pipeline} not found; pass --pipeline.")
    results: dict[str, Any] = {"size": size, "pipeline": str(pipeline)}
    with tempfile.TemporaryDirectory(prefix="bliss-bench-pipetask-") as workdir:
        repo = str(Path(workdir) / "repo")
        start = time.perf_counter()
        summary = build_demo_repo(
            repo, DemoRepoConfig(n_visits=1, n_detectors=1, height=size, width=size, seed=args.seed)
        )
        ingest_model(repo)
        results["repo_build_s"] = time.perf_counter() - start
        inputs = f"{summary['calexp_collection']},{DEFAULT_MODEL_RUN}"

        def pipetask_run(output: str, *options: str) -> float:
            # Deblending is work beyond the inference the direct call does; leave it out of both.
            no_deblend = ("-c", "blissDeblendMeasure:do_deblend=False")
            command = pipetask_command(repo, inputs, output, *no_deblend, *options, pipeline=str(pipeline))
            return run_checked(command, env=tool_environment())

        # pipetask runs each quantum on one thread unless told otherwise (parallelism comes from -j);
        # the like-for-like comparison lets torch use the same cores as the direct call.
        pipetask_s = pipetask_run("bench/bliss", "--enable-implicit-threading")
        single_thread_s = pipetask_run("bench/bliss-1thread")

        butler = Butler.from_config(repo, collections=["bench/bliss", *inputs.split(",")])
        try:
            (ref,) = butler.query_datasets("calexp", explain=False)
            calexp = butler.get(ref)
            model = butler.get("bliss_model")
            n_pipetask = len(children(butler.get("bliss_source", ref.dataId)))
            metadata = butler.get("blissDeblendMeasure_metadata", ref.dataId)
            single_metadata = butler.get(
                "blissDeblendMeasure_metadata", ref.dataId, collections=["bench/bliss-1thread"]
            )
        finally:
            butler.close()
        task_config = BlissDeblendMeasureConfig()
        pixels = exposure_pixels(calexp, task_config.inference.invalid_mask_planes)
        start = time.perf_counter()
        direct = infer_frame(
            model,
            pixels.image,
            pixels.variance,
            pixels.invalid.astype(np.uint8),
            psf_kernel_function(calexp),
            task_config.frame_config(seed=0),
            mask_plane_bits={BLISS_INVALID_PLANE: 0},
        )
        direct_s = time.perf_counter() - start
    task_metadata = metadata["blissDeblendMeasure"]
    task_inference_s = float(task_metadata["time_total_s"])
    task_stage_s = {
        key.removeprefix("time_").removesuffix("_s"): float(value)
        for key, value in task_metadata.items()
        if key.startswith("time_") and key.endswith("_s")
    }
    single_task_inference_s = float(single_metadata["blissDeblendMeasure"]["time_total_s"])
    results.update(
        {
            "pipetask_s": pipetask_s,
            "direct_inference_s": direct_s,
            "task_inference_s": task_inference_s,
            "torch_threads": torch.get_num_threads(),
            "pipetask_single_thread_s": single_thread_s,
            "task_inference_single_thread_s": single_task_inference_s,
            "pipetask_overhead_ratio": pipetask_s / direct_s,
            "n_sources_pipetask": n_pipetask,
            "n_sources_direct": int(direct.catalog.n_sources[0]),
            "direct_stage_s": direct.timings,
            "task_stage_s": task_stage_s,
        }
    )
    results["summary"] = (
        f"pipetask: {size}x{size} calexp; pipetask run --enable-implicit-threading {pipetask_s:.1f} s "
        f"(inference inside the task {task_inference_s:.1f} s; default one-thread run "
        f"{single_thread_s:.1f} s), "
        f"infer_frame directly ({torch.get_num_threads()} threads) {direct_s:.1f} s; "
        f"pipetask_overhead_ratio = {results['pipetask_overhead_ratio']:.2f}"
    )
    return results
