"""The Butler part of ``bliss-bench tables``: one demo detector through the deblend task, its outputs
stored in the repo and read back."""

from __future__ import annotations

__all__ = ["run_task_on_demo_detector"]

import tempfile
import time
from pathlib import Path

from lsst.daf.butler import Butler, DatasetType
from lsst.pipe.base import Struct

from .. import DEFAULT_MODEL_RUN, BlissDeblendMeasureConfig, BlissDeblendMeasureTask, ingest_model
from ._demo_repo import DemoRepoConfig, build_demo_repo


def run_task_on_demo_detector(size: int, seed: int) -> Struct:
    """Simulate one ``size`` x ``size`` demo detector in a temporary repo, run
    `BlissDeblendMeasureTask` on it (default config, IDs from the Butler's data ID), store its
    tables and read them back.

    Returns
    -------
    result
        ``bliss_source`` and ``bliss_catalog_samples`` as read back, ``models_bytes`` and
        ``calexp_bytes`` (file sizes of the stored ``bliss_deblended_models`` and calexp),
        ``calexp``, ``truth`` (``bliss_truth``), ``model`` and the times ``repo_build_s``,
        ``task_s``.
    """
    with tempfile.TemporaryDirectory(prefix="bliss-bench-tables-") as workdir:
        repo = str(Path(workdir) / "repo")
        start = time.perf_counter()
        summary = build_demo_repo(
            repo, DemoRepoConfig(n_visits=1, n_detectors=1, height=size, width=size, seed=seed)
        )
        ingest_model(repo)
        repo_build_s = time.perf_counter() - start
        collections = [summary["calexp_collection"], DEFAULT_MODEL_RUN]
        with Butler.from_config(repo, collections=collections, run="bench/tables", writeable=True) as butler:
            (calexp_ref,) = butler.query_datasets("calexp", explain=False)
            data_id = butler.registry.expandDataId(calexp_ref.dataId)
            calexp, model = butler.get(calexp_ref), butler.get("bliss_model", {})
            truth = butler.get("bliss_truth", data_id)
            config = BlissDeblendMeasureConfig()
            task = BlissDeblendMeasureTask(config=config)
            start = time.perf_counter()
            output = task.run(
                calexp,
                model,
                id_generator=config.id_generator.apply(data_id),
                visit=int(data_id["visit"]),
                detector=int(data_id["detector"]),
            )
            task_s = time.perf_counter() - start
            refs = {}
            for name in ("bliss_source", "bliss_catalog_samples", "bliss_deblended_models"):
                butler.registry.registerDatasetType(
                    DatasetType(
                        name, ("instrument", "visit", "detector"), "ArrowAstropy", universe=butler.dimensions
                    )
                )
                refs[name] = butler.put(getattr(output, name), name, data_id)
            return Struct(
                bliss_source=butler.get(refs["bliss_source"]),
                bliss_catalog_samples=butler.get(refs["bliss_catalog_samples"]),
                models_bytes=butler.getURI(refs["bliss_deblended_models"]).size(),
                calexp_bytes=butler.getURI(calexp_ref).size(),
                calexp=calexp,
                truth=truth,
                model=model,
                repo_build_s=repo_build_s,
                task_s=task_s,
            )
