"""Per-detector source counts and detection scores of BLISS outputs against the truth, via Butler queries."""

from __future__ import annotations

__all__ = ["DetectorScore", "demo_scores", "format_scores", "tables_tour"]

import dataclasses

import numpy as np
from astropy.table import join, vstack

from lsst.daf.butler import Butler

from ...metrics import match_sources
from .. import children


@dataclasses.dataclass(frozen=True)
class DetectorScore:
    """Detection scores of one visit+detector.

    Attributes
    ----------
    visit, detector
        Data ID.
    n_truth, n_bliss
        True sources and BLISS detections.
    n_matched
        One-to-one matches within the match radius.
    precision, recall
        ``n_matched / n_bliss`` and ``n_matched / n_truth`` (NaN without sources).
    recall_bright
        Recall of true sources brighter than the bright magnitude limit.
    """

    visit: int
    detector: int
    n_truth: int
    n_bliss: int
    n_matched: int
    precision: float
    recall: float
    recall_bright: float


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


def demo_scores(
    repo: str,
    collections: str | list[str],
    source_dataset: str = "bliss_source",
    truth_dataset: str = "bliss_truth",
    match_radius_pix: float = 1.0,
    bright_mag: float = 24.0,
) -> list[DetectorScore]:
    """Match every stored BLISS catalog with its truth catalog.

    Parameters
    ----------
    repo
        Butler repo.
    collections
        Collections holding both the BLISS outputs and the truth tables
        (e.g. the output chain of ``pipetask run``).
    source_dataset, truth_dataset
        Dataset type names.
    match_radius_pix
        Largest distance of a match, pixels.
    bright_mag
        Magnitude limit of ``recall_bright``.

    Returns
    -------
    scores
        One entry per visit+detector with a BLISS catalog, sorted by data ID.

    Raises
    ------
    LookupError
        If the collections hold no BLISS catalog, or a catalog has no truth.
    """
    butler = Butler.from_config(repo, collections=collections)
    try:
        refs = sorted(
            butler.query_datasets(source_dataset, explain=False),
            key=lambda ref: tuple(ref.dataId.required_values),
        )
        if not refs:
            raise LookupError(f"No {source_dataset} datasets in collections {collections}.")
        scores = []
        for ref in refs:
            sources = children(butler.get(ref))
            truth_ref = butler.find_dataset(truth_dataset, ref.dataId)
            if truth_ref is None:
                raise LookupError(f"No {truth_dataset} for {ref.dataId} in collections {collections}.")
            truth = butler.get(truth_ref)
            match = match_sources(
                np.asarray(truth["x"]),
                np.asarray(truth["y"]),
                np.asarray(sources["x"]),
                np.asarray(sources["y"]),
                match_radius_pix,
            )
            bright = np.asarray(truth["mag"]) < bright_mag
            matched_true = np.zeros(len(truth), dtype=bool)
            matched_true[match.true_index] = True
            scores.append(
                DetectorScore(
                    visit=int(ref.dataId["visit"]),
                    detector=int(ref.dataId["detector"]),
                    n_truth=len(truth),
                    n_bliss=len(sources),
                    n_matched=match.n_matched,
                    precision=_ratio(match.n_matched, len(sources)),
                    recall=_ratio(match.n_matched, len(truth)),
                    recall_bright=_ratio(int((matched_true & bright).sum()), int(bright.sum())),
                )
            )
        return scores
    finally:
        butler.close()


