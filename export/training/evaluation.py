"""Per-split accuracy and loss of a trained model, and the quality bar judged on them."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from export.data.dataset import SPLITS, TEST, VALIDATION
from export.training.config import QualityBarError


def split_dataset(source, split: str, copies: bool = False) -> tf.data.Dataset:
    """`copies`: with the Beam job's augmented copies, when the source has any (Beam output
    written with --augment_copies); other sources yield each image once either way."""
    if copies and getattr(source, "has_copies", False):
        return source.dataset(split, copies=True)
    return source.dataset(split)


def batches(source, split: str, batch_size: int, copies: bool = False) -> tf.data.Dataset:
    return split_dataset(source, split, copies).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def evaluate_splits(head: keras.Model, source, batch_size: int = 256) -> dict:
    out = {}
    for split in SPLITS:
        losses, hits, per_class = 0.0, 0, dict.fromkeys(source.labels, 0)
        for x, y in batches(source, split, batch_size).as_numpy_iterator():
            probs = np.asarray(head(x, training=False))
            losses += float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).sum())
            hits += int(np.sum(np.argmax(probs, axis=1) == y))
            for label_id in y:
                per_class[source.labels[label_id]] += 1
        count = sum(per_class.values())
        out[split] = {
            "count": count,
            "accuracy": hits / count if count else None,
            "loss": losses / count if count else None,
            "per_class_count": per_class,
        }
    return out


def quality_accuracy(metrics: dict) -> tuple[str, float | None]:
    """The accuracy a quality bar is judged on: test, or validation when there is no test."""
    for split in (TEST, VALIDATION):
        acc = metrics["splits"][split]["accuracy"]
        if acc is not None:
            return split, acc
    return TEST, None


def check_min_accuracy(metrics: dict, minimum: float | None) -> None:
    if minimum is None:
        return
    split, acc = quality_accuracy(metrics)
    if acc is None:
        raise QualityBarError(f"--min-accuracy {minimum}: no test or validation images to judge")
    if acc < minimum:
        raise QualityBarError(f"{split} accuracy {acc:.4f} is below --min-accuracy {minimum}")
