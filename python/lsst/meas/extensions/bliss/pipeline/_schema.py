"""The Felis schema of the catalogs that `BlissDeblendMeasureTask` writes, and checks against it."""

from __future__ import annotations

__all__ = [
    "DP1_SOURCE_COLUMNS",
    "blend_family_problems",
    "felis_schema_path",
    "load_felis_schema",
    "schema_mismatches",
]

import importlib.resources
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
import yaml
from astropy.table import Table

DP1_SOURCE_COLUMNS: tuple[str, ...] = (
    "sourceId",
    "parentSourceId",
    "coord_ra",
    "coord_dec",
    "ra_dec_Cov",
    "raErr",
    "decErr",
    "x",
    "y",
    "xErr",
    "yErr",
    "visit",
    "detector",
    "band",
    "physical_filter",
    "deblend_nChild",
    "blendedness_abs",
    "pixelFlags_bad",
    "pixelFlags_cr",
    "pixelFlags_crCenter",
    "pixelFlags_edge",
    "pixelFlags_interpolated",
    "pixelFlags_interpolatedCenter",
    "pixelFlags_nodata",
    "pixelFlags_saturated",
    "pixelFlags_saturatedCenter",
    "pixelFlags_suspect",
    "pixelFlags_suspectCenter",
    "extendedness",
    "ixx",
    "iyy",
    "ixy",
    "hsmShapeRegauss_e1",
    "hsmShapeRegauss_e2",
    "hsmShapeRegauss_sigma",
    "hsmShapeRegauss_flag",
)
"""Columns of ``bliss_source`` named, typed and in the units of the Rubin DP1 ``Source`` table (the
``hsmShapeRegauss_*`` values as meas_extensions_shapeHSM names them)."""

_NUMPY_TYPES: dict[str, str] = {
    "long": "i8",
    "int": "i4",
    "short": "i2",
    "double": "f8",
    "float": "f4",
    "boolean": "b1",
}
"""Felis datatype -> numpy kind and item size of the written column (``char`` is a unicode string)."""


def felis_schema_path() -> Path:
    """Path of the package's Felis schema of ``bliss_source`` and ``bliss_catalog_samples``."""
    return Path(str(importlib.resources.files("lsst.meas.extensions.bliss") / "data" / "bliss_schema.yaml"))


def load_felis_schema(path: Path | None = None) -> Any:
    """Read and validate a Felis schema (default the package's) with Felis.

    Returns
    -------
    schema
        The validated `felis.datamodel.Schema`.

    Raises
    ------
    ImportError
        If Felis (``lsst-felis``) is not installed.
    pydantic.ValidationError
        If Felis finds the schema invalid.
    """
    from felis.datamodel import Schema

    with open(path or felis_schema_path()) as stream:
        return Schema.model_validate(yaml.safe_load(stream))


def schema_mismatches(
    table: Table, table_name: str, schema: Any | None = None, complete: bool = True
) -> list[str]:
    """How a written table differs from its Felis schema: names, types, units and descriptions.

    Parameters
    ----------
    table
        ``bliss_source`` or ``bliss_catalog_samples`` as written (or read back).
    table_name
        Its name in the schema.
    schema
        A validated schema (`load_felis_schema`); default the package's.
    complete
        Also report the schema's columns that the table lacks (False for a table written
        without deblending, ``do_deblend=False``, which has no deblending columns).

    Returns
    -------
    problems
        One line per difference; empty when the table matches.

    Raises
    ------
    KeyError
        If the schema has no table ``table_name``.
    """
    schema = schema or load_felis_schema()
    tables = {entry.name: entry for entry in schema.tables}
    if table_name not in tables:
        raise KeyError(f"The schema has no table {table_name!r}; it has {sorted(tables)}.")
    columns = {column.name: column for column in tables[table_name].columns}
    problems = [f"{name}: written but not in the schema" for name in table.colnames if name not in columns]
    if complete:
        problems += [
            f"{name}: in the schema but not written" for name in columns if name not in table.colnames
        ]
    for name in table.colnames:
        if name not in columns:
            continue
        column, expected = table[name], columns[name]
        datatype = str(getattr(expected.datatype, "value", expected.datatype))
        if datatype == "char":
            if column.dtype.kind != "U" or column.dtype.itemsize // 4 > (expected.length or 0):
                problems.append(f"{name}: type {column.dtype} is not char({expected.length})")
        elif column.dtype.str[1:] != _NUMPY_TYPES.get(datatype):
            problems.append(f"{name}: type {column.dtype} is not {datatype}")
        schema_unit = expected.ivoa_unit
        expected_unit = None if schema_unit is None else u.Unit(schema_unit, format="vounit")
        written_unit = None if column.unit is None else u.Unit(column.unit)
        if written_unit != expected_unit:
            problems.append(f"{name}: unit {written_unit} is not {expected_unit}")
        if (column.description or "") != (expected.description or ""):
            problems.append(f"{name}: description differs from the schema's")
    return problems


def blend_family_problems(table: Table) -> list[str]:
    """How a ``bliss_source`` table breaks the blend-family rules.

    Every child's ``parentSourceId`` names a parent row of the table, every parent
    (``deblend_nChild > 0``) has ``parentSourceId`` 0 and exactly ``deblend_nChild`` children,
    and ``sourceId`` is unique.

    Returns
    -------
    problems
        One line per broken rule; empty when the families are consistent.
    """
    ids = np.asarray(table["sourceId"], dtype=np.int64)
    parents = np.asarray(table["parentSourceId"], dtype=np.int64)
    n_child = np.asarray(table["deblend_nChild"], dtype=np.int64)
    problems = []
    if len(np.unique(ids)) != len(ids):
        problems.append("sourceId is not unique")
    is_parent = n_child > 0
    if (parents[is_parent] != 0).any():
        problems.append("a parent row has a parentSourceId")
    parent_ids = set(ids[is_parent].tolist())
    orphans = set(parents[parents != 0].tolist()) - parent_ids
    if orphans:
        problems.append(f"{len(orphans)} parentSourceId values name no parent row")
    counts = dict(zip(*np.unique(parents[parents != 0], return_counts=True), strict=True))
    wrong = [
        int(pid) for pid, n in zip(ids[is_parent], n_child[is_parent], strict=True) if counts.get(pid) != n
    ]
    if wrong:
        problems.append(f"{len(wrong)} parents' deblend_nChild differ from their number of children")
    return problems
