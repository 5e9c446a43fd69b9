"""What the training loops share: the learning-rate schedule and the checks of their settings."""

from __future__ import annotations

__all__ = ["check_optimization_settings", "warmup_cosine_factor"]

import math
from collections.abc import Iterable
from typing import Any

from ..runtime import check_device_name


def warmup_cosine_factor(step: int, warmup_steps: int, n_steps: int) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then cosine decay to 0.05 at ``n_steps``.

    Parameters
    ----------
    step
        Optimizer steps taken so far.
    warmup_steps
        Length of the warm-up, steps.
    n_steps
        Total steps of the run.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, n_steps - warmup_steps)
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def check_optimization_settings(config: Any, counts: Iterable[str], held_out: str) -> None:
    """Check the settings every training config has.

    Parameters
    ----------
    config
        A training config with ``seed``, ``validation_seed``, ``learning_rate``,
        ``warmup_steps``, ``max_minutes`` and ``device``.
    counts
        Names of its fields that must be positive integers (steps, sizes, intervals).
    held_out
        What the validation seed draws (``"images"``, ``"stamps"``), for the message.

    Raises
    ------
    ValueError
        Naming the first field out of range.
    """
    if config.seed == config.validation_seed:
        raise ValueError(f"validation_seed must differ from seed so that validation {held_out} are held out.")
    for name in counts:
        if getattr(config, name) < 1:
            raise ValueError(f"{name}={getattr(config, name)} is out of range; it must be >= 1.")
    if not (config.learning_rate > 0 and math.isfinite(config.learning_rate)):
        raise ValueError(f"learning_rate={config.learning_rate} is out of range; it must be > 0.")
    if config.warmup_steps < 0:
        raise ValueError(f"warmup_steps={config.warmup_steps} is out of range; it must be >= 0.")
    if config.max_minutes is not None and not config.max_minutes > 0:
        raise ValueError(f"max_minutes={config.max_minutes} is out of range; it must be > 0 or None.")
    check_device_name(config.device)
