"""Device selection."""

import pytest
import torch

from lsst.meas.extensions.bliss import resolve_device


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
