"""The user-facing documents hold no project history: no issue numbers, run dates or machine paths.

README.md, every text file under doc/ (the build output aside) and every docstring and comment in
python/ are documentation for users. Dated history belongs in CHANGELOG.md, which is not checked.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250

# Each pattern names what it catches; a match anywhere in a checked text is a failure.
FORBIDDEN = {
    "issue number": re.compile(r"\b[Ii]ssues?[\s-]*#?\d+\b|(?:^|(?<=[\s(\[]))#\d+\b"),
    "run date": re.compile(
        r"\b(?:19|20)\d\d-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])\b"
        r"|\b(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]*\.?,?\s+(?:19|20)\d\d\b"
    ),
    "absolute machine path": re.compile(r"(?<![\w.~-])/(?:work|tmp|root|home)/"),
}

DOC_SKIP_PARTS = {"_build", "py-api", "__pycache__"}
DOC_SKIP_NAMES = {"CHANGELOG.md", "CHANGELOG.rst", "changelog.rst"}


def _violations(text: str) -> list[str]:
    found = []
    for kind, pattern in FORBIDDEN.items():
        for match in pattern.finditer(text):
            found.append(f"{kind}: {match.group(0)!r}")
    return found


def _doc_files() -> list[Path]:
    files = []
    for path in sorted((ROOT / "doc").rglob("*")):
        relative = path.relative_to(ROOT / "doc")
        if not path.is_file() or DOC_SKIP_PARTS & set(relative.parts) or path.name in DOC_SKIP_NAMES:
            continue
        try:
            path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # images
            continue
        files.append(path)
    return files


def _python_texts(path: Path) -> list[tuple[int, str]]:
    """Docstrings and comments of one file, with their line numbers.

    Docstrings are those of modules, classes and functions, and the attribute docstrings (a string
    statement after an assignment) that Sphinx documents as well: every string-expression statement.
    """
    source = path.read_text(encoding="utf-8")
    texts = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            if isinstance(node.value.value, str):
                texts.append((node.lineno, node.value.value))
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            texts.append((token.start[0], token.string.lstrip("#")))
    return texts


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"


@pytest.mark.parametrize(
    "path",
    [ROOT / "README.md", *_doc_files()],
    ids=lambda path: str(path.relative_to(ROOT)),
)
def test_document_holds_no_history(path: Path) -> None:
    problems = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        problems += [f"line {number}: {problem}" for problem in _violations(line)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "path",
    sorted((ROOT / "python").rglob("*.py")),
    ids=lambda path: str(path.relative_to(ROOT / "python")),
)
def test_docstrings_and_comments_hold_no_history(path: Path) -> None:
    problems = []
    for first_line, text in _python_texts(path):
        for offset, line in enumerate(text.splitlines()):
            problems += [f"line {first_line + offset}: {problem}" for problem in _violations(line)]
    assert not problems, "\n".join(problems)


def test_patterns_catch_what_they_should() -> None:
    for text in (
        "see issue 12",
        "Issue #3's figures",
        "(#12)",
        "issue-3 range",
        "on 2026-11-24",
        "in Nov 2026",
        "December 2026",
        "/work/runs/x",
        "written to /tmp/a",
        "/root/.cache",
    ):
        assert _violations(text), text
    for text in (
        "seed 20261124",
        "4 x 4 tiles",
        "color:#444",
        "runs/default/model.safetensors",
        "the 68% interval",
        "a/tmp/b",
        "issues of scale",
    ):
        assert not _violations(text), text
