"""The 1,000 ImageNet-1k class names, in class-index order (source: export/pretrained/README.md)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

LABELS_RESOURCE = "imagenet_classes.txt"
NUM_CLASSES = 1000


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """ImageNet-1k class names; line i is the name of output index i."""
    text = resources.files(__package__).joinpath(LABELS_RESOURCE).read_text("utf-8")
    labels = tuple(line for line in text.splitlines() if line)
    if len(labels) != NUM_CLASSES:
        raise RuntimeError(
            f"{LABELS_RESOURCE}: expected {NUM_CLASSES} class names, found {len(labels)}"
        )
    return labels
