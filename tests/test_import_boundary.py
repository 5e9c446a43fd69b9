"""The core never imports Rubin middleware; only the ``pipeline`` subpackage may.

This keeps the science (simulation, models, inference, metrics) usable and
testable without the Butler, as the design requires.
"""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "python" / "lsst" / "meas" / "extensions" / "bliss"
OWN_PACKAGE = "lsst.meas.extensions.bliss"
NAMESPACES = {"lsst", "lsst.meas", "lsst.meas.extensions"}


def core_modules() -> list[Path]:
    return sorted(p for p in PACKAGE_DIR.rglob("*.py") if "pipeline" not in p.relative_to(PACKAGE_DIR).parts)


def forbidden_imports(source: str) -> list[tuple[int, str]]:
    """``(line, module)`` of every absolute import of ``lsst.*`` other than this package."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            if (name == "lsst" or name.startswith("lsst.")) and not (
                name == OWN_PACKAGE or name.startswith(OWN_PACKAGE + ".")
            ):
                found.append((node.lineno, name))
    return found


def test_checker_catches_violations() -> None:
    assert forbidden_imports("import lsst.daf.butler\nfrom lsst.pipe.base import Task\n") == [
        (1, "lsst.daf.butler"),
        (2, "lsst.pipe.base"),
    ]
    assert forbidden_imports("from lsst.meas.extensions.bliss import x\nfrom . import y\n") == []


def test_core_modules_do_not_import_lsst() -> None:
    modules = core_modules()
    assert len(modules) >= 10
    violations = [
        f"{path.relative_to(PACKAGE_DIR)}:{line}: {name}"
        for path in modules
        for line, name in forbidden_imports(path.read_text())
    ]
    assert not violations, "core modules import Rubin middleware:\n" + "\n".join(violations)


def test_importing_the_core_loads_no_middleware() -> None:
    code = (
        "import sys, lsst.meas.extensions.bliss, lsst.meas.extensions.bliss.bench\n"
        "import lsst.meas.extensions.bliss.cli, lsst.meas.extensions.bliss.validate\n"
        f"print(sorted(m for m in sys.modules if m.startswith('lsst') and not m.startswith('{OWN_PACKAGE}')))"
    )
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    loaded = sorted(set(ast.literal_eval(output.strip())) - NAMESPACES)
    assert not loaded, f"importing the core loaded other lsst modules: {loaded}"


def test_the_pipeline_layer_does_not_load_the_plotting_stack() -> None:
    """Every ``pipetask run`` imports the pipeline layer; the report's matplotlib must stay out of it."""
    code = "import sys, lsst.meas.extensions.bliss.pipeline\nprint('matplotlib' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert output.strip() == "False"
