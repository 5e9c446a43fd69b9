"""Sphinx configuration for meas_extensions_bliss.

The layout is that of a Science Pipelines package (``doc/manifest.yaml``,
``doc/index.rst`` and the module homepage ``doc/lsst.meas.extensions.bliss/index.rst``), so the
pages can join a pipelines.lsst.io build.  This file itself is plain Sphinx (sphinx-automodapi
and numpydoc) because documenteer's ``pipelinespkg`` configuration is not
available for current Sphinx releases.  The build never touches the network: no intersphinx
inventories are fetched, and references to types of other projects (torch, numpy, astropy, the
Rubin middleware) are listed in ``nitpick_ignore_regex`` instead.

Build with ``make docs`` (warnings are errors).
"""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "python")))
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "_ext")))

from lsst.meas.extensions.bliss.version import __version__  # noqa: E402

project = "meas_extensions_bliss"
author = "meas_extensions_bliss developers"
copyright = "meas_extensions_bliss developers; licensed under the GNU GPL v3 or later"
version = __version__
release = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "sphinx.ext.mathjax",
    "sphinx_automodapi.automodapi",
    "sphinx_automodapi.smart_resolver",
    "bliss_config_fields",
]

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path = []
html_static_path = ["_static"]
html_theme = "alabaster"
html_title = project
html_short_title = project

# The package's own API is documented; signatures carry no type annotations in the pages (the
# docstrings' Parameters sections describe the types in words).
autodoc_typehints = "none"
autodoc_member_order = "bysource"
autosummary_generate = True
automodapi_toctreedirnm = "py-api"
automodsumm_inherited_members = False
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks = set()

# Offline build: no intersphinx.  References to other projects' types stay plain text.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|numpy|np|astropy|scipy|galsim|lsst\.(daf|pipe|pex|images|resources|utils|ctrl))\b.*"),
    (r"py:class", r"(abc|typing|collections|enum|pathlib|dataclasses|os)\..*"),
    (r"py:.*", r"(optional|callable|array[-_ ]like|path[-_ ]like|default.*)"),
]
