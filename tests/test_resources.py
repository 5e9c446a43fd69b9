"""Resource files (pipelines, config overrides, BPS, Butler configuration) and the EUPS table."""

import ast
import os
import re
from pathlib import Path

import pytest

from lsst.meas.extensions.bliss import RESOURCE_KINDS, resource_path, resource_uri, use_bliss_butler_config
from lsst.meas.extensions.bliss.cli import paths_main

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO_ROOT / "python" / "lsst" / "meas" / "extensions" / "bliss"
TABLE = REPO_ROOT / "ups" / "meas_extensions_bliss.table"

# EUPS product of each stack module the code imports, and of each command the documents use.
EUPS_PRODUCTS = {
    "lsst.daf.butler": "daf_butler",
    "lsst.pipe.base": "pipe_base",
    "lsst.pex.config": "pex_config",
    "lsst.images": "images",
}
COMMAND_PRODUCTS = {"pipetask": "ctrl_mpexec", "bps": "ctrl_bps", "ctrl_bps_parsl": "ctrl_bps_parsl"}


def test_resources_are_the_top_level_directories() -> None:
    for kind in ("pipelines", "config", "bps"):
        assert resource_path(kind).resolve() == (REPO_ROOT / kind).resolve()
    assert resource_path("pipelines", "BlissDRP.yaml").is_file()
    assert resource_uri("pipelines", "BlissDRP.yaml") == (
        "resource://lsst.meas.extensions.bliss/pipelines/BlissDRP.yaml"
    )
    with pytest.raises(FileNotFoundError):
        resource_path("pipelines", "Missing.yaml")
    with pytest.raises(ValueError, match="kind"):
        resource_path("models")


def test_resource_uris_are_readable_by_the_middleware() -> None:
    from lsst.resources import ResourcePath

    text = ResourcePath(resource_uri("pipelines", "BlissDRP.yaml")).read().decode()
    assert "BlissDeblendMeasureTask" in text
    assert ResourcePath(resource_uri("config", "blissTrain_fromCalexps.py")).exists()


def test_bliss_paths_prints_every_kind(capsys) -> None:
    assert paths_main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(RESOURCE_KINDS)
    assert paths_main(["butler_config"]) == 0
    assert Path(capsys.readouterr().out.strip()) == resource_path("butler_config")
    assert paths_main(["pipelines", "BlissDRP.yaml", "--uri"]) == 0
    assert capsys.readouterr().out.strip().startswith("resource://")


def test_use_bliss_butler_config_prepends_once() -> None:
    environ = {"DAF_BUTLER_CONFIG_PATH": "/elsewhere"}
    assert use_bliss_butler_config(environ) is True
    assert use_bliss_butler_config(environ) is False
    assert environ["DAF_BUTLER_CONFIG_PATH"] == os.pathsep.join(
        [str(resource_path("butler_config")), "/elsewhere"]
    )


def table_lines() -> list[str]:
    return [
        line.strip() for line in TABLE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]


def test_ups_table_lists_exactly_what_the_code_and_its_commands_need() -> None:
    imported = set()
    for path in PACKAGE_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                for module, product in EUPS_PRODUCTS.items():
                    if name == module or name.startswith(module + "."):
                        imported.add(product)
    required = {m.group(1) for line in table_lines() if (m := re.fullmatch(r"setupRequired\((\w+)\)", line))}
    assert imported == set(EUPS_PRODUCTS.values())
    assert required == {"sconsUtils"} | imported | set(COMMAND_PRODUCTS.values())
    assert not [line for line in table_lines() if line.startswith("setupOptional")]


def test_ups_table_sets_the_plugin_and_config_paths() -> None:
    variables = {}
    for line in table_lines():
        if m := re.fullmatch(r"envPrepend\((\w+), \$\{PRODUCT_DIR\}/(.+)\)", line):
            variables[m.group(1)] = REPO_ROOT / m.group(2)
    assert variables["PYTHONPATH"] == REPO_ROOT / "python"
    assert variables["DAF_BUTLER_CONFIG_PATH"].resolve() == resource_path("butler_config").resolve()
    assert (variables["DAF_BUTLER_CONFIG_PATH"] / "storageClasses.yaml").is_file()
    assert variables["DAF_BUTLER_PLUGINS"].is_file()


def test_butler_plugin_file_names_importable_commands() -> None:
    import click
    import yaml
    from lsst.utils import doImport

    plugins = yaml.safe_load((PACKAGE_DIR / "cli" / "resources.yaml").read_text())["cmd"]
    for name in plugins["commands"]:
        command = doImport(f"{plugins['import']}.{name.replace('-', '_')}")
        assert isinstance(command, click.Command) and command.name == name
