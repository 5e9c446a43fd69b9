"""Bad input, as a new user may give it: each case checks the message, the exit code, and that nothing
was written where it should not be and nothing was lost."""

import dataclasses
import json
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from lsst.daf.butler import Butler
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from lsst.meas.extensions.bliss import (
    MODEL_FORMAT_VERSION,
    BlissModel,
    FrameConfig,
    ImageSimulator,
    LogNormalFactor,
    ModelFormatError,
    SimulatorConfig,
    TrainingRun,
    bench,
    default_model_path,
    infer_frame,
    load_default_model,
    max_representable_signal_to_noise,
    noise_scale,
    prepare_inputs,
    train,
)
from lsst.meas.extensions.bliss.cli import bench_main, make_demo_repo_main
from lsst.meas.extensions.bliss.cli import migrate_model_main as migration_main
from lsst.meas.extensions.bliss.cli._butler_commands import bliss_ingest_model, bliss_register
from lsst.meas.extensions.bliss.inference import _frame as frame_module
from lsst.meas.extensions.bliss.inference._inference import _log_normal_flux_summaries
from lsst.meas.extensions.bliss.io import atomic_write_path, migrate_model_file
from lsst.meas.extensions.bliss.io._model_io import _file_digest
from lsst.meas.extensions.bliss.pipeline import (
    MODEL_STORAGE_CLASS,
    BlissDeblendMeasureConfig,
    BlissDeblendMeasureTask,
    NonFiniteOutputError,
    SourceIdGenerator,
    children,
)
from lsst.meas.extensions.bliss.pipeline.demo import DEMO_REPO_MARKER, DemoRepoConfig, build_demo_repo
from lsst.meas.extensions.bliss.version import __version__


