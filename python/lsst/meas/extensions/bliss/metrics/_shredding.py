"""Shredding: galaxies that a detector splits into several detections.

Positions are in pixels, ``x`` the column and ``y`` the row; radii in pixels.
"""

from __future__ import annotations

__all__ = ["ShredScores", "shred_rate"]

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.spatial

from ._arrays import ArrayLike, as_vector, check_same_shape, ratio
from ._matching import match_sources


@dataclasses.dataclass(frozen=True)
class ShredScores:
    """How often galaxies get extra detections.

    Attributes
    ----------
    rate
        Fraction of the candidate galaxies with one or more extra detections
        (NaN without candidates).
    n_galaxies
        Number of candidate galaxies.
    n_shredded
        Number of them with an extra detection.
    n_extra_detections
        Unmatched detections that lie within the radius of a candidate galaxy
        (each counted once).
    """

    rate: float
    n_galaxies: int
    n_shredded: int
    n_extra_detections: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def shred_rate(
    true_x: Sequence[ArrayLike],
    true_y: Sequence[ArrayLike],
    true_radius_pix: Sequence[ArrayLike],
    is_candidate: Sequence[ArrayLike],
    est_x: Sequence[ArrayLike],
    est_y: Sequence[ArrayLike],
    match_radius_pix: float = 1.0,
) -> ShredScores:
    """Fraction of galaxies with extra detections within their radius that match no true source.

    Each image's true and estimated sources are matched one-to-one
    (`match_sources`, ``match_radius_pix``); an estimate left unmatched that
    lies within ``true_radius_pix`` of a candidate galaxy is an extra
    detection of it (a fragment of the galaxy, or a duplicate of it).

    Parameters
    ----------
    true_x, true_y
        Per-image true positions, a sequence of ``B`` arrays of shape (N_b,).
    true_radius_pix
        Per-image search radius of each true source (e.g. 1.5 half-light
        radii), pixels, shape (N_b,).
    is_candidate
        Per-image flags of the galaxies to score (e.g. true galaxies with
        SNR >= 20), shape (N_b,); the other true sources still take part in
        the matching.
    est_x, est_y
        Per-image estimated positions, shape (M_b,).
    match_radius_pix
        Radius of a match, pixels.

    Returns
    -------
    scores
        The rate and its counts.

    Raises
    ------
    ValueError
        If the per-image lists differ in length or their arrays in shape, or
        positions are not finite.
    """
    lists = {"true_y": true_y, "true_radius_pix": true_radius_pix, "is_candidate": is_candidate}
    lists.update({"est_x": est_x, "est_y": est_y})
    for name, values in lists.items():
        if len(values) != len(true_x):
            raise ValueError(f"{name} has {len(values)} images; true_x has {len(true_x)}.")
    n_galaxies = n_shredded = n_extra = 0
    for index in range(len(true_x)):
        tx, ty = as_vector(true_x[index], "true_x"), as_vector(true_y[index], "true_y")
        radius = as_vector(true_radius_pix[index], "true_radius_pix")
        candidate = as_vector(is_candidate[index], "is_candidate") > 0.5
        check_same_shape({"true_x": tx, "true_y": ty, "true_radius_pix": radius, "is_candidate": candidate})
        ex, ey = as_vector(est_x[index], "est_x"), as_vector(est_y[index], "est_y")
        match = match_sources(tx, ty, ex, ey, match_radius_pix)
        n_galaxies += int(candidate.sum())
        unmatched = np.ones(ex.size, dtype=bool)
        unmatched[match.est_index] = False
        if not (unmatched.any() and candidate.any()):
            continue
        extra_xy = np.stack([ex[unmatched], ey[unmatched]], axis=1)
        tree = scipy.spatial.cKDTree(extra_xy)
        near_any = np.zeros(extra_xy.shape[0], dtype=bool)
        for galaxy in np.flatnonzero(candidate):
            near = tree.query_ball_point([tx[galaxy], ty[galaxy]], float(radius[galaxy]))
            if near:
                n_shredded += 1
                near_any[near] = True
        n_extra += int(near_any.sum())
    return ShredScores(ratio(n_shredded, n_galaxies), n_galaxies, n_shredded, n_extra)
