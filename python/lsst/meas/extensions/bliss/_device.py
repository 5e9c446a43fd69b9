"""Choice of the torch device from a user-facing string."""

from __future__ import annotations

__all__ = ["resolve_device"]

import torch


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