def files_below(root: Path) -> dict[str, bytes]:
    """Every regular file below ``root`` (relative name -> content): what a failed command must keep."""
    return {str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*") if path.is_file()}


# --- Writers never follow a link at a temporary name, and leave no temporary file behind ---------------


def plant_links(directory: Path, names: list[str], outside: Path) -> None:
    """Symbolic links at the fixed temporary names that the writers used, pointing outside."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).symlink_to(outside)


def test_model_save_ignores_a_link_at_the_old_temporary_name(tiny_model: BlissModel, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("not yours")
    output = tmp_path / "models"
    plant_links(output, ["model.safetensors.partial"], outside)
    path = tiny_model.save(output / "model.safetensors")
    assert outside.read_text() == "not yours"
    assert not path.is_symlink() and BlissModel.load(path).encoder.config == tiny_model.encoder.config
    assert sorted(p.name for p in output.iterdir()) == ["model.safetensors", "model.safetensors.partial"]


def test_training_checkpoints_ignore_links_at_the_old_temporary_names(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("not yours")
    output = tmp_path / "run"
    plant_links(output, ["checkpoint.safetensors.partial", "checkpoint.json.partial"], outside)
    run = TrainingRun.from_dict(
        {
            "simulator": {"image_height": 32, "image_width": 32},
            "encoder": {"pixel_channels": [8, 8, 16], "tile_blocks": 1, "head_channels": 16},
            "training": {
                "n_steps": 2,
                "batch_size": 2,
                "validation_images": 2,
                "validation_every": 2,
                "checkpoint_every": 1,
                "log_every": 2,
                "device": "cpu",
            },
        }
    )
    train(run, output, log=lambda _: None)
    assert outside.read_text() == "not yours"
    assert json.loads((output / "checkpoint.json").read_text())["step"] == 2
    assert not list(output.glob(".*.tmp"))


def test_bench_json_ignores_a_link_at_the_old_temporary_name(tmp_path: Path, monkeypatch, capsys) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("not yours")
    plant_links(tmp_path / "out", ["result.json.tmp"], outside)

    def run(args) -> dict:
        return {"figure": 1.0, "summary": "figure = 1.0"}

    stand_in = bench.BenchSuite("a stand-in suite", lambda parser: None, run)
    monkeypatch.setitem(bench.SUITES, "render", stand_in)
    assert bench_main(["render", "--json", str(tmp_path / "out" / "result.json")]) == 0
    assert outside.read_text() == "not yours"
    assert json.loads((tmp_path / "out" / "result.json").read_text())["figure"] == 1.0


def test_atomic_write_cleans_up_and_keeps_the_target_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "target.txt"
    target.write_text("before")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write_path(target) as temporary:
            assert temporary.parent == tmp_path and temporary.exists() and not temporary.is_symlink()
            temporary.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target.txt"]
    with atomic_write_path(target) as temporary:
        temporary.write_text("after")
    assert target.read_text() == "after"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


# --- butler bliss-register --write-config keeps the file's mode and its symbolic link --------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    Butler.makeRepo(str(root))
    return root


def test_registration_keeps_the_permissions_of_butler_yaml(repo: Path) -> None:
    config = repo / "butler.yaml"
    config.chmod(0o644)
    result = CliRunner().invoke(bliss_register, [str(repo), "--write-config"])
    assert result.exit_code == 0, result.output
    assert "registered" in result.output
    assert stat.S_IMODE(config.stat().st_mode) == 0o644
    assert MODEL_STORAGE_CLASS in yaml.safe_load(config.read_text())["storageClasses"]
    assert not list(repo.glob(".butler.yaml*"))


def test_registration_follows_a_linked_butler_yaml_and_keeps_the_link(repo: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared" / "butler.yaml"
    shared.parent.mkdir()
    (repo / "butler.yaml").rename(shared)
    shared.chmod(0o640)
    (repo / "butler.yaml").symlink_to(shared)
    result = CliRunner().invoke(bliss_register, [str(repo), "--write-config"])
    assert result.exit_code == 0, result.output
    assert (repo / "butler.yaml").is_symlink() and (repo / "butler.yaml").resolve() == shared
    assert MODEL_STORAGE_CLASS in yaml.safe_load(shared.read_text())["storageClasses"]
    assert stat.S_IMODE(shared.stat().st_mode) == 0o640
    with Butler.from_config(str(repo)) as butler:
        assert butler.storageClasses.getStorageClass(MODEL_STORAGE_CLASS).name == MODEL_STORAGE_CLASS


def test_registration_names_a_dangling_link(repo: Path, tmp_path: Path) -> None:
    (repo / "butler.yaml").unlink()
    (repo / "butler.yaml").symlink_to(tmp_path / "gone.yaml")
    result = CliRunner().invoke(bliss_register, [str(repo), "--write-config"])
    assert result.exit_code != 0
    assert "gone.yaml" in str(result.exception) and "does not exist" in str(result.exception)


# --- bliss-make-demo-repo --overwrite deletes only a demo repo -----------------------------------------


def demo_arguments(root: Path) -> list[str]:
    return [str(root), "--visits", "1", "--detectors", "1", "--height", "64", "--width", "64", "--overwrite"]


def test_overwrite_refuses_a_directory_that_is_not_a_demo_repo(tmp_path: Path, capsys) -> None:
    root = tmp_path / "my_data"
    (root / "nested").mkdir(parents=True)
    (root / "thesis.tex").write_text("years of work")
    (root / "nested" / "data.fits").write_bytes(b"\x00" * 16)
    before = files_below(root)
    assert make_demo_repo_main(demo_arguments(root)) == 1
    error = capsys.readouterr().err
    assert str(root) in error and "not a Butler repo made by bliss-make-demo-repo" in error
    assert files_below(root) == before


def test_overwrite_refuses_another_butler_repo(repo: Path, capsys) -> None:
    before = files_below(repo)
    assert make_demo_repo_main(demo_arguments(repo)) == 1
    error = capsys.readouterr().err
    assert str(repo) in error and DEMO_REPO_MARKER in error
    assert files_below(repo) == before


def test_overwrite_refuses_a_link_and_a_file(tmp_path: Path, capsys) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    link = tmp_path / "link"
    link.symlink_to(target)
    assert make_demo_repo_main(demo_arguments(link)) == 1
    assert "symbolic link" in capsys.readouterr().err
    assert (target / "keep.txt").read_text() == "keep"
    plain = tmp_path / "plain.txt"
    plain.write_text("keep")
    assert make_demo_repo_main(demo_arguments(plain)) == 1
    assert "not a directory" in capsys.readouterr().err
    assert plain.read_text() == "keep"


def test_overwrite_replaces_a_demo_repo(tiny_model: BlissModel, tmp_path: Path) -> None:
    root = tmp_path / "demo"
    model = tiny_model
    config = DemoRepoConfig(n_visits=1, n_detectors=1, height=64, width=64, saturated_star_mag=None)
    build_demo_repo(root, config, model=model)
    assert json.loads((root / DEMO_REPO_MARKER).read_text())["config"]["height"] == 64
    (root / "stale.txt").write_text("from before")
    build_demo_repo(root, dataclasses.replace(config, width=68), model=model, overwrite=True)
    assert not (root / "stale.txt").exists() and (root / DEMO_REPO_MARKER).exists()


# --- The model file's description is integrity-checked and validated field by field -------------------


def model_document(data: bytes) -> dict:
    header_length = int.from_bytes(data[:8], "little")
    return json.loads(json.loads(data[8 : 8 + header_length])["__metadata__"]["bliss_model"])


def edited_and_resigned(data: bytes, change) -> bytes:
    """The file with its description changed and both digests made to match again, as a careful
    editor would: only the validation of the fields can refuse it."""
    document = model_document(data)
    change(document)
    document.pop("file_sha256")
    return signed_model_bytes(load_safetensors_bytes(data), document)


def signed_model_bytes(tensors: dict, document: dict) -> bytes:
    placeholder = "0" * 64
    data = save_safetensors_bytes(
        tensors, metadata={"bliss_model": json.dumps({**document, "file_sha256": placeholder})}
    )
    return data.replace(placeholder.encode(), _file_digest(data, placeholder).encode(), 1)


@pytest.fixture
def model_file(tiny_model: BlissModel, tmp_path: Path) -> Path:
    return tiny_model.save(tmp_path / "model.safetensors")


def test_one_flipped_byte_in_the_description_is_refused(model_file: Path) -> None:
    data = bytearray(model_file.read_bytes())
    position = data.index(b'pixel_scale_arcsec\\": 0.2')
    data[position + len(b'pixel_scale_arcsec\\": 0.') + 0] = ord("3")  # 0.2 -> 0.3, the digests unchanged
    model_file.write_bytes(bytes(data))
    assert model_document(bytes(data))["conditions"]["pixel_scale_arcsec"] == 0.3
    with pytest.raises(ModelFormatError, match=rf"{model_file}: the file does not match .*file_sha256"):
        BlissModel.load(model_file)


@pytest.mark.parametrize(
    "byte_index_from_end", [1, 1000, None], ids=["last weight byte", "a weight byte", "the digest"]
)
def test_any_modified_byte_is_refused(model_file: Path, byte_index_from_end: int | None) -> None:
    data = bytearray(model_file.read_bytes())
    if byte_index_from_end is None:
        recorded = model_document(bytes(data))["file_sha256"]
        index = data.index(recorded.encode())
        data[index] = ord("a") if data[index] != ord("a") else ord("b")
    else:
        data[-byte_index_from_end] ^= 0x01
    model_file.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="digest"):
        BlissModel.load(model_file)


def test_an_edited_band_is_refused_even_as_a_valid_band(model_file: Path) -> None:
    data = model_file.read_bytes()
    edited = data.replace(b'band\\": \\"r\\"', b'band\\": \\"i\\"', 1)
    assert edited != data and model_document(edited)["conditions"]["band"] == "i"
    model_file.write_bytes(edited)
    with pytest.raises(ModelFormatError, match="file_sha256"):
        BlissModel.load(model_file)


@pytest.mark.parametrize(
    "change, field, problem",
    [
        (lambda d: d["conditions"].update(band=7), "conditions.band=7", "wrong type"),
        (lambda d: d["conditions"].update(pixel_scale_arcsec="0.2"), "conditions.pixel_scale_arcsec", "type"),
        (lambda d: d["conditions"].update(pixel_scale_arcsec=-0.2), "pixel_scale_arcsec=-0.2", "range"),
        (lambda d: d["conditions"].update(colour="red"), "conditions.colour", "unknown"),
        (lambda d: d["encoder"].update(tile_blocks=True), "encoder.tile_blocks=True", "wrong type"),
        (lambda d: d["prior"].update(disk_q_range=[0.2]), "prior.disk_q_range", "wrong type"),
        (
            lambda d: d["simulator"].pop("tile_size") and d["simulator"].update(tile=4),
            "simulator.tile",
            "unknown",
        ),
        (lambda d: d.update(comment="hi"), "comment", "unknown"),
        (lambda d: d.update(training=[1]), "training", "invalid"),
        (lambda d: d.update(conditions=None), "conditions", "JSON object"),
    ],
)
def test_descriptions_that_do_not_validate_name_the_file_and_the_field(
    model_file: Path, change, field: str, problem: str
) -> None:
    model_file.write_bytes(edited_and_resigned(model_file.read_bytes(), change))
    with pytest.raises(ModelFormatError) as caught:
        BlissModel.load(model_file)
    message = str(caught.value)
    assert str(model_file) in message and field in message and problem in message


def test_ingesting_a_bad_model_fails_clearly_and_leaves_the_repo_untouched(
    repo: Path, model_file: Path
) -> None:
    model_file.write_bytes(
        edited_and_resigned(model_file.read_bytes(), lambda d: d["conditions"].update(pixel_scale_arcsec=-1))
    )
    before = files_below(repo)
    result = CliRunner().invoke(bliss_ingest_model, [str(repo), "--model", str(model_file)])
    assert result.exit_code == 1
    assert "Error:" in result.output and str(model_file) in result.output
    assert "pixel_scale_arcsec=-1" in result.output and "Traceback" not in result.output
    assert files_below(repo) == before


def legacy_model_bytes(model: BlissModel, version: int = 3) -> bytes:
    """A model file as format version 3 wrote it: a weights digest only."""
    document = model_document(model.to_bytes())
    document.pop("file_sha256")
    document["format_version"] = version
    return save_safetensors_bytes(
        load_safetensors_bytes(model.to_bytes()), metadata={"bliss_model": json.dumps(document)}
    )


def test_an_older_format_is_refused_with_the_migration_command_and_migrates(
    tiny_model: BlissModel, tmp_path: Path
) -> None:
    model = tiny_model
    old = tmp_path / "old.safetensors"
    old.write_bytes(legacy_model_bytes(model))
    with pytest.raises(ModelFormatError, match=rf"format version 3.*bliss-migrate-model {old}"):
        BlissModel.load(old)
    assert migration_main([str(old), "--output", str(tmp_path / "new.safetensors")]) == 0
    migrated = BlissModel.load(tmp_path / "new.safetensors")
    assert migrated.training["format_migrations"] == [
        {
            "from_format_version": 3,
            "to_format_version": MODEL_FORMAT_VERSION,
            "package_version": __version__,
            "command": "bliss-migrate-model",
        }
    ]
    assert migrated.conditions == model.conditions and migrated.prior == model.prior
    for name, value in model.encoder.state_dict().items():
        assert torch.equal(value, migrated.encoder.state_dict()[name]), name
    # Migrating is deterministic, and a migrated file is not migrated twice.
    migrate_model_file(old)
    assert old.read_bytes() == (tmp_path / "new.safetensors").read_bytes()
    with pytest.raises(ModelFormatError, match="nothing to migrate"):
        migrate_model_file(old)


def test_migration_checks_the_old_weights_digest(tiny_model: BlissModel, tmp_path: Path, capsys) -> None:
    data = bytearray(legacy_model_bytes(tiny_model))
    data[-2] ^= 0x01
    old = tmp_path / "old.safetensors"
    old.write_bytes(bytes(data))
    assert migration_main([str(old)]) == 1
    assert "weights do not match" in capsys.readouterr().err
    assert old.read_bytes() == bytes(data)


def test_the_packaged_model_is_written_in_the_current_format() -> None:
    model = load_default_model()
    document = model_document(default_model_path().read_bytes())
    assert document["format_version"] == MODEL_FORMAT_VERSION
    # Trained in the current format: no migration was needed.
    assert "format_migrations" not in model.training


# --- One hot pixel, or a variance far too small, no longer loses a detector ----------------------------


@pytest.fixture(scope="module")
def clean_scene(default_model: BlissModel) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    simulator = ImageSimulator(
        default_model.conditions,
        default_model.prior.without_bright_stars(),
        SimulatorConfig(image_height=128, image_width=128),
        device="cpu",
    )
    batch = simulator.sample(1, seed=11)
    return batch.image[0], batch.variance[0], batch.mask[0]


def all_finite(result) -> bool:
    catalogs = [result.catalog, *result.samples]
    return all(
        bool(torch.isfinite(catalog.x).all() and torch.isfinite(catalog.y).all())
        and all(bool(torch.isfinite(value.float()).all()) for value in catalog.fields.values())
        for catalog in catalogs
    )


def near(catalog, y: int, x: int, radius: float) -> torch.Tensor:
    n = int(catalog.n_sources[0])
    return (catalog.x[0, :n] - x).square() + (catalog.y[0, :n] - y).square() <= radius**2


@pytest.mark.parametrize("value_njy", [1e8, 1e10, -1e9])
def test_a_hot_pixel_is_invalid_and_flagged_and_the_catalog_stays_finite(
    default_model: BlissModel, clean_scene, value_njy: float
) -> None:
    image, variance, mask = clean_scene
    fwhm = default_model.conditions.psf_fwhm_pix
    config = FrameConfig(n_samples=4)
    clean = infer_frame(default_model, image, variance, mask, fwhm, config)
    # The hot pixel sits on the brightest detected source, whose footprint then holds an invalid pixel.
    brightest = int(clean.catalog.fields["flux_njy"][0].argmax())
    y, x = round(float(clean.catalog.y[0, brightest])), round(float(clean.catalog.x[0, brightest])) + 2
    hot = image.clone()
    hot[y, x] = value_njy
    result = infer_frame(default_model, hot, variance, mask, fwhm, config)
    assert all_finite(result)
    assert abs(int(result.catalog.n_sources[0]) - int(clean.catalog.n_sources[0])) <= 2
    flagged = result.catalog.fields["flag_masked"][0]
    close = near(result.catalog, y, x, 3.0)
    assert close.any() and flagged[close].all()
    assert not clean.catalog.fields["flag_masked"][0, brightest]
    assert float(result.catalog.fields["flux_njy"].max()) < 1e7


def test_a_variance_far_too_small_is_invalid(default_model: BlissModel, clean_scene) -> None:
    image, variance, mask = clean_scene
    fwhm = default_model.conditions.psf_fwhm_pix
    tiny = variance.clone()
    tiny[40:44, 40:44] = 1e-12
    clean = infer_frame(default_model, image, variance, mask, fwhm, FrameConfig(n_samples=2))
    result = infer_frame(default_model, image, tiny, mask, fwhm, FrameConfig(n_samples=2))
    assert all_finite(result)
    assert abs(int(result.catalog.n_sources[0]) - int(clean.catalog.n_sources[0])) <= 2


def test_the_representable_bound_lies_far_beyond_the_training_pixels(default_model: BlissModel) -> None:
    conditions = default_model.conditions
    bound = max_representable_signal_to_noise(conditions)
    # Under Poisson noise (the training images), no unsaturated pixel exceeds sqrt(full well) ...
    assert bound > 10 * math.sqrt(conditions.full_well_e)
    # ... and the training simulations, bright stars included, stay far below the bound.
    simulator = ImageSimulator(
        conditions, default_model.prior, SimulatorConfig(image_height=64, image_width=64), device="cpu"
    )
    batch = simulator.sample(8, seed=3)
    usable = (batch.mask == 0) & (batch.variance > 0)
    assert float((batch.image.abs() / batch.variance.sqrt())[usable].max()) < bound / 10
    # A pixel at 1e6 nJy holds ten times the full well: never a valid input.
    noise_njy = math.sqrt(conditions.sky_level_njy / conditions.njy_to_electrons)
    assert 1e6 / noise_njy > bound
    image = torch.tensor([[[0.0, bound * 0.99, -bound * 1.01, bound * 2]]])
    inputs = prepare_inputs(image, torch.ones_like(image), None, 4.0, max_signal_to_noise=bound)
    assert inputs.valid.tolist() == [[[True, True, False, False]]]
    assert inputs.tensor[0, 0, 0, 2:].tolist() == [0.0, 0.0]
    valid, _ = noise_scale(image, torch.ones_like(image), None, max_signal_to_noise=bound)
    assert torch.equal(valid, inputs.valid)


def test_posterior_summaries_stay_finite_without_the_bound(
    default_model: BlissModel, clean_scene, monkeypatch
) -> None:
    """Even a pixel the bound would have caught gives finite errors, percentiles and samples."""
    monkeypatch.setattr(frame_module, "representable_signal_to_noise", lambda model, band: math.inf)
    image, variance, mask = clean_scene
    hot = image.clone()
    hot[64, 64] = 1e10
    result = infer_frame(default_model, hot, variance, mask, default_model.conditions.psf_fwhm_pix)
    assert all_finite(result)
    errors = result.catalog.fields["flux_err_njy"]
    assert (errors > 0).all() and (
        result.catalog.fields["flux_q84_njy"] >= result.catalog.fields["flux_njy"]
    ).all()


def test_log_normal_summaries_are_finite_for_the_widest_posteriors() -> None:
    mean = torch.tensor([30.0, 30.0, 0.0, -30.0])
    sigma = torch.tensor([math.exp(3.0), 6.0, math.exp(-5.0), math.exp(3.0)])
    summaries = _log_normal_flux_summaries(mean, sigma, torch.tensor(18.0))
    for name, value in summaries.items():
        assert torch.isfinite(value).all() and (value >= 0).all(), name
    assert summaries["flux_err_njy"][0] == torch.finfo(torch.float32).max
    # Where the direct formula is finite, it is what is reported.
    direct = torch.exp(mean + 0.5 * sigma**2) * torch.sqrt(torch.expm1(sigma**2)) * 18.0
    assert torch.equal(summaries["flux_err_njy"][2], direct[2])
    factor = LogNormalFactor("flux", "flux_njy", "source")
    assert torch.isfinite(factor.from_latent(torch.tensor([200.0, -200.0]))).all()


def test_a_hot_pixel_in_a_calexp_gives_a_finite_source_table(
    default_model: BlissModel, tmp_path: Path
) -> None:
    root = tmp_path / "demo"
    build_demo_repo(
        root,
        DemoRepoConfig(n_visits=1, n_detectors=1, height=128, width=128, seed=4, saturated_star_mag=None),
        model=default_model,
    )
    with Butler.from_config(str(root), collections="BlissSim/calexp") as butler:
        (ref,) = butler.query_datasets("calexp", explain=False)
        calexp = butler.get(ref)
    config = BlissDeblendMeasureConfig()
    config.inference.n_samples = 2
    config.inference.device = "cpu"
    task = BlissDeblendMeasureTask(config=config)
    clean = task.run(calexp, default_model)
    clean.bliss_source = children(clean.bliss_source)  # the detected sources, not blend families
    # Hot pixels on the sky (each made the whole table fail before: an infinite flux error, or an
    # IndexError in the deblending) and next to the brightest unflagged source (the bbox starts at 0, 0).
    assert (calexp.bbox.x.start, calexp.bbox.y.start) == (0, 0)
    calexp.image.array[60, 70] = 1e10
    calexp.image.array[100, 90] = 1e9
    unflagged_flux = np.where(clean.bliss_source["bliss_masked_flag"], 0.0, clean.bliss_source["bliss_flux"])
    brightest = int(np.argmax(unflagged_flux))
    x = round(float(clean.bliss_source["x"][brightest])) + 1
    y = round(float(clean.bliss_source["y"][brightest]))
    calexp.image.array[y, x] = 1e9
    result = task.run(calexp, default_model)
    sources = children(result.bliss_source)
    assert abs(len(sources) - len(clean.bliss_source)) <= 2
    near_hot = (np.asarray(sources["x"]) - x) ** 2 + (np.asarray(sources["y"]) - y) ** 2 <= 9
    assert near_hot.any() and np.asarray(sources["bliss_masked_flag"])[near_hot].all()
    # The guard against non-finite output stays in place.
    result.frame.catalog.fields["flux_njy"][0, 0] = math.inf
    with pytest.raises(NonFiniteOutputError, match="bliss_source"):
        task.make_source_table(result.frame, calexp, SourceIdGenerator(0, 0), 0, 0)


# --- A PSF that is not one is named as the PSF ---------------------------------------------------------


@pytest.mark.parametrize("psf", ["abc", None, [1.0, 2.0], True, {"fwhm": 4.0}])
def test_a_psf_that_is_neither_a_number_nor_a_callable_is_named(default_model: BlissModel, psf) -> None:
    image = torch.zeros(32, 32)
    with pytest.raises(TypeError, match=r"psf=.* is not a PSF model: pass the PSF FWHM in pixels"):
        infer_frame(default_model, image, torch.ones_like(image), None, psf)


@pytest.mark.parametrize("fwhm", [math.nan, -1.0, 0.0, np.float32(math.inf)])
def test_a_psf_fwhm_out_of_range_is_named(default_model: BlissModel, fwhm: float) -> None:
    image = torch.zeros(32, 32)
    with pytest.raises(ValueError, match="psf: the PSF FWHM .* must be finite and positive"):
        infer_frame(default_model, image, torch.ones_like(image), None, fwhm)


def test_a_numpy_or_torch_scalar_psf_is_accepted(default_model: BlissModel) -> None:
    image = torch.zeros(32, 32)
    variance = torch.full_like(image, default_model.conditions.background_noise_njy**2)
    for fwhm in (np.float64(4.0), torch.tensor(4.0), 4):
        assert infer_frame(default_model, image, variance, None, fwhm).status == "ok"


@pytest.mark.parametrize("psf", ["abc", None])
def test_prepare_inputs_names_a_bad_psf_fwhm(psf) -> None:
    image = torch.zeros(1, 8, 8)
    with pytest.raises(TypeError, match=r"psf_fwhm_pix=.* is not a PSF FWHM"):
        prepare_inputs(image, torch.ones_like(image), None, psf)
