"""The bliss_model Butler dataset: registration in new and existing repos, round trip, bad files."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lsst.daf.butler import Butler, DatasetType

from lsst.meas.extensions.bliss import load_default_model
from lsst.meas.extensions.bliss.pipeline import (
    DEFAULT_MODEL_RUN,
    MODEL_STORAGE_CLASS,
    ingest_model,
    register_bliss_storage_class,
)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    Butler.makeRepo(str(root))
    return root


def test_registration_leaves_butler_yaml_untouched(repo: Path) -> None:
    config = repo / "butler.yaml"
    config.chmod(0o640)
    before = config.read_bytes()
    assert register_bliss_storage_class(repo) is True
    assert register_bliss_storage_class(repo) is False
    assert config.read_bytes() == before and stat.S_IMODE(config.stat().st_mode) == 0o640
    # The storage class and formatter come from DAF_BUTLER_CONFIG_PATH (set by conftest, as by EUPS).
    with Butler.from_config(str(repo), writeable=True, run="models/a") as butler:
        assert butler.get_dataset_type("bliss_model").storageClass_name == MODEL_STORAGE_CLASS
        butler.put(load_default_model(), "bliss_model", dataId={})
    assert config.read_bytes() == before


def test_a_butler_without_the_config_path_does_not_know_the_storage_class(repo: Path) -> None:
    register_bliss_storage_class(repo)
    code = (
        "import sys; from lsst.daf.butler import Butler; "
        "b = Butler.from_config(sys.argv[1]); print(b.storageClasses.getStorageClass('BlissModel'))"
    )
    environment = {key: value for key, value in os.environ.items() if key != "DAF_BUTLER_CONFIG_PATH"}
    without = subprocess.run(
        [sys.executable, "-c", code, str(repo)], capture_output=True, text=True, env=environment
    )
    assert without.returncode != 0 and "BlissModel" in without.stderr
    with_path = subprocess.run([sys.executable, "-c", code, str(repo)], capture_output=True, text=True)
    assert with_path.returncode == 0, with_path.stderr


def test_registration_can_write_the_repo_config(repo: Path) -> None:
    before = yaml.safe_load((repo / "butler.yaml").read_text())
    assert register_bliss_storage_class(repo, write_config=True) is True
    assert register_bliss_storage_class(repo, write_config=True) is False
    after = yaml.safe_load((repo / "butler.yaml").read_text())
    assert after["registry"] == before["registry"]
    assert after["datastore"]["root"] == before["datastore"]["root"]
    assert MODEL_STORAGE_CLASS in after["storageClasses"]


def test_registration_needs_a_repo(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="butler create"):
        register_bliss_storage_class(tmp_path)


def test_default_model_round_trips_through_the_butler(repo: Path) -> None:
    ref = ingest_model(repo)
    assert ref.run == DEFAULT_MODEL_RUN
    # A new process-like Butler (reading butler.yaml afresh) knows the storage class.
    butler = Butler.from_config(str(repo), collections=[DEFAULT_MODEL_RUN])
    model = butler.get("bliss_model")
    original = load_default_model()
    assert model.describe() == original.describe()
    for name, value in original.encoder.state_dict().items():
        assert torch.equal(value, model.encoder.state_dict()[name]), name
    assert butler.getURI("bliss_model").getExtension() == ".safetensors"


def test_models_are_never_overwritten(repo: Path) -> None:
    ingest_model(repo)
    with pytest.raises(Exception, match="(?i)conflict|already"):
        ingest_model(repo)


def test_corrupted_dataset_gives_a_clear_error(repo: Path) -> None:
    ingest_model(repo)
    butler = Butler.from_config(str(repo), collections=[DEFAULT_MODEL_RUN])
    path = Path(butler.getURI("bliss_model").ospath)
    # Same size (the datastore checks sizes itself), one weight byte changed.
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(Exception, match="digest"):
        butler.get("bliss_model")


def test_formatter_refuses_other_objects(repo: Path) -> None:
    register_bliss_storage_class(repo)
    butler = Butler.from_config(str(repo), writeable=True, run="bad")
    butler.registry.registerDatasetType(
        DatasetType("bliss_model", butler.dimensions.empty, MODEL_STORAGE_CLASS, universe=butler.dimensions)
    )
    with pytest.raises(TypeError, match="BlissModel"):
        butler.put({"not": "a model"}, "bliss_model", dataId={})
    assert not list(butler.registry.queryDatasets("bliss_model", collections="bad"))


def test_butler_subcommands_are_installed(repo: Path) -> None:
    butler_cli = Path(sys.executable).with_name("butler")
    registered = subprocess.run(
        [str(butler_cli), "bliss-register", str(repo)], capture_output=True, text=True, check=True
    )
    assert "registered" in registered.stdout
    stored = subprocess.run(
        [str(butler_cli), "bliss-ingest-model", str(repo), "--run", "models/test"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "models/test" in stored.stdout
    query = subprocess.run(
        [str(butler_cli), "query-datasets", str(repo), "bliss_model", "--collections", "models/test"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "bliss_model" in query.stdout
