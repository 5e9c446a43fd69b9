"""Helpers shared by the metrics modules: conversion and checks of array arguments, binning,
safe ratios and JSON-friendly lists.

None of these is exported; the metrics modules import them by name.
"""

from __future__ import annotations

__all__: list[str] = []

import math
from collections.abc import Sequence

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor | Sequence[float]


def as_float_array(values: ArrayLike, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a numeric array; {error}") from error


def as_vector(values: ArrayLike, name: str) -> np.ndarray:
    array = as_float_array(values, name)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional; got shape {array.shape}.")
    return array


def check_same_shape(arrays: dict[str, np.ndarray]) -> None:
    shapes = {name: array.shape for name, array in arrays.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"Array shapes do not match: {listed}.")


def check_edges(edges: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(edges, dtype=np.float64)
    if array.ndim != 1 or array.size < 2 or np.isnan(array).any() or not np.all(np.diff(array) > 0):
        raise ValueError(
            f"{name} must be at least two strictly increasing, non-NaN bin edges; got {edges!r}."
        )
    return array


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value, bins ``[e_i, e_{i+1})`` with the last edge included; -1 outside or NaN."""
    index = np.searchsorted(edges, values, side="right") - 1
    index[values == edges[-1]] = edges.size - 2
    outside = (index < 0) | (index > edges.size - 2) | np.isnan(values)
    index[outside] = -1
    return index


def ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator > 0 else math.nan


def json_list(values: np.ndarray) -> list[float]:
    return [float(v) for v in values]
