"""One-to-one matching of true and estimated sources: Hungarian assignment on pixel distance
(a match needs distance <= the radius, 1 px by default), and the attributes of the matched pairs.

Positions are in pixels, ``x`` the column and ``y`` the row, pixel centres at
integer coordinates.  Everything returned is numpy.
"""

from __future__ import annotations

__all__ = [
    "SourceMatch",
    "match_sources",
    "matched_attributes",
]

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import scipy.optimize
import scipy.sparse
import scipy.sparse.csgraph
import scipy.spatial

from ._arrays import ArrayLike, as_vector, check_same_shape


@dataclasses.dataclass(frozen=True)
class SourceMatch:
    """One-to-one matches between true and estimated sources of one image.

    Attributes
    ----------
    true_index, est_index
        Indices of matched pairs into the true and estimated lists, shape (K,),
        int64, sorted by ``true_index``.
    distance
        Pixel distance of each pair, shape (K,), all ``<= max_distance_pix``.
    n_true, n_est
        Number of true and estimated sources that were matched against.
    max_distance_pix
        The match radius in pixels.
    """

    true_index: np.ndarray
    est_index: np.ndarray
    distance: np.ndarray
    n_true: int
    n_est: int
    max_distance_pix: float

    @property
    def n_matched(self) -> int:
        return int(self.true_index.size)


def match_sources(
    true_x: ArrayLike,
    true_y: ArrayLike,
    est_x: ArrayLike,
    est_y: ArrayLike,
    max_distance_pix: float = 1.0,
) -> SourceMatch:
    """Match true and estimated sources one-to-one by pixel distance.

    The Hungarian assignment (`scipy.optimize.linear_sum_assignment`) is run
    on the distances, with every pair farther than ``max_distance_pix`` given
    a cost larger than any set of valid pairs can sum to: the assignment then
    first maximizes the number of pairs within the radius and only then
    minimizes their total distance, so a far pair never blocks a close one.
    Pairs beyond the radius are never matches.  The problem separates into
    the connected groups of sources linked by pairs within the radius, which
    are solved one at a time (exact, and fast on crowded full frames).

    Parameters
    ----------
    true_x, true_y
        True positions in pixels, shape (N,).
    est_x, est_y
        Estimated positions in pixels, shape (M,).
    max_distance_pix
        Largest distance of a match, pixels (inclusive).

    Returns
    -------
    match
        The matched pairs.

    Raises
    ------
    ValueError
        If shapes differ, positions are not finite, or the radius is not > 0.
    """
    if not (math.isfinite(max_distance_pix) and max_distance_pix > 0):
        raise ValueError(f"max_distance_pix={max_distance_pix!r} must be finite and > 0.")
    tx, ty = as_vector(true_x, "true_x"), as_vector(true_y, "true_y")
    ex, ey = as_vector(est_x, "est_x"), as_vector(est_y, "est_y")
    check_same_shape({"true_x": tx, "true_y": ty})
    check_same_shape({"est_x": ex, "est_y": ey})
    for name, array in (("true_x", tx), ("true_y", ty), ("est_x", ex), ("est_y", ey)):
        if not np.isfinite(array).all():
            raise ValueError(f"{name} contains non-finite positions; remove padding entries first.")
    n_true, n_est = tx.size, ex.size
    empty = SourceMatch(
        np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), n_true, n_est, float(max_distance_pix)
    )
    if n_true == 0 or n_est == 0:
        return empty

    true_xy, est_xy = np.stack([tx, ty], axis=1), np.stack([ex, ey], axis=1)
    # The tree query radius is padded a hair so that pairs exactly on the radius
    # survive its pruning; the exact distance test below decides.
    pairs = scipy.spatial.cKDTree(true_xy).sparse_distance_matrix(
        scipy.spatial.cKDTree(est_xy), max_distance_pix * (1.0 + 1e-9), output_type="ndarray"
    )
    edge_true = pairs["i"].astype(np.int64)
    edge_est = pairs["j"].astype(np.int64)
    edge_distance = np.hypot(tx[edge_true] - ex[edge_est], ty[edge_true] - ey[edge_est])
    keep = edge_distance <= max_distance_pix
    edge_true, edge_est, edge_distance = edge_true[keep], edge_est[keep], edge_distance[keep]
    if edge_true.size == 0:
        return empty

    # Connected groups of the bipartite graph (true nodes 0..N-1, estimates N..N+M-1).
    graph = scipy.sparse.coo_matrix(
        (np.ones(edge_true.size), (edge_true, n_true + edge_est)), shape=(n_true + n_est,) * 2
    )
    _, component = scipy.sparse.csgraph.connected_components(graph, directed=False)
    edge_component = component[edge_true]
    order = np.argsort(edge_component, kind="stable")
    boundaries = np.flatnonzero(np.diff(edge_component[order])) + 1

    matched_true: list[np.ndarray] = []
    matched_est: list[np.ndarray] = []
    matched_distance: list[np.ndarray] = []
    for edges in np.split(order, boundaries):
        if edges.size == 1:
            matched_true.append(edge_true[edges])
            matched_est.append(edge_est[edges])
            matched_distance.append(edge_distance[edges])
            continue
        rows, row_of = np.unique(edge_true[edges], return_inverse=True)
        cols, col_of = np.unique(edge_est[edges], return_inverse=True)
        # Any assignment using a non-pair costs more than all valid pairs together.
        forbidden = (min(rows.size, cols.size) + 1) * max_distance_pix + 1.0
        cost = np.full((rows.size, cols.size), forbidden)
        is_pair = np.zeros((rows.size, cols.size), dtype=bool)
        cost[row_of, col_of] = edge_distance[edges]
        is_pair[row_of, col_of] = True
        assigned_rows, assigned_cols = scipy.optimize.linear_sum_assignment(cost)
        valid = is_pair[assigned_rows, assigned_cols]
        matched_true.append(rows[assigned_rows[valid]])
        matched_est.append(cols[assigned_cols[valid]])
        matched_distance.append(cost[assigned_rows[valid], assigned_cols[valid]])

    true_index = np.concatenate(matched_true)
    by_true = np.argsort(true_index, kind="stable")
    return SourceMatch(
        true_index[by_true],
        np.concatenate(matched_est)[by_true],
        np.concatenate(matched_distance)[by_true],
        n_true,
        n_est,
        float(max_distance_pix),
    )


