"""Sphinx directive ``bliss-config-fields``: a task config's fields, read from the class.

Usage::

    .. bliss-config-fields:: lsst.meas.extensions.bliss.pipeline.BlissDeblendMeasureConfig

emits one definition-list entry per ``lsst.pex.config`` field (name, field kind, type, default
and the field's own ``doc``), so the config reference cannot drift from the code.  It stands in
for documenteer's ``lsst-task-config-fields`` directive, which is not available outside a
documenteer pipelines build.
"""

from __future__ import annotations

import importlib

from docutils import nodes
from docutils.parsers.rst import Directive


def _import(dotted: str):
    module_name, _, attribute = dotted.rpartition(".")
    return getattr(importlib.import_module(module_name), attribute)


def _type_name(field) -> str:
    itemtype = getattr(field, "itemtype", None)
    if itemtype is not None:
        return f"list of {getattr(itemtype, '__name__', itemtype)}"
    dtype = getattr(field, "dtype", None)
    if dtype is None:
        return ""
    return getattr(dtype, "__name__", str(dtype))


class BlissConfigFields(Directive):
    required_arguments = 1
    has_content = False

    def run(self):
        config_class = _import(self.arguments[0])
        definitions = nodes.definition_list()
        for name, field in sorted(config_class._fields.items()):
            if name == "connections":
                continue
            term = nodes.term()
            term += nodes.literal(text=name)
            kind = type(field).__name__
            dtype = _type_name(field)
            term += nodes.Text(f" ({kind}{', ' + dtype if dtype else ''})")
            body = nodes.definition()
            body += nodes.paragraph(text=" ".join(str(field.doc).split()))
            if kind not in ("ConfigField", "ConfigurableField"):
                default = nodes.paragraph()
                default += nodes.Text("Default: ")
                default += nodes.literal(text=repr(field.default))
                body += default
            allowed = getattr(field, "allowed", None)
            if allowed:
                choices = nodes.paragraph()
                choices += nodes.Text("Allowed values: ")
                for i, (value, text) in enumerate(allowed.items()):
                    if i:
                        choices += nodes.Text("; ")
                    choices += nodes.literal(text=repr(value))
                    choices += nodes.Text(f": {' '.join(str(text).split())}")
                body += choices
            item = nodes.definition_list_item()
            item += term
            item += body
            definitions += item
        return [definitions]


def setup(app):
    app.add_directive("bliss-config-fields", BlissConfigFields)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
