"""The version-directory rules of a model base path, as TF Serving's file system source reads them:
a version is a plain integer directory (`<base>/<N>/`); anything else (hidden temporaries) is not
a version. The server keeps its own copy of the rule (serving/versions.py), since serving/ does not
import export/.
"""

from __future__ import annotations

from pathlib import Path


def list_versions(base: str | Path) -> list[int]:
    """Integer version directories, as TF Serving's file system source counts them."""
    base = Path(base)
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(base: str | Path) -> int:
    versions = list_versions(base)
    return (versions[-1] + 1) if versions else 1


def resolve_version(model_dir: Path, version: int | None) -> Path:
    """`model_dir` is a base path (highest version, or `version`) or a version directory itself."""
    if (model_dir / "saved_model.pb").exists() and version is None:
        return model_dir
    versions = list_versions(model_dir)
    if not versions:
        raise FileNotFoundError(f"{model_dir}: no published versions (integer directories)")
    chosen = versions[-1] if version is None else version
    if chosen not in versions:
        raise FileNotFoundError(f"{model_dir}: no version {chosen} (have {versions})")
    return model_dir / str(chosen)
