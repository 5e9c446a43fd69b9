"""Where the package's pipelines, config overrides, BPS submit files and Butler configuration are.

A source checkout and an EUPS install keep them at the top of the package
(``${MEAS_EXTENSIONS_BLISS_DIR}/pipelines``, ``config``, ``bps``); the Python
package links to those directories, so a wheel (``pip install``) carries them
inside ``lsst.meas.extensions.bliss`` as well, where
``resource://lsst.meas.extensions.bliss/pipelines/BlissDRP.yaml`` (a URI that
``pipetask``, ``bps`` and the Butler read directly) and `resource_path` find
them in every kind of install.
"""

from __future__ import annotations

__all__ = [
    "BUTLER_CONFIG_PATH_VARIABLE",
    "RESOURCE_KINDS",
    "butler_config_dir",
    "resource_path",
    "resource_uri",
    "use_bliss_butler_config",
]

import os
from collections.abc import MutableMapping
from importlib import resources
from pathlib import Path

_PACKAGE = "lsst.meas.extensions.bliss"

RESOURCE_KINDS = ("pipelines", "config", "bps", "butler_config")
"""The package's resource directories: pipeline definitions, task config overrides, BPS submit files,
and the Butler configuration that defines the ``BlissModel`` storage class and its formatter."""

BUTLER_CONFIG_PATH_VARIABLE = "DAF_BUTLER_CONFIG_PATH"
"""The environment variable through which every Butler finds extra configuration directories."""


def resource_path(kind: str, name: str = "") -> Path:
    """A file or directory of the installed package's resources.

    Parameters
    ----------
    kind
        One of `RESOURCE_KINDS`.
    name
        A file inside that directory (e.g. ``"BlissDRP.yaml"``); empty for the
        directory itself.

    Returns
    -------
    path
        Its local path (through the package's links in a source checkout).

    Raises
    ------
    ValueError
        If ``kind`` is not one of `RESOURCE_KINDS`.
    FileNotFoundError
        If it does not exist.
    """
    if kind not in RESOURCE_KINDS:
        raise ValueError(f"Unknown resource kind {kind!r}; choose one of {', '.join(RESOURCE_KINDS)}.")
    path = Path(str(resources.files(_PACKAGE) / kind))
    if name:
        path = path / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is not part of this installation of {_PACKAGE}.")
    return path


def resource_uri(kind: str, name: str) -> str:
    """The ``resource://`` URI of a resource file (``pipetask run -p``, ``-C``, BPS ``pipelineYaml``).

    Parameters
    ----------
    kind
        One of `RESOURCE_KINDS`.
    name
        A file inside that directory.

    Returns
    -------
    uri
        E.g. ``resource://lsst.meas.extensions.bliss/pipelines/BlissDRP.yaml``.
    """
    resource_path(kind, name)
    return f"resource://{_PACKAGE}/{kind}/{name}"


def butler_config_dir() -> Path:
    """The directory to put on ``DAF_BUTLER_CONFIG_PATH`` so that Butlers know ``BlissModel``."""
    return resource_path("butler_config")


def use_bliss_butler_config(environ: MutableMapping[str, str] | None = None) -> bool:
    """Put `butler_config_dir` on ``DAF_BUTLER_CONFIG_PATH`` unless it is already there.

    Butlers made afterwards by this process, and the processes it starts,
    then know the ``BlissModel`` storage class and its formatter; no repo
    configuration is edited.

    Parameters
    ----------
    environ
        The environment to change; default `os.environ`.

    Returns
    -------
    changed
        False if the directory was already on the path.
    """
    environ = os.environ if environ is None else environ
    directory = str(butler_config_dir())
    entries = [entry for entry in environ.get(BUTLER_CONFIG_PATH_VARIABLE, "").split(os.pathsep) if entry]
    if any(os.path.realpath(entry) == os.path.realpath(directory) for entry in entries):
        return False
    environ[BUTLER_CONFIG_PATH_VARIABLE] = os.pathsep.join([directory, *entries])
    return True
