"""Fixtures that several test modules share."""

from __future__ import annotations

import pytest

from lsst.meas.extensions.bliss import BlissModel, load_default_model, use_bliss_butler_config

# Every Butler of the tests, and every process they start (pipetask, butler, bps), learns the
# BlissModel storage class from the package's Butler configuration, as under the EUPS table.
use_bliss_butler_config()


@pytest.fixture(scope="session")
def default_model() -> BlissModel:
    """The packaged model, loaded once per session; tests must not modify it."""
    return load_default_model()
