"""BlissDeblendMeasureTask and BlissTrainTask in a Butler: pipe_base test utilities, errors, pipetask runs."""

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import astropy.units as u
import numpy as np
import pytest
from astropy.table import Table
from lsst.daf.butler import Butler
from lsst.daf.butler.tests import addDatasetType, makeTestRepo
from lsst.images import Image, VisitImage
from lsst.images.fields import ChebyshevField
from lsst.pex.config import FieldValidationError
from lsst.pipe.base import AnnotatedPartialOutputsError, NoWorkFound, Pipeline, UnprocessableDataError
from lsst.pipe.base.simple_pipeline_executor import SimplePipelineExecutor
from lsst.pipe.base.testUtils import assertValidOutput, lintConnections, makeQuantum, runTestQuantum

from lsst.meas.extensions.bliss import MissingAutoencoderError, match_sources
from lsst.meas.extensions.bliss.cli import bench_main
from lsst.meas.extensions.bliss.pipeline import (
    BLISS_INVALID_PLANE,
    DEFAULT_MODEL_RUN,
    MODEL_STORAGE_CLASS,
    BlissDeblendMeasureConfig,
    BlissDeblendMeasureConnections,
    BlissDeblendMeasureTask,
    BlissTrainConnections,
    BlissValidateSummaryTask,
    BlissValidateTask,
    IncompatibleExposureError,
    IncompatibleModelError,
    NonFiniteOutputError,
    children,
    ingest_model,
    register_bliss_storage_class,
    scene_model_from_table,
)
from lsst.meas.extensions.bliss.pipeline.demo import (
    DemoRepoConfig,
    build_demo_repo,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
PIPELINE = REPO_ROOT / "pipelines" / "BlissDRP.yaml"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A repo with one visit x two small detectors and the default model."""
    root = tmp_path_factory.mktemp("pipeline") / "repo"
    summary = build_demo_repo(
        str(root), DemoRepoConfig(n_visits=1, n_detectors=2, height=160, width=128, seed=4)
    )
    ingest_model(root)
    summary["root"] = str(root)
    summary["inputs"] = [summary["calexp_collection"], DEFAULT_MODEL_RUN]
    return summary


def task_config(**changes) -> BlissDeblendMeasureConfig:
    config = BlissDeblendMeasureConfig()
    config.inference.n_samples = 4
    config.inference.device = "cpu"
    for name, value in changes.items():
        *sections, field = name.split(".")
        target = config
        for section in sections:
            target = getattr(target, section)
        setattr(target, field, value)
    return config


def test_connections_lint() -> None:
    lintConnections(BlissDeblendMeasureConnections)
    lintConnections(BlissTrainConnections)


@pytest.fixture
def quantum_repo(demo: dict, tmp_path: Path) -> tuple[Butler, dict]:
    """A makeTestRepo repo holding one demo calexp and the default model in one RUN collection."""
    source = Butler.from_config(demo["root"], collections=demo["inputs"])
    (calexp_ref, *_) = source.query_datasets("calexp", explain=False)
    calexp, model = source.get(calexp_ref), source.get("bliss_model", {})
    visit, detector = calexp_ref.dataId["visit"], calexp_ref.dataId["detector"]
    source.close()
    root = str(tmp_path / "test_repo")
    makeTestRepo(
        root,
        {"instrument": ["BlissSim"], "physical_filter": ["r_sim"], "visit": [visit], "detector": [detector]},
    )
    register_bliss_storage_class(root)
    butler = Butler.from_config(root, run="test/quantum", writeable=True)
    addDatasetType(butler, "calexp", {"instrument", "visit", "detector"}, "VisitImage")
    addDatasetType(butler, "bliss_model", set(), MODEL_STORAGE_CLASS)
    for name in ("bliss_source", "bliss_catalog_samples", "bliss_deblended_models"):
        addDatasetType(butler, name, {"instrument", "visit", "detector"}, "ArrowAstropy")
    data_id = {"instrument": "BlissSim", "visit": visit, "detector": detector}
    butler.put(calexp, "calexp", data_id)
    butler.put(model, "bliss_model", {})
    return butler, data_id


def quantum_task(butler: Butler, data_id: dict) -> tuple[BlissDeblendMeasureTask, object]:
    config = task_config(galaxy_model="autoencoder")
    # makeTestRepo's instrument record has no visit_max/detector_max for the ID packer.
    config.id_generator.packer.n_detectors = 10
    config.id_generator.packer.n_observations = 10_000
    task = BlissDeblendMeasureTask(config=config)
    quantum = makeQuantum(
        task,
        butler,
        data_id,
        {
            "calexp": data_id,
            "bliss_model": {},
            "bliss_source": data_id,
            "bliss_catalog_samples": data_id,
            "bliss_deblended_models": data_id,
        },
    )
    return task, quantum


def test_quantum_with_and_without_mocking(quantum_repo) -> None:
    butler, data_id = quantum_repo
    task, quantum = quantum_task(butler, data_id)
    run = runTestQuantum(task, butler, quantum, mockRun=True)
    run.assert_called_once()
    assert {"calexp", "bliss_model"} <= set(run.call_args.kwargs)

    runTestQuantum(task, butler, quantum, mockRun=False)
    sources = butler.get("bliss_source", data_id)
    samples = butler.get("bliss_catalog_samples", data_id)
    assert len(sources) > 0 and set(np.unique(samples["sample"])) <= set(range(4))
    assert (sources["visit"] == data_id["visit"]).all() and (sources["detector"] == data_id["detector"]).all()
    for name in sources.colnames:
        assert sources[name].description, name
    assert sources["bliss_flux"].unit == "nJy" and sources["coord_ra"].unit == "deg"
    detected = children(sources)
    assert task.metadata["n_sources"] == len(detected)
    assert task.metadata["n_blend_families"] == len(sources) - len(detected)
    # Deblending: measurements in bliss_source, one model per source, and the scene model.
    models = butler.get("bliss_deblended_models", data_id)
    assert list(models["sourceId"]) == list(detected["sourceId"]) and models["flux"].unit == "nJy"
    sources = detected
    assert {"bliss_deblend_flux", "bliss_e1", "bliss_moments_failed_flag"} <= set(sources.colnames)
    good = ~np.asarray(sources["bliss_moments_failed_flag"])
    assert good.sum() > 0 and np.isfinite(np.ma.getdata(sources["bliss_e1"])[good]).all()
    assert np.ma.getmaskarray(sources["bliss_e1"])[~good].all()  # undefined values are masked, not NaN
    calexp = butler.get("calexp", data_id)
    height, width = calexp.image.array.shape
    with pytest.raises(ValueError, match="needs the autoencoder"):
        scene_model_from_table(models, int(calexp.bbox.x.start), int(calexp.bbox.y.start), height, width)
    scene = scene_model_from_table(
        models,
        int(calexp.bbox.x.start),
        int(calexp.bbox.y.start),
        height,
        width,
        autoencoder=butler.get("bliss_model", {}).autoencoder,
    )
    # The scene model holds every bright source (their fluxes against the truth: the next test).
    bright = (np.asarray(sources["bliss_flux"]) > 5000) & ~np.asarray(sources["bliss_masked_flag"])
    x = np.round(np.asarray(sources["x"])[bright]).astype(int) - int(calexp.bbox.x.start)
    y = np.round(np.asarray(sources["y"])[bright]).astype(int) - int(calexp.bbox.y.start)
    assert (scene[y, x] > 0).all()
    # Galaxies are modelled by the autoencoder, with their latent posteriors; stars have none.
    autoencoder = np.asarray(models["model_type"]) == "autoencoder"
    assert autoencoder.any() and task.metadata["n_autoencoder_models"] == autoencoder.sum()
    latents = models["ae_latent_mean"]
    assert latents.shape[1] == 8 and np.isfinite(np.ma.getdata(latents)[autoencoder]).all()
    assert np.ma.getmaskarray(latents)[~autoencoder].all()

    result = task.run(butler.get("calexp", data_id), butler.get("bliss_model", {}))
    assertValidOutput(task, result)


def test_deblended_fluxes_of_bright_sources_match_the_truth(tmp_path: Path) -> None:
    """On a demo detector without the saturated star (whose wings dominate the small detectors of the
    module's repo; `bliss-bench saturation` measures its neighbours), the deblended fluxes of the bright
    sources clear of masked pixels match the truth in the median."""
    root = tmp_path / "repo"
    summary = build_demo_repo(
        str(root),
        DemoRepoConfig(n_visits=1, n_detectors=1, height=160, width=128, seed=4, saturated_star_mag=None),
    )
    ingest_model(root)
    butler = Butler.from_config(str(root), collections=[summary["calexp_collection"], DEFAULT_MODEL_RUN])
    (ref,) = butler.query_datasets("calexp", explain=False)
    truth = butler.get("bliss_truth", ref.dataId)
    sources = (
        BlissDeblendMeasureTask(config=task_config(galaxy_model="autoencoder"))
        .run(butler.get(ref), butler.get("bliss_model", {}))
        .bliss_source
    )
    sources = children(sources)
    clean = ~np.asarray(sources["bliss_masked_flag"])
    bright = np.asarray(truth["flux"]) > 2000  # SNR ~20 at the demo's depth
    match = match_sources(
        np.asarray(truth["x"])[bright],
        np.asarray(truth["y"])[bright],
        np.asarray(sources["x"])[clean],
        np.asarray(sources["y"])[clean],
        2.0,
    )
    assert match.n_matched >= 3
    deblended = np.ma.getdata(sources["bliss_deblend_flux"])[clean][match.est_index]
    assert 0.8 < np.median(deblended / np.asarray(truth["flux"])[bright][match.true_index]) < 1.2


def test_a_model_without_autoencoder_fails_only_when_deblending_needs_it(demo: dict) -> None:
    butler = Butler.from_config(demo["root"], collections=demo["inputs"])
    (ref, *_) = butler.query_datasets("calexp", explain=False)
    calexp, model = butler.get(ref), butler.get("bliss_model", {})
    model.autoencoder = None
    with pytest.raises(MissingAutoencoderError, match="galaxy_model='autoencoder'"):
        BlissDeblendMeasureTask(config=task_config(galaxy_model="autoencoder")).run(calexp, model)
    parametric = BlissDeblendMeasureTask(config=task_config()).run(calexp, model)  # the default
    assert (np.asarray(parametric.bliss_deblended_models["model_type"]) == "parametric").all()
    catalogs_only = BlissDeblendMeasureTask(config=task_config(do_deblend=False)).run(calexp, model)
    assert catalogs_only.bliss_deblended_models is None and len(catalogs_only.bliss_source) > 0


def test_out_of_range_exposures_are_refused_unless_flagged(demo: dict) -> None:
    """Another pixel scale or band fails the run (IncompatibleModelError); a PSF outside the trained
    range is this exposure's problem (IncompatibleExposureError); 'flag' processes and flags both."""
    butler = Butler.from_config(demo["root"], collections=demo["inputs"])
    (ref, *_) = butler.query_datasets("calexp", explain=False)
    calexp, model = butler.get(ref), butler.get("bliss_model", {})
    other_scale = copy.copy(model)
    other_scale.conditions = model.conditions.replace(pixel_scale_arcsec=0.26)
    strict = BlissDeblendMeasureTask(config=task_config())
    with pytest.raises(IncompatibleModelError, match=r"pixel scale 0\.2 arcsec/px .*\(pixel_scale_rtol\)"):
        strict.run(calexp, other_scale)
    assert strict.metadata["compatibility_problems"] == 1
    narrow_psf = copy.copy(model)
    narrow_psf.simulator = dataclasses.replace(model.simulator, psf_fwhm_range_arcsec=(1.4, 1.5))
    with pytest.raises(IncompatibleExposureError, match=r"PSF FWHM .*\(psf_fwhm_margin_arcsec\)"):
        strict.run(calexp, narrow_psf)
    lenient = BlissDeblendMeasureTask(config=task_config(**{"inference.out_of_range": "flag"}))
    result = lenient.run(calexp, other_scale)
    assert lenient.metadata["compatibility_problems"] == 1
    flags = np.asarray(result.bliss_source["bliss_out_of_range_flag"])
    assert len(flags) > 0 and flags.all()
    plain = BlissDeblendMeasureTask(config=task_config()).run(calexp, model)
    assert not np.asarray(plain.bliss_source["bliss_out_of_range_flag"]).any()


def test_pipetask_fails_on_a_model_of_another_band(demo: dict, tmp_path: Path) -> None:
    """A model/exposure mismatch that no exposure can pass ends `pipetask run` non-zero, naming it."""
    model = Butler.from_config(demo["root"], collections=demo["inputs"]).get("bliss_model", {})
    other_band = copy.copy(model)
    other_band.conditions = model.conditions.replace(band="i")
    other_band.band_conditions = ()  # an i-band-only model
    ingest_model(demo["root"], other_band, run="bliss/models/i_band")
    inputs = [demo["calexp_collection"], "bliss/models/i_band"]
    completed = pipetask(
        "run",
        "-b",
        demo["root"],
        "-i",
        ",".join(inputs),
        "-o",
        "u/test/wrong_band",
        "-p",
        str(PIPELINE),
        "--register-dataset-types",
        check=False,
    )
    assert completed.returncode != 0
    assert (
        "IncompatibleModelError" in completed.stderr
        and "band 'r' is not among the model's trained bands ['i']" in completed.stderr
        and "butler bliss-ingest-model" in completed.stderr
    )


def test_fully_masked_image_is_no_work(demo: dict) -> None:
    butler = Butler.from_config(demo["root"], collections=demo["inputs"])
    (ref, *_) = butler.query_datasets("calexp", explain=False)
    calexp = butler.get(ref)
    calexp.mask.set("BAD")
    with pytest.raises(NoWorkFound, match="No valid pixel"):
        BlissDeblendMeasureTask(config=task_config()).run(calexp, butler.get("bliss_model", {}))


def test_samples_failure_keeps_the_source_table_as_partial_output(quantum_repo, monkeypatch) -> None:
    butler, data_id = quantum_repo
    task, quantum = quantum_task(butler, data_id)

    def broken_samples(*args, **kwargs):
        raise NonFiniteOutputError("bliss_catalog_samples", ["bliss_flux"])

    monkeypatch.setattr(task, "make_samples_table", broken_samples)
    with pytest.raises(AnnotatedPartialOutputsError):
        runTestQuantum(task, butler, quantum, mockRun=False)
    assert butler.stored(butler.find_dataset("bliss_source", data_id))
    samples_ref = butler.find_dataset("bliss_catalog_samples", data_id)
    assert samples_ref is None or not butler.stored(samples_ref)
    assert task.metadata["failure"]["message"]  # annotated on the task metadata


def pipetask(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        [str(BIN / "pipetask"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert completed.returncode == 0 or not check, completed.stderr[-3000:]
    return completed


def test_pipetask_run_override_and_skip_existing(demo: dict) -> None:
    root, output = demo["root"], "u/test/bliss"
    common = ["-b", root, "-i", ",".join(demo["inputs"]), "-p", str(PIPELINE)]
    pipetask(
        "run",
        *common,
        "-o",
        output,
        "--register-dataset-types",
        "-c",
        "blissDeblendMeasure:inference.n_samples=3",
    )
    butler = Butler.from_config(root, collections=[output])
    sources = butler.query_datasets("bliss_source", explain=False)
    assert len(sources) == 2
    assert butler.get("blissDeblendMeasure_config").inference.n_samples == 3
    tables = [butler.get(ref) for ref in sources]
    ids = np.concatenate([np.asarray(table["sourceId"]) for table in tables])
    assert len(np.unique(ids)) == len(ids) > 0
    samples = butler.get("bliss_catalog_samples", sources[0].dataId)
    assert set(np.unique(samples["sample"])) <= {0, 1, 2}
    first_ids = {ref.id for ref in sources}
    butler.close()

    # Everything exists already: the graph builder skips both quanta, so pipetask has nothing to run
    # (it says so and exits non-zero on the empty graph) and nothing is rewritten.
    rerun = pipetask(
        "run",
        *common,
        "-o",
        output,
        "--skip-existing-in",
        output,
        "-c",
        "blissDeblendMeasure:inference.n_samples=3",
        check=False,
    )
    assert "2 previously succeeded and skipped" in rerun.stderr, rerun.stderr[-3000:]
    butler = Butler.from_config(root, collections=[output])
    assert {ref.id for ref in butler.query_datasets("bliss_source", explain=False)} == first_ids


def test_train_then_deblend_in_one_pipeline(demo: dict, tmp_path: Path) -> None:
    pipeline = Pipeline.from_uri(str(REPO_ROOT / "pipelines" / "BlissTrain.yaml"))
    pipeline.mergePipeline(Pipeline.from_uri(str(PIPELINE)))
    for field, value in {
        "training.n_steps": 3,
        "training.warmup_steps": 1,
        "training.batch_size": 4,
        "simulator.image_height": 32,
        "simulator.image_width": 32,
        "training.validation_images": 4,
        "training.validation_every": 3,
        "training.checkpoint_every": 3,
        "training.log_every": 1,
        "training.device": "cpu",
        "use_calexp_conditions": True,
        "autoencoder_training.n_steps": 2,
        "autoencoder_training.warmup_steps": 1,
        "autoencoder_training.batch_size": 4,
        "autoencoder_training.validation_every": 2,
        "autoencoder_training.log_every": 1,
        "autoencoder_training.device": "cpu",
        "autoencoder.stamp_size": 15,
    }.items():
        pipeline.addConfigOverride("blissTrain", field, value)
    pipeline.addConfigOverride("blissDeblendMeasure", "model_from_pipeline", True)
    pipeline.addConfigOverride("blissDeblendMeasure", "inference.n_samples", 2)
    pipeline.addConfigOverride("blissDeblendMeasure", "inference.out_of_range", "flag")
    butler = SimplePipelineExecutor.prep_butler(
        demo["root"], inputs=[demo["calexp_collection"]], output="u/test/train"
    )
    executor = SimplePipelineExecutor.from_pipeline(pipeline, butler=butler)
    quanta = executor.run(register_dataset_types=True)
    assert len(quanta) == 3  # one training quantum, one deblend quantum per detector
    model = butler.get("bliss_model", {})
    assert model.training["steps"] == 3
    assert model.simulator.image_height == 32
    assert model.autoencoder is not None and model.training["autoencoder"]["steps"] == 2
    assert len(butler.query_datasets("bliss_source", collections="u/test/train", explain=False)) == 2
    metadata = butler.get("blissTrain_metadata", {})
    assert "final_validation_loss" in metadata["blissTrain"]


def test_validate_pipeline_scores_the_demo_catalogs(demo: dict) -> None:
    pipeline = Pipeline.from_uri(str(PIPELINE))
    pipeline.mergePipeline(Pipeline.from_uri(str(REPO_ROOT / "pipelines" / "BlissValidate.yaml")))
    pipeline.addConfigOverride("blissDeblendMeasure", "inference.n_samples", 0)
    pipeline.addConfigOverride("blissDeblendMeasure", "inference.device", "cpu")
    butler = SimplePipelineExecutor.prep_butler(demo["root"], inputs=demo["inputs"], output="u/test/validate")
    executor = SimplePipelineExecutor.from_pipeline(pipeline, butler=butler)
    quanta = executor.run(register_dataset_types=True)
    assert len(quanta) == 5  # deblend and validate per detector, one summary
    refs = butler.query_datasets("bliss_validation_metrics", collections="u/test/validate", explain=False)
    assert len(refs) == 2
    per_detector = [butler.get(ref) for ref in refs]
    for ref, metrics in zip(refs, per_detector, strict=True):
        truth = butler.get("bliss_truth", ref.dataId)
        assert metrics["n_true"] == len(truth)
        assert metrics["n_est"] == len(children(butler.get("bliss_source", ref.dataId)))
        assert 0 < metrics["precision"] <= 1 and 0 < metrics["recall"] <= 1
        assert 0 <= metrics["flux_coverage68"] <= 1
        assert len(metrics["recall_by_true_mag"]["value"]) == len(metrics["recall_by_true_mag"]["edges"]) - 1
    (summary_ref,) = butler.query_datasets(
        "bliss_validation_summary", collections="u/test/validate", explain=False
    )
    summary = butler.get(summary_ref)
    assert summary["n_exposures"] == 2
    for count in ("n_true", "n_est", "n_matched"):
        assert summary[count] == sum(metrics[count] for metrics in per_detector)
    assert summary["precision"] == pytest.approx(summary["n_matched"] / summary["n_est"])
    assert (
        min(m["recall"] for m in per_detector) <= summary["recall"] <= max(m["recall"] for m in per_detector)
    )


def test_validate_summary_without_a_truth_for_any_catalog_is_no_work() -> None:
    # Data IDs only need to be hashable and comparable here: (visit, detector).
    source_refs = [SimpleNamespace(dataId=(1, 0))]
    truth_refs = [SimpleNamespace(dataId=(1, 1))]
    inputs = SimpleNamespace(bliss_source=source_refs, bliss_truth=truth_refs)
    with pytest.raises(NoWorkFound, match="No exposure has both a bliss_source and a bliss_truth table"):
        BlissValidateSummaryTask().runQuantum(None, inputs, None)  # type: ignore[arg-type]


def test_validate_summary_names_a_missing_column() -> None:
    truth = Table({"x": [1.0], "y": [2.0], "flux": [100.0], "is_galaxy": [True]})  # no "mag"
    sources = Table({"x": [1.0], "y": [2.0]})
    with pytest.raises(UnprocessableDataError, match="truth table lacks the columns \\['mag'\\]"):
        BlissValidateSummaryTask().run(bliss_source=[sources], bliss_truth=[truth])


def test_validate_task_names_a_missing_column() -> None:
    truth = Table({"x": [1.0], "y": [2.0], "flux": [100.0], "is_galaxy": [True]})  # no "mag"
    sources = Table({"x": [1.0], "y": [2.0]})
    with pytest.raises(UnprocessableDataError, match="truth table lacks the columns \\['mag'\\]"):
        BlissValidateTask().run(bliss_source=sources, bliss_truth=truth)


def test_image_without_sources_gives_empty_tables_with_every_column(demo: dict) -> None:
    butler = Butler.from_config(demo["root"], collections=demo["inputs"])
    (ref, *_) = butler.query_datasets("calexp", explain=False)
    calexp = butler.get(ref)
    # No light and no mask: the saturated star's SAT pixels would still show where a star is.
    calexp.image.array[...] = 0.0
    calexp.mask.array[...] = 0
    task = BlissDeblendMeasureTask(config=task_config())
    result = task.run(calexp, butler.get("bliss_model", {}))
    assert len(result.bliss_source) == 0
    assert {"sourceId", "coord_ra", "coord_dec", "x", "bliss_flux", "pixelFlags_bad"} <= set(
        result.bliss_source.colnames
    )
    assert result.bliss_source["coord_ra"].unit == "deg"
    assert task.metadata["n_sources"] == 0


def test_pipetask_bench_reports_the_ratio_and_where_the_task_spends_its_time(tmp_path: Path) -> None:
    path = tmp_path / "pipetask.json"
    assert bench_main(["pipetask", "--quick", "--size", "128", "--json", str(path)]) == 0
    results = json.loads(path.read_text())
    assert results["size"] == 128 and results["n_sources_pipetask"] == results["n_sources_direct"]
    assert results["pipetask_overhead_ratio"] == pytest.approx(
        results["pipetask_s"] / results["direct_inference_s"]
    )
    # The task's own inference stages, beside those of the direct call.
    assert {"normalize", "network", "samples", "catalog", "total"} <= results["task_stage_s"].keys()
    assert results["task_stage_s"]["total"] == pytest.approx(results["task_inference_s"])


def test_frame_options_reach_the_core() -> None:
    config = task_config(**{"inference.precision": "bfloat16", "inference.reuse_freed_memory": False})
    frame = config.frame_config(seed=3)
    assert (frame.precision, frame.reuse_freed_memory, frame.seed) == ("bfloat16", False, 3)
    assert frame.invalid_mask_planes == (BLISS_INVALID_PLANE,)
    assert task_config().frame_config(seed=0).precision == "float32"
    # The core's own check, reported as the nested field's validation error.
    with pytest.raises(FieldValidationError, match="Field 'inference.precision' failed validation"):
        task_config(**{"inference.precision": "float16"}).validate()


def test_the_blended_sources_fit_changes_only_the_deblending(demo: dict) -> None:
    butler = Butler.from_config(demo["root"], collections=demo["inputs"])
    (ref, *_) = butler.query_datasets("calexp", explain=False)
    calexp, model = butler.get(ref), butler.get("bliss_model", {})
    no_samples = {"inference.n_samples": 0}
    fitted = BlissDeblendMeasureTask(config=task_config(**no_samples)).run(calexp, model).bliss_source
    plain = (
        BlissDeblendMeasureTask(config=task_config(**no_samples, fit_blended_models=False))
        .run(calexp, model)
        .bliss_source
    )
    assert not np.asarray(fitted["bliss_fit_failed_flag"]).any()
    assert not np.asarray(plain["bliss_fit_failed_flag"]).any()
    # The posterior catalog is the encoder's either way; the deblended fluxes of blended sources move,
    # and so may the blend families (their footprints come from the models) and their parent rows.
    fitted_sources, plain_sources = children(fitted), children(plain)
    for column in ("x", "y", "bliss_flux", "bliss_galaxy_prob", "bliss_disk_hlr"):
        assert np.array_equal(
            np.asarray(fitted_sources[column]), np.asarray(plain_sources[column]), equal_nan=True
        ), column
    moved = np.ma.getdata(fitted["bliss_deblend_flux"]) != np.ma.getdata(plain["bliss_deblend_flux"])
    assert 0 < moved.sum() < len(fitted)
    with pytest.raises(FieldValidationError, match="Field 'model_fit.max_iterations' failed validation"):
        task_config(**{"model_fit.max_iterations": 0}).validate()


def relabelled(exposure: VisitImage, unit: u.UnitBase, per_njy: float | None) -> VisitImage:
    """``exposure`` (in nJy) in another pixel unit, ``per_njy`` of it per nJy, with the photometric
    scaling that calibrates it back (None: without one)."""
    bbox = exposure.bbox
    scaling = (
        None if per_njy is None else ChebyshevField(bbox, np.array([[1.0 / per_njy]]), unit=u.nJy / unit)
    )
    factor = 1.0 if per_njy is None else per_njy
    return VisitImage(
        Image(exposure.image.array * np.float32(factor), bbox=bbox, unit=unit),
        mask=exposure.mask,
        variance=Image(exposure.variance.array * np.float32(factor**2), bbox=bbox, unit=unit**2),
        sky_projection=exposure.sky_projection,
        obs_info=exposure.obs_info,
        photometric_scaling=scaling,
        psf=exposure.psf,
        detector=exposure.detector,
        band=exposure.band,
    )


def test_calexps_in_counts_or_electrons_give_the_catalog_of_their_nanojansky_twin(demo: dict) -> None:
    """Pixels in instrumental units are calibrated with the exposure's photometric scaling; without
    one, the run fails naming the unit."""
    butler = Butler.from_config(demo["root"], collections=demo["inputs"])
    (counts_id,) = demo["counts_data_ids"]
    in_counts, model = butler.get("calexp", counts_id), butler.get("bliss_model", {})
    assert in_counts.unit == u.count and in_counts.photometric_scaling is not None
    in_njy = in_counts.convert_unit(u.nJy)
    task = BlissDeblendMeasureTask(config=task_config(do_deblend=False))
    reference = task.run(in_njy, model).bliss_source
    in_electrons = relabelled(in_njy, u.electron, model.conditions.njy_to_electrons)
    for exposure in (in_counts, in_electrons):
        table = task.run(exposure, model).bliss_source
        assert len(table) == len(reference) > 0
        for column in ("x", "y", "bliss_flux", "bliss_fluxErr", "bliss_detect_prob", "bliss_galaxy_prob"):
            expected, got = np.asarray(reference[column], float), np.asarray(table[column], float)
            assert np.max(np.abs(got - expected) / np.maximum(np.abs(expected), 1e-30)) <= 1e-5, column
    with pytest.raises(
        IncompatibleModelError, match=r"The image unit is ct, and the exposure has no photometric"
    ):
        task.run(relabelled(in_njy, u.count, None), model)
