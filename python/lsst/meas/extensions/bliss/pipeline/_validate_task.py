"""`BlissValidateTask`: scores of a stored BLISS catalog against the simulation truth."""

from __future__ import annotations

__all__ = ["BlissValidateConfig", "BlissValidateConnections", "BlissValidateTask"]

import math

from astropy.table import Table

from lsst.pex.config import Field
from lsst.pipe.base import (
    PipelineTask,
    PipelineTaskConfig,
    PipelineTaskConnections,
    Struct,
    UnprocessableDataError,
)
from lsst.pipe.base import connectionTypes as cT

from .._catalog_scores import catalog_scores, json_safe


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
    match_radius_pix = Field[float](
        doc="Largest distance of a one-to-one true/BLISS match, pixels.",
        default=1.0,
        check=lambda value: math.isfinite(value) and value > 0,
    )


class BlissValidateTask(PipelineTask):
    """Score one exposure's BLISS catalog against its truth.

    Uses the project's metric definitions (`catalog_scores`):
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
        try:
            scores = catalog_scores(bliss_truth, bliss_source, self.config.match_radius_pix)
        except KeyError as error:
            raise UnprocessableDataError(str(error.args[0])) from error
        self.metadata["n_true"] = scores["n_true"]
        self.metadata["n_matched"] = scores["n_matched"]
        self.log.info(
            "%d true sources, %d BLISS sources, %d matched: precision %.3f, recall %.3f",
            scores["n_true"],
            scores["n_est"],
            scores["n_matched"],
            scores["precision"],
            scores["recall"],
        )
        return Struct(bliss_validation_metrics=json_safe(scores))
