"""Scores of stored BLISS catalogs against the simulation truth: per exposure (`BlissValidateTask`)
and over every exposure of a run (`BlissValidateSummaryTask`)."""

from __future__ import annotations

__all__ = [
    "BlissValidateConfig",
    "BlissValidateConnections",
    "BlissValidateSummaryConfig",
    "BlissValidateSummaryConnections",
    "BlissValidateSummaryTask",
    "BlissValidateTask",
]

import math
from typing import Any

from astropy.table import Table

from lsst.pex.config import Field
from lsst.pipe.base import (
    InputQuantizedConnection,
    NoWorkFound,
    OutputQuantizedConnection,
    PipelineTask,
    PipelineTaskConfig,
    PipelineTaskConnections,
    QuantumContext,
    Struct,
    UnprocessableDataError,
)
from lsst.pipe.base import connectionTypes as cT

from ..metrics import combined_catalog_scores, json_safe


def _match_radius_field() -> Field[float]:
    """The matching radius of both validation tasks (a field belongs to one config class)."""
    return Field[float](
        doc="Largest distance of a one-to-one true/BLISS match, pixels.",
        default=1.0,
        check=lambda value: math.isfinite(value) and value > 0,
    )


class BlissValidateConnections(PipelineTaskConnections, dimensions=("instrument", "visit", "detector")):
    bliss_source = cT.Input(
        doc="BLISS sources of one exposure (BlissDeblendMeasureTask).",
        name="bliss_source",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "visit", "detector"),
    )
    bliss_truth = cT.Input(
        doc="True sources of the same simulated exposure (bliss-make-demo-repo writes them).",
        name="bliss_truth",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "visit", "detector"),
    )
    bliss_validation_metrics = cT.Output(
        doc="Detection, classification, flux and calibration scores with their counts (a dict).",
        name="bliss_validation_metrics",
        storageClass="StructuredDataDict",
        dimensions=("instrument", "visit", "detector"),
    )


class BlissValidateConfig(PipelineTaskConfig, pipelineConnections=BlissValidateConnections):
    match_radius_pix = _match_radius_field()


class BlissValidateTask(PipelineTask):
    """Score one exposure's BLISS catalog against its truth.

    Uses the project's metric definitions (`catalog_scores`, through `combined_catalog_scores`):
    one-to-one Hungarian matches within ``match_radius_pix``, precision,
    recall and F1, recall by true magnitude, star/galaxy accuracy, relative
    flux bias and scatter, and the coverage of the catalog's 68% flux and
    position intervals.  Every rate comes with its counts, so scores of many
    detectors can be combined.
    """

    ConfigClass = BlissValidateConfig
    _DefaultName = "blissValidate"
    config: BlissValidateConfig

    def run(self, bliss_source: Table, bliss_truth: Table) -> Struct:
        """Score the catalog.

        Parameters
        ----------
        bliss_source
            The ``bliss_source`` table.
        bliss_truth
            The ``bliss_truth`` table of the same exposure.

        Returns
        -------
        result
            ``bliss_validation_metrics``: the scores (a dict of numbers,
            lists and dicts; NaN becomes None so that it serializes).

        Raises
        ------
        lsst.pipe.base.UnprocessableDataError
            If a table lacks a column the scores need.
        """
        return Struct(bliss_validation_metrics=_score(self, [bliss_truth], [bliss_source]))


class BlissValidateSummaryConnections(PipelineTaskConnections, dimensions=("instrument",)):
    bliss_source = cT.Input(
        doc="BLISS sources of every exposure (BlissDeblendMeasureTask).",
        name="bliss_source",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "visit", "detector"),
        multiple=True,
    )
    bliss_truth = cT.Input(
        doc="True sources of the same simulated exposures.",
        name="bliss_truth",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "visit", "detector"),
        multiple=True,
    )
    bliss_validation_summary = cT.Output(
        doc="The scores of bliss_validation_metrics over every exposure at once, with their counts.",
        name="bliss_validation_summary",
        storageClass="StructuredDataDict",
        dimensions=("instrument",),
    )


class BlissValidateSummaryConfig(PipelineTaskConfig, pipelineConnections=BlissValidateSummaryConnections):
    match_radius_pix = _match_radius_field()


class BlissValidateSummaryTask(PipelineTask):
    """Score the BLISS catalogs of every exposure of a run at once.

    Sources are matched within each exposure, and the rates, medians and
    scatters are taken over all matches (`combined_catalog_scores`): the
    figures of the whole run, not averages of per-detector figures.  Only
    exposures with both a catalog and a truth table are scored; their number
    is ``n_exposures``.
    """

    ConfigClass = BlissValidateSummaryConfig
    _DefaultName = "blissValidateSummary"
    config: BlissValidateSummaryConfig

    def runQuantum(
        self,
        butlerQC: QuantumContext,
        inputRefs: InputQuantizedConnection,
        outputRefs: OutputQuantizedConnection,
    ) -> None:
        # The two input lists are not in a common order; pair them by exposure.
        truth_refs = {ref.dataId: ref for ref in inputRefs.bliss_truth}
        pairs = [(ref, truth_refs[ref.dataId]) for ref in inputRefs.bliss_source if ref.dataId in truth_refs]
        if not pairs:
            raise NoWorkFound("No exposure has both a bliss_source and a bliss_truth table.")
        sources = [butlerQC.get(source_ref) for source_ref, _ in pairs]
        truths = [butlerQC.get(truth_ref) for _, truth_ref in pairs]
        butlerQC.put(self.run(bliss_source=sources, bliss_truth=truths), outputRefs)

    def run(self, bliss_source: list[Table], bliss_truth: list[Table]) -> Struct:
        """Score the catalogs together.

        Parameters
        ----------
        bliss_source, bliss_truth
            The ``bliss_source`` and ``bliss_truth`` tables of each exposure,
            in the same order.

        Returns
        -------
        result
            ``bliss_validation_summary``: the scores (see
            `BlissValidateTask.run`) with ``n_exposures``.

        Raises
        ------
        lsst.pipe.base.UnprocessableDataError
            If a table lacks a column the scores need.
        """
        return Struct(bliss_validation_summary=_score(self, bliss_truth, bliss_source))


def _score(
    task: BlissValidateTask | BlissValidateSummaryTask, truths: list[Table], sources: list[Table]
) -> dict[str, Any]:
    """`combined_catalog_scores` of the tables, logged and in the task metadata; JSON-safe."""
    try:
        scores = combined_catalog_scores(truths, sources, task.config.match_radius_pix)
    except KeyError as error:
        raise UnprocessableDataError(str(error.args[0])) from error
    for name in ("n_exposures", "n_true", "n_matched"):
        task.metadata[name] = scores[name]
    task.log.info(
        "%d exposure(s): %d true sources, %d BLISS sources, %d matched: precision %.3f, recall %.3f",
        scores["n_exposures"],
        scores["n_true"],
        scores["n_est"],
        scores["n_matched"],
        scores["precision"],
        scores["recall"],
    )
    return json_safe(scores)