def matched_attributes(
    per_image: Mapping[str, Sequence[np.ndarray]],
    method: str,
    true_names: Iterable[str],
    max_distance_pix: float = 1.0,
) -> dict[str, np.ndarray]:
    """Attributes of one method's one-to-one matches (`match_sources`), concatenated over images.

    Parameters
    ----------
    per_image
        Per-image arrays: ``true_x``, ``true_y`` and ``true_<name>`` for each
        of ``true_names``, shape (N_i,); ``<method>_x``, ``<method>_y`` and
        any other ``<method>_<name>`` columns, shape (M_i,).
    method
        Prefix of the estimated columns, e.g. ``"bliss"``.
    true_names
        True attributes to carry (without the ``true_`` prefix).
    max_distance_pix
        Match radius in pixels.

    Returns
    -------
    pairs
        ``true_<name>`` for each of ``true_names`` and ``est_<name>`` for every
        ``<method>_<name>`` column (positions included), shape (P,) for the P
        matched pairs of all images in image order.
    """
    true_names = tuple(true_names)
    prefix = f"{method}_"
    est_names = [name.removeprefix(prefix) for name in per_image if name.startswith(prefix)]
    columns: dict[str, list[np.ndarray]] = {f"true_{name}": [] for name in true_names}
    columns.update({f"est_{name}": [] for name in est_names})
    for index in range(len(per_image["true_x"])):
        match = match_sources(
            per_image["true_x"][index],
            per_image["true_y"][index],
            per_image[f"{prefix}x"][index],
            per_image[f"{prefix}y"][index],
            max_distance_pix,
        )
        for name in true_names:
            columns[f"true_{name}"].append(np.asarray(per_image[f"true_{name}"][index])[match.true_index])
        for name in est_names:
            columns[f"est_{name}"].append(np.asarray(per_image[f"{prefix}{name}"][index])[match.est_index])
    return {name: np.concatenate(values) if values else np.zeros(0) for name, values in columns.items()}
