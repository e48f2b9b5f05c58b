"""The layout rules of docs/architecture.md that a linter does not check: small modules, and each
sub-package of export/ saying in its docstring what lives there."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("export", "beam_jobs", "serving", "client")
MAX_LINES = 400


def _modules():
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_no_module_over_400_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in _modules()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them along a real seam): {long}"


@pytest.mark.parametrize(
    "package", sorted(p.parent.name for p in (ROOT / "export").glob("*/__init__.py"))
)
def test_every_export_subpackage_says_what_lives_there(package):
    init = ROOT / "export" / package / "__init__.py"
    docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
    assert docstring and len(docstring) > 40, f"{init}: no docstring saying what lives here"
    assert f"`export/{package}/`" in (ROOT / "docs" / "architecture.md").read_text(), (
        f"docs/architecture.md's layout table does not list export/{package}/"
    )
