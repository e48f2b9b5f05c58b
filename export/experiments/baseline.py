"""A small CNN trained from scratch, end to end: the yardstick transfer learning has to beat.

The tutorials' from-scratch baseline: a few Conv -> BatchNorm -> ReLU -> MaxPool blocks, global
average pooling, dropout and a softmax layer. It sees the same images and the same split as the
backbones (the shared `Preprocessor`, so the same decoding, resizing and refusals), its training
split is augmented with `export.training.augment.build_augmentation`, it stops early on validation
accuracy and honours `--stop-at-accuracy`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from export import fsutil
from export.data.dataset import SPLITS, TRAIN, VALIDATION, Dataset, DatasetError, Example
from export.model.preprocessing import Preprocessor
from export.plots import plot_curves
from export.training.evaluation import evaluate_splits
from export.training.runs import history_csv, library_versions
from export.training.stopping import check_target, fit_with_stops, kept_epoch, log_kept, stop_record

log = logging.getLogger(__name__)
CACHE_BYTES = 1 << 30  # decoded splits up to this size stay in memory; beyond, decode each epoch


@dataclass(frozen=True)
class BaselineConfig:
    filters: tuple[int, ...] = (32, 64, 128)  # one Conv-BN-ReLU-MaxPool block per entry
    dropout: float = 0.5
    learning_rate: float = 1e-3  # Adam; from-scratch CNNs want less than a head on features
    batch_size: int = 32
    epochs: int = 30
    patience: int = 10  # early stopping on validation accuracy; 0 disables it
    seed: int = 42
    stop_at_accuracy: float | None = None
    progress: bool = True


def build_baseline(
    image_size: int,
    num_classes: int,
    filters: Sequence[int] = (32, 64, 128),
    dropout: float = 0.5,
    augmentation: keras.Model | None = None,
) -> keras.Model:
    """Augmentation sits inside the model so that it runs only when `training=True`.

    Batch norm momentum is 0.9, not Keras' 0.99: a from-scratch CNN's activations change scale
    fast, and over a few hundred steps 0.99's moving statistics lag so far behind that inference
    collapses to one class (measured on the digits: validation 7% at 0.99, 88% at 0.9, after 10
    epochs of 12 steps; the same network in training mode scored 82% either way).
    """
    if not filters:
        raise ValueError("the baseline needs at least one convolution block")
    if image_size < 2 ** len(filters):
        raise ValueError(
            f"image size {image_size} is too small for {len(filters)} max-pooling blocks"
        )
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = augmentation(inputs) if augmentation is not None else inputs
    for i, width in enumerate(filters, start=1):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="scores")(x)
    return keras.Model(inputs, outputs, name="baseline_cnn")


def inference_model(model: keras.Model) -> keras.Model:
    """The trained network without its augmentation layers (same weights)."""
    if "augmentation" not in [layer.name for layer in model.layers]:
        return model
    inputs = keras.Input(model.input.shape[1:], name="image")
    x = inputs
    for layer in model.layers[1:]:
        if layer.name != "augmentation":
            x = layer(x)
    return keras.Model(inputs, x, name=model.name)


class ImageSource:
    """Per-split datasets of (normalised image, label_id), the interface `evaluate_splits` uses.

    Files the Preprocessor refuses are dropped (`ignore_errors`), as the feature extractor skips
    them, so the baseline and the backbones are scored on the same images.
    """

    def __init__(self, dataset: Dataset, preprocessor: Preprocessor):
        self.labels = dataset.labels
        self.preprocessor = preprocessor
        self._examples = {s: [e for e in dataset.examples if e.split == s] for s in SPLITS}
        self._cache: dict[str, tf.data.Dataset] = {}

    def count(self, split: str) -> int:
        return len(self._examples[split])

    def dataset(self, split: str) -> tf.data.Dataset:
        if split not in self._cache:
            ds = _decoded(self._examples[split], self.preprocessor)
            size = self.preprocessor.image_size
            if self.count(split) * size * size * 3 * 4 <= CACHE_BYTES:
                ds = ds.cache()
            self._cache[split] = ds
        return self._cache[split]


def _decoded(examples: list[Example], preprocessor: Preprocessor) -> tf.data.Dataset:
    paths = tf.constant([e.path for e in examples], tf.string)
    label_ids = tf.constant([e.label_id for e in examples], tf.int64)
    return (
        tf.data.Dataset.from_tensor_slices((paths, label_ids))
        .map(
            lambda path, label: (preprocessor(tf.io.read_file(path)), label),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        .ignore_errors()
    )


def _count(ds: tf.data.Dataset) -> int:
    return int(ds.reduce(np.int64(0), lambda n, _: n + 1))


@dataclass
class BaselineResult:
    model: keras.Model
    source: ImageSource
    metrics: dict
    run_dir: Path


def train_baseline(
    dataset: Dataset,
    preprocessor: Preprocessor,
    config: BaselineConfig,
    augmentation: keras.Model | None,
    run_dir: str | Path,
) -> BaselineResult:
    check_target(config.stop_at_accuracy)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    source = ImageSource(dataset, preprocessor)
    # Full passes fill the caches (a partly read cache is discarded) and count decodable images.
    train_count = _count(source.dataset(TRAIN))
    if train_count == 0:
        raise DatasetError(f"{dataset.root}: no decodable training image")
    keras.utils.set_random_seed(config.seed)
    model = build_baseline(
        preprocessor.image_size, len(dataset.labels), config.filters, config.dropout, augmentation
    )
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    # Known cardinalities: Keras otherwise learns an epoch's length by running out of data.
    train_ds = (
        source.dataset(TRAIN)
        .apply(tf.data.experimental.assert_cardinality(train_count))
        .shuffle(train_count, seed=config.seed, reshuffle_each_iteration=True)
        .batch(config.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    validation_count = _count(source.dataset(VALIDATION))
    has_validation = validation_count > 0
    validation = (
        source.dataset(VALIDATION)
        .apply(tf.data.experimental.assert_cardinality(validation_count))
        .batch(config.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    fit = fit_with_stops(
        model, train_ds, validation if has_validation else None, config.epochs, config
    )
    history = fit.history
    splits = evaluate_splits(model, source, batch_size=config.batch_size)
    metrics = {
        "splits": splits,
        "labels": dataset.labels,
        "source": dataset.root,
        "images_used": sum(m["count"] for m in splits.values()),
        "image_size": preprocessor.image_size,
        "preprocessing": preprocessor.describe(),
        "param_count": int(model.count_params()),
        "feature_dim": int(config.filters[-1]),  # width of the layer before the softmax
        "epochs_run": fit.epochs_run,
        "kept_epoch": kept_epoch(history, config.patience),
        "train_seconds": fit.seconds,
        "stopped_at_accuracy": stop_record(history, config.stop_at_accuracy),
        "versions": library_versions(),
    }
    fsutil.atomic_write_json(run_dir / "config.json", asdict(config))
    fsutil.atomic_write_text(run_dir / "labels.txt", "\n".join(dataset.labels) + "\n")
    fsutil.atomic_write_text(run_dir / "history.csv", history_csv(history))
    plot_curves(history, run_dir / "curves.png")
    # Saved without the augmentation layers: they are the identity at inference, and Keras
    # 3.15 cannot reload a RandomShear it saved (its x_factor round-trips as a negative range).
    inference_model(model).save(run_dir / "baseline.keras")
    log_kept(metrics["kept_epoch"], "baseline")
    fsutil.atomic_write_json(run_dir / "metrics.json", metrics)
    return BaselineResult(model, source, metrics, run_dir)
