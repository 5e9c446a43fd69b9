"""Device selection."""

import pytest
import torch

from lsst.meas.extensions.bliss import resolve_backbone_dtype, resolve_device


def test_auto_selects_cuda_only_when_available() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_explicit_cuda_without_gpu_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")


def test_invalid_device_string() -> None:
    with pytest.raises(ValueError, match="not a valid torch device"):
        resolve_device("gpu-please")


def test_backbone_precision_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    from lsst.meas.extensions.bliss.runtime import _device

    cpu = torch.device("cpu")
    assert resolve_backbone_dtype("float32", cpu) == torch.float32
    assert resolve_backbone_dtype("bfloat16", cpu) == torch.bfloat16
    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(_device, "native_bfloat16_cpu", lambda native=native: native)
        assert resolve_backbone_dtype("auto", cpu) == expected
    # GPUs were measured in float32: auto leaves them there.
    assert resolve_backbone_dtype("auto", torch.device("cuda")) == torch.float32
    with pytest.raises(ValueError, match="precision='half'"):
        resolve_backbone_dtype("half", cpu)
