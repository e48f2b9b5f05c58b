"""Class-folder datasets and the stable split every stage agrees on.

A root holds one sub-folder per class, or `train/` and `test/` (optionally `validation/`) roots
that each hold class folders. Without explicit splits, a file's split is a pure function of its
path relative to its class folder (text after `_nohash_` ignored), so adding images never moves
an existing one to another split, and the Beam job assigns the same split as the trainer.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

TRAIN, VALIDATION, TEST = "train", "validation", "test"
SPLITS = (TRAIN, VALIDATION, TEST)
_EXPLICIT_DIRS = {TRAIN: (TRAIN,), VALIDATION: (VALIDATION, "val"), TEST: (TEST,)}
_NOHASH = re.compile(r"_nohash_.*$")
_BUCKETS = 2**32


class DatasetError(ValueError):
    """The folder layout cannot make a classification dataset; the message names the folder."""


@dataclass(frozen=True)
class SplitConfig:
    validation_percent: float = 10.0
    test_percent: float = 10.0

    def __post_init__(self):
        for name in ("validation_percent", "test_percent"):
            value = getattr(self, name)
            if not 0 <= value < 100:
                raise ValueError(f"{name} must be in [0, 100); received {value}")
        if self.validation_percent + self.test_percent >= 100:
            raise ValueError(
                "validation_percent + test_percent must leave room for training; received "
                f"{self.validation_percent} + {self.test_percent}"
            )


def split_key(relative_path: str) -> str:
    """The part of a path that decides its split: `_nohash_` suffixes of the stem are dropped."""
    path = relative_path.replace(os.sep, "/")
    stem, dot, ext = path.rpartition(".")
    if not dot or "/" in ext:
        stem, ext = path, ""
    return _NOHASH.sub("", stem) + (f".{ext}" if ext else "")


def assign_split(relative_path: str, config: SplitConfig = SplitConfig()) -> str:
    """train / validation / test for a path relative to its class folder; stable forever."""
    digest = hashlib.sha1(split_key(relative_path).encode("utf-8")).hexdigest()
    percent = (int(digest[:8], 16) / _BUCKETS) * 100.0
    if percent < config.validation_percent:
        return VALIDATION
    if percent < config.validation_percent + config.test_percent:
        return TEST
    return TRAIN


def split_of(
    relative_path: str,
    split_dir: str | None,
    config: SplitConfig = SplitConfig(),
    has_validation_dir: bool = False,
) -> str:
    """The split of a file, given the explicit split folder it sits in (None: no such layout)."""
    if split_dir is None:
        return assign_split(relative_path, config)
    if split_dir == TRAIN and not has_validation_dir:
        carve = SplitConfig(validation_percent=config.validation_percent, test_percent=0)
        return assign_split(relative_path, carve)
    return split_dir


def parse_path(path_under_root: str, explicit: bool) -> tuple[str | None, str, str] | None:
    """(split folder, class, path relative to the class folder) of a file path under the root.

    None for files that are not inside a class folder, or hidden. Used by stages that list files
    themselves (the Beam job) so that they label and split exactly as `scan` does.
    """
    parts = [p for p in path_under_root.replace("\\", "/").split("/") if p]
    if any(not _visible(p) for p in parts[:-1]) or not parts or parts[-1].startswith("."):
        return None
    split_dir = None
    if explicit:
        if len(parts) < 3:
            return None
        split_dir = next((s for s, names in _EXPLICIT_DIRS.items() if parts[0] in names), None)
        if split_dir is None:
            return None
        parts = parts[1:]
    if len(parts) < 2:
        return None
    return split_dir, parts[0], "/".join(parts[1:])


@dataclass(frozen=True)
class Example:
    path: str  # as given under the root
    relative_path: str  # relative to its class folder
    label: str
    label_id: int
    split: str


@dataclass
class Dataset:
    root: str
    labels: list[str]
    examples: list[Example]
    explicit_splits: bool = False
    skipped: list[dict] = field(default_factory=list)  # {"path", "reason"}

    def counts(self) -> dict[str, dict[str, int]]:
        table = {split: dict.fromkeys(self.labels, 0) for split in SPLITS}
        for example in self.examples:
            table[example.split][example.label] += 1
        return table


def _visible(name: str) -> bool:
    return not name.startswith((".", "_"))


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and _visible(p.name))


def _files_under(class_dir: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        files.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return files


def _explicit_roots(root: Path) -> dict[str, Path] | None:
    found = {}
    for split, names in _EXPLICIT_DIRS.items():
        for name in names:
            if (root / name).is_dir():
                found[split] = root / name
    if TRAIN in found and TEST in found:
        return found
    return None


def scan(root: str | os.PathLike, split: SplitConfig = SplitConfig()) -> Dataset:
    """List a class-folder dataset. Raises DatasetError naming the folder that breaks the rules."""
    root_path = Path(root)
    if not root_path.is_dir():
        raise DatasetError(f"{root}: not a directory")
    explicit = _explicit_roots(root_path)
    split_roots = explicit or {None: root_path}

    per_split: dict[str | None, dict[str, list[Path]]] = {}
    for split_name, split_root in split_roots.items():
        classes = {d.name: _files_under(d) for d in _class_dirs(split_root)}
        for name, files in classes.items():
            if not files and split_name in (None, TRAIN):
                raise DatasetError(f"{split_root / name}: class folder is empty")
        per_split[split_name] = classes

    train_classes = per_split[TRAIN if explicit else None]
    labels = sorted(train_classes)
    if len(labels) < 2:
        where = split_roots[TRAIN if explicit else None]
        raise DatasetError(
            f"{where}: need at least 2 class folders, found {len(labels)}"
            + (f" ({labels[0]})" if labels else "")
        )
    for split_name, classes in per_split.items():
        unknown = sorted(set(classes) - set(labels))
        if unknown:
            raise DatasetError(
                f"{split_roots[split_name]}: class folders {unknown} do not exist in the "
                f"training folder {split_roots[TRAIN]}"
            )

    label_ids = {label: i for i, label in enumerate(labels)}
    examples = []
    for split_name, classes in per_split.items():
        for label in sorted(classes):
            class_dir = split_roots[split_name] / label
            for file in classes[label]:
                relative = file.relative_to(class_dir).as_posix()
                assigned = split_of(relative, split_name, split, VALIDATION in split_roots)
                examples.append(Example(str(file), relative, label, label_ids[label], assigned))
    return Dataset(str(root_path), labels, examples, explicit_splits=explicit is not None)
