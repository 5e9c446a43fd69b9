"""Model package: round trip and clear errors for broken files."""

import json

import pytest
import torch
from safetensors.torch import save as save_safetensors_bytes

from lsst.meas.extensions.bliss import (
    BlissModel,
    ModelFormatError,
    prepare_inputs,
)
from lsst.meas.extensions.bliss.io._model_io import _file_digest


def test_round_trip_gives_bit_identical_outputs(tiny_model: BlissModel, tmp_path) -> None:
    model = tiny_model
    path = model.save(tmp_path / "model.safetensors")
    loaded = BlissModel.load(path)
    assert loaded.conditions == model.conditions and loaded.prior == model.prior
    assert loaded.simulator == model.simulator and loaded.encoder.config == model.encoder.config
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(2, 32, 32, generator=generator) * 20
    inputs = prepare_inputs(image, torch.full_like(image, 400.0), None, 4.0)
    ours, theirs = model.encoder.posterior(inputs), loaded.encoder.posterior(inputs)
    for name in ours.params:
        assert torch.equal(ours.params[name], theirs.params[name])


def test_truncated_file(tiny_model: BlissModel, tmp_path) -> None:
    path = tiny_model.save(tmp_path / "model.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError, match="truncated"):
        BlissModel.load(path)


def test_tampered_weights(tiny_model: BlissModel, tmp_path) -> None:
    path = tiny_model.save(tmp_path / "model.safetensors")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="digest"):
        BlissModel.load(path)


def signed_model_bytes(tensors: dict, document: dict) -> bytes:
    """A model file of these weights and description with a whole-file digest that matches: what an
    editor who also recomputes the digest writes (only the checks of the fields can refuse it)."""
    placeholder = "0" * 64
    data = save_safetensors_bytes(
        tensors, metadata={"bliss_model": json.dumps({**document, "file_sha256": placeholder})}
    )
    return data.replace(placeholder.encode(), _file_digest(data, placeholder).encode(), 1)


def rewrite_document(path, change) -> None:
    data = path.read_bytes()
    header_length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_length])
    document = json.loads(header["__metadata__"]["bliss_model"])
    change(document)
    from safetensors.torch import load

    path.write_bytes(signed_model_bytes(load(data), document))


def test_missing_key_version_and_architecture_mismatch(tiny_model: BlissModel, tmp_path) -> None:
    path = tiny_model.save(tmp_path / "model.safetensors")
    rewrite_document(path, lambda d: d.pop("conditions"))
    with pytest.raises(ModelFormatError, match="lacks key"):
        BlissModel.load(path)

    path = tiny_model.save(tmp_path / "model.safetensors")
    rewrite_document(path, lambda d: d.update(format_version=99))
    with pytest.raises(ModelFormatError, match="format version 99"):
        BlissModel.load(path)

    path = tiny_model.save(tmp_path / "model.safetensors")
    rewrite_document(path, lambda d: d["encoder"].update(head_channels=32))
    with pytest.raises(ModelFormatError, match="do not fit the recorded architecture"):
        BlissModel.load(path)


def test_not_a_model(tiny_model: BlissModel, tmp_path) -> None:
    path = tmp_path / "other.safetensors"
    path.write_bytes(save_safetensors_bytes({"x": torch.zeros(2)}))
    with pytest.raises(ModelFormatError, match="not a BLISS model"):
        BlissModel.load(path)
    with pytest.raises(FileNotFoundError, match="No BLISS model file"):
        BlissModel.load(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match=r"must end in \.safetensors"):
        tiny_model.save(tmp_path / "model.pt")


def test_failed_save_keeps_the_previous_model(tiny_model: BlissModel, tmp_path, monkeypatch) -> None:
    model = tiny_model
    path = model.save(tmp_path / "model.safetensors")
    before = path.read_bytes()

    def fail(self):
        raise RuntimeError("disk full")

    monkeypatch.setattr(BlissModel, "to_bytes", fail)
    with pytest.raises(RuntimeError):
        model.save(path)
    assert path.read_bytes() == before
