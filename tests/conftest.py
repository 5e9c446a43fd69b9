"""Fixtures that several test modules share."""

from __future__ import annotations

import pytest

from lsst.meas.extensions.bliss import BlissModel, load_default_model


@pytest.fixture(scope="session")
def default_model() -> BlissModel:
    """The packaged model, loaded once per session; tests must not modify it."""
    return load_default_model()
