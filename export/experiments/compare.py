"""Several backbones (and a CNN trained from scratch) on the same data and split: each entry's
run, its accuracy and its throughput, and the comparison's outputs. The command is
`xfer-compare` (export/cli/compare.py).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from pathlib import Path

import numpy as np

from export.experiments.baseline import train_baseline
from export.experiments.compare_entries import BASELINE, Entry
from export.experiments.compare_outputs import COLUMNS
from export.experiments.report import train_and_report
from export.model.backbones import REGISTRY, BackboneConfig
from export.model.preprocessing import EagerPreprocessor, Preprocessor
from export.training.augment import build_augmentation
from export.training.evaluation import quality_accuracy

log = logging.getLogger("xfer-compare")


def entry_config(base, entry: Entry, run_dir: Path):
    """The TrainConfig of one entry: global flags, then the entry's own options. The global
    --alpha applies only to backbones with a width multiplier; others keep 1.0."""

    spec = REGISTRY.get(entry.backbone)
    changes = {"backbone": entry.backbone, "run_dir": str(run_dir)}
    if spec is not None and not spec.takes_alpha:
        changes["alpha"] = 1.0
    return dataclasses.replace(base, **changes, **entry.options)


def sample_images(paths: list[str], preprocessor, limit: int) -> np.ndarray:
    """Up to `limit` model-input images from `paths` (in order, refused files skipped): every
    entry's throughput is measured on the same files."""

    eager = EagerPreprocessor(preprocessor)
    images = []
    for path in paths:
        if len(images) >= limit:
            break
        with open(path, "rb") as f:
            image, _ = eager(f.read())
        if image is not None:
            images.append(image)
    size = preprocessor.image_size
    return np.stack(images) if images else np.zeros((0, size, size, 3), np.float32)


def images_per_second(model, images: np.ndarray, batch_size: int) -> float | None:
    """Forward passes only (decoding and resizing excluded), as a traced graph, after one
    warm-up batch that pays for tracing and memory allocation."""
    import tensorflow as tf

    if len(images) == 0:
        return None
    spec = tf.TensorSpec([None, *images.shape[1:]], tf.float32)
    forward = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    forward(images[:batch_size]).numpy()
    started = time.perf_counter()
    for start in range(0, len(images), batch_size):
        forward(images[start : start + batch_size]).numpy()
    return len(images) / (time.perf_counter() - started)


def _row(name: str, kind: str, **values) -> dict:
    row = dict.fromkeys(COLUMNS)
    row.update(name=name, kind=kind, **values)
    return row


def _accuracies(metrics: dict) -> dict:

    split, accuracy = quality_accuracy(metrics)
    splits = metrics["splits"]
    stop = metrics.get("stopped_at_accuracy") or {}
    return {
        "accuracy": accuracy,
        "accuracy_split": split if accuracy is not None else None,
        "test_accuracy": splits["test"]["accuracy"],
        "validation_accuracy": splits["validation"]["accuracy"],
        "train_seconds": metrics["train_seconds"],
        "epochs_run": metrics["epochs_run"],
        "stopped_at_epoch": stop.get("epoch"),
    }


def run_backbone(entry: Entry, config, paths: list[str], throughput_images: int) -> dict:
    started = time.perf_counter()
    result = train_and_report(config)
    total = time.perf_counter() - started
    extractor = result.extractor
    images = sample_images(paths, Preprocessor.of(result.config), throughput_images)
    return _row(
        entry.name,
        "backbone",
        status="ok",
        total_seconds=total,
        feature_dim=result.metrics["feature_dim"],
        param_count=int(extractor.count_params() + result.head.count_params()),
        images_per_second=images_per_second(extractor, images, config.batch_size),
        image_size=BackboneConfig.of(result.config).input_size,
        data_hash=result.metrics["data_hash"],
        run_dir=str(result.run_dir),
        **_accuracies(result.metrics),
    )


def baseline_preprocessor(configs: list, image_size: int | None):
    """The first entry with a known backbone decides the baseline's input (its normalisation
    and, unless --baseline-image-size, its size), so the baseline sees that backbone's pixels.
    Without one: [-1, 1] scaling (mobilenet_v2's) at 224."""

    for config in configs:
        if config.backbone in REGISTRY:
            backbone = BackboneConfig.of(config)
            if image_size:
                backbone = dataclasses.replace(backbone, image_size=image_size)
            return Preprocessor(backbone, config.max_pixels)
    fallback = BackboneConfig("mobilenet_v2", "none", image_size=image_size or 224)
    return Preprocessor(fallback, configs[0].max_pixels)


def run_baseline(dataset, preprocessor, baseline_config, augment_config, run_dir, paths, limit):

    started = time.perf_counter()
    augmentation = build_augmentation(augment_config, baseline_config.seed)
    result = train_baseline(dataset, preprocessor, baseline_config, augmentation, run_dir)
    total = time.perf_counter() - started
    images = sample_images(paths, preprocessor, limit)
    return _row(
        BASELINE,
        BASELINE,
        status="ok",
        total_seconds=total,
        feature_dim=result.metrics["feature_dim"],
        param_count=result.metrics["param_count"],
        images_per_second=images_per_second(result.model, images, baseline_config.batch_size),
        image_size=preprocessor.image_size,
        run_dir=str(result.run_dir),
        **_accuracies(result.metrics),
    )


def error_row(name: str, kind: str, exc: BaseException, run_dir: Path) -> dict:
    log.error("%s failed: %s", name, exc)
    log.debug("%s traceback", name, exc_info=exc)
    where = str(run_dir) if run_dir.exists() else None  # a failure may come before any output
    return _row(name, kind, status="error", error=f"{type(exc).__name__}: {exc}", run_dir=where)


def release_memory() -> None:
    import keras

    keras.backend.clear_session()
    gc.collect()