def format_scores(scores: list[DetectorScore], bright_mag: float = 24.0) -> str:
    """A plain-text table of the scores with a total line."""
    header = (
        f"{'visit':>6} {'detector':>8} {'n_truth':>8} {'n_bliss':>8} {'matched':>8} "
        f"{'precision':>9} {'recall':>7} {f'recall(mag<{bright_mag:g})':>16}"
    )
    lines = [header]
    for score in scores:
        lines.append(
            f"{score.visit:>6} {score.detector:>8} {score.n_truth:>8} {score.n_bliss:>8} "
            f"{score.n_matched:>8} {score.precision:>9.3f} {score.recall:>7.3f} {score.recall_bright:>16.3f}"
        )
    n_truth = sum(score.n_truth for score in scores)
    n_bliss = sum(score.n_bliss for score in scores)
    n_matched = sum(score.n_matched for score in scores)
    lines.append(
        f"{'all':>6} {'':>8} {n_truth:>8} {n_bliss:>8} {n_matched:>8} "
        f"{_ratio(n_matched, n_bliss):>9.3f} {_ratio(n_matched, n_truth):>7.3f}"
    )
    return "\n".join(lines)


def tables_tour(repo: str, collections: str | list[str]) -> str:
    """A worked example of using the stored outputs, as text: a Butler query, ``butler.get`` of a
    ``bliss_source`` table, one blend family, and two detectors' tables stacked and joined with their
    ``bliss_deblended_models`` by ``sourceId``.

    Raises
    ------
    LookupError
        If the collections hold no ``bliss_source`` table.
    """
    lines = []
    with Butler.from_config(repo, collections=collections) as butler:
        refs = sorted(
            butler.query_datasets("bliss_source", explain=False),
            key=lambda ref: tuple(ref.dataId.required_values),
        )
        if not refs:
            raise LookupError(f"No bliss_source datasets in collections {collections}.")
        lines.append(f'butler.query_datasets("bliss_source"): {len(refs)} datasets')
        for ref in refs:
            lines.append(f"  {ref.dataId}")
        first = refs[0]
        sources = butler.get("bliss_source", first.dataId)
        detected = children(sources)
        lines.append(
            f'butler.get("bliss_source", {dict(first.dataId.required)}): {len(sources)} rows, '
            f"{len(detected)} sources and {len(sources) - len(detected)} blend families"
        )
        is_parent = np.asarray(sources["deblend_nChild"]) > 0
        if is_parent.any():
            parent = sources[
                np.flatnonzero(is_parent)[np.argmax(np.asarray(sources["deblend_nChild"])[is_parent])]
            ]
            family = sources[np.asarray(sources["parentSourceId"]) == parent["sourceId"]]
            lines.append(
                f"largest family: parent sourceId {parent['sourceId']} at x={parent['x']:.1f}, "
                f"y={parent['y']:.1f} with deblend_nChild={parent['deblend_nChild']}:"
            )
            for child in family:
                lines.append(
                    f"  child sourceId {child['sourceId']}: x={child['x']:.1f} y={child['y']:.1f} "
                    f"bliss_flux={child['bliss_flux']:.0f} nJy extendedness={child['extendedness']:.0f} "
                    f"blendedness_abs={child['blendedness_abs']:.2f}"
                )
        same_visit = [ref for ref in refs if ref.dataId["visit"] == first.dataId["visit"]][:2]
        stacked = vstack([children(butler.get(ref)) for ref in same_visit]) if same_visit else []
        if len(same_visit) == 2 and len(stacked) == 0:
            lines.append(f"visit {first.dataId['visit']}: no sources on its detectors to join")
        elif len(same_visit) == 2:
            models = vstack([butler.get("bliss_deblended_models", ref.dataId) for ref in same_visit])
            joined = join(
                stacked,
                models["sourceId", "model_type", "psf_fwhm"],
                keys="sourceId",
                metadata_conflicts="silent",
            )
            detectors = sorted({int(ref.dataId["detector"]) for ref in same_visit})
            lines.append(
                f"visit {first.dataId['visit']}, detectors {detectors}: {len(stacked)} sources stacked, "
                f"{len(np.unique(stacked['sourceId']))} distinct sourceIds; joined with their "
                f"bliss_deblended_models by sourceId: {len(joined)} rows "
                f"({int(np.sum(joined['model_type'] == 'parametric'))} parametric models)"
            )
    return "\n".join(lines)
