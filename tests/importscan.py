"""Which stages a package imports, read from its source (importable by any test)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def other_stages_imported(package: str, others: set[str]) -> list[str]:
    """`file:line module` for every import (top-level or in a function) of one of `others`."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            where = path.relative_to(ROOT)
            found += [f"{where}:{node.lineno} {n}" for n in names if n.split(".")[0] in others]
    return found
