"""Choice of the torch device from a user-facing string."""

from __future__ import annotations

__all__ = [
    "check_device_name",
    "BACKBONE_PRECISIONS",
    "check_backbone_precision",
    "native_bfloat16_cpu",
    "resolve_backbone_dtype",
    "resolve_device",
]

import torch


def check_device_name(device: str) -> None:
    """Check that ``device`` names a device a config may ask for, without needing that device here.

    Raises
    ------
    ValueError
        Unless ``device`` is ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    """
    index = device.removeprefix("cuda:")
    if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and index.isdigit()):
        raise ValueError(f"device={device!r} must be 'auto', 'cpu', 'cuda' or 'cuda:N'.")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn a device specification into a `torch.device`.

    Parameters
    ----------
    device
        ``"auto"`` selects CUDA when it is available and the CPU otherwise;
        any other value is passed to `torch.device` (``"cpu"``, ``"cuda:1"``).

    Returns
    -------
    device
        The resolved device.

    Raises
    ------
    ValueError
        If a CUDA device is requested explicitly but CUDA is not available.
    """
    if isinstance(device, torch.device):
        resolved = device
    elif device == "auto":
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except RuntimeError as err:
            raise ValueError(
                f"device={device!r} is not a valid torch device; use 'auto', 'cpu' or 'cuda'."
            ) from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} requested but CUDA is not available; use device='auto' or 'cpu'."
        )
    return resolved


BACKBONE_PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16")
"""Arithmetic of the encoder's backbone at inference (see `resolve_backbone_dtype`)."""


def check_backbone_precision(precision: str) -> None:
    """Raise ValueError naming ``precision`` unless it is one of `BACKBONE_PRECISIONS`."""
    if precision not in BACKBONE_PRECISIONS:
        raise ValueError(f"precision={precision!r} must be one of {BACKBONE_PRECISIONS}.")


def native_bfloat16_cpu() -> bool:
    """Whether this CPU computes bfloat16 convolutions natively (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_backbone_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype of the backbone's convolutions at inference.

    Parameters
    ----------
    precision
        ``"float32"``; ``"bfloat16"``; or ``"auto"``: bfloat16 on a CPU that
        computes it natively (faster there), float32 elsewhere (CPUs
        without it would emulate bfloat16, and on GPUs only float32 is
        validated).
    device
        The device inference runs on.

    Raises
    ------
    ValueError
        If ``precision`` is not one of `BACKBONE_PRECISIONS`.
    """
    check_backbone_precision(precision)
    if precision == "bfloat16" or (precision == "auto" and device.type == "cpu" and native_bfloat16_cpu()):
        return torch.bfloat16
    return torch.float32
