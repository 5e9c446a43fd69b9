"""Fixtures that several test modules share."""

from __future__ import annotations

import pytest
import torch

from lsst.meas.extensions.bliss import (
    BlissEncoder,
    BlissModel,
    EncoderConfig,
    PriorConfig,
    SimulatorConfig,
    SurveyConditions,
    load_default_model,
    use_bliss_butler_config,
)

TINY_ENCODER = EncoderConfig(pixel_channels=(8, 8, 16), tile_blocks=1, head_channels=16)
"""A small untrained encoder's architecture, for tests of model files."""

# Every Butler of the tests, and every process they start (pipetask, butler, bps), learns the
# BlissModel storage class from the package's Butler configuration, as under the EUPS table.
use_bliss_butler_config()


@pytest.fixture(scope="session")
def default_model() -> BlissModel:
    """The packaged model, loaded once per session; tests must not modify it."""
    return load_default_model()


@pytest.fixture
def tiny_model() -> BlissModel:
    """A fresh untrained model with the small `TINY_ENCODER` (seeded: the same weights every time)."""
    torch.manual_seed(0)
    return BlissModel(
        BlissEncoder(TINY_ENCODER).eval(),
        SurveyConditions.from_survey(),
        PriorConfig(),
        SimulatorConfig(psf_fwhm_range_arcsec=(0.6, 1.2)),
        {"seed": 0, "steps": 0},
    )
