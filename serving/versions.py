"""Which version directories exist and which of them a model should serve (pure functions).

TF Serving's file-system source counts only directories whose whole name is a non-negative
integer (`safe_strto64`), so hidden temporaries such as `.tmp-export-*` are never candidates.
"""

from __future__ import annotations

from pathlib import Path

from serving.config import VersionPolicy


def parse_version(name: str) -> int | None:
    """`"3"` -> 3, `"0007"` -> 7; anything else (hidden, `3.tmp`, `-1`) -> None."""
    return int(name) if name.isascii() and name.isdigit() else None


def version_dirs(base_path: str | Path) -> dict[int, Path]:
    """Integer version directories under a model base path."""
    base = Path(base_path)
    found: dict[int, Path] = {}
    if not base.is_dir():
        return found
    for child in base.iterdir():
        number = parse_version(child.name)
        if number is not None and child.is_dir():
            found[number] = child
    return found


def aspired_versions(available: list[int] | set[int], policy: VersionPolicy) -> list[int]:
    """The versions TF Serving's ServableVersionPolicy selects from those on disk."""
    ordered = sorted(set(available))
    if policy.kind == "all":
        return ordered
    if policy.kind == "specific":
        return [v for v in ordered if v in set(policy.versions)]
    return ordered[-max(1, policy.num_versions) :] if ordered else []
