"""Head training on frozen backbone features: images -> features once -> head, many epochs."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import keras
import numpy as np

from export import fsutil
from export.backbones import BackboneConfig, build_feature_extractor, feature_dim
from export.cliargs import opt
from export.dataset import SPLITS, TEST, TRAIN, VALIDATION, Dataset, SplitConfig, scan
from export.features import FeatureTable, compute_features
from export.heads import HEADS, OPTIMIZERS, build_classifier, build_head, build_optimizer
from export.preprocessing import DEFAULT_MAX_PIXELS, Preprocessor

log = logging.getLogger(__name__)


class QualityBarError(RuntimeError):
    """A trained or exported model is below the accuracy the user asked for."""


@dataclass(frozen=True)
class TrainConfig:
    data: str = opt(None, "class-folder root (or a root with train/ and test/ class folders)")
    run_dir: str | None = opt(None, "where config.json, metrics.json, curves.png go")
    backbone: str = opt("mobilenet_v2", "registry name (xfer-backbones lists them)")
    weights: str = opt("imagenet", "imagenet, none, or a path to a weights file")
    image_size: int | None = opt(None, "backbone input size; default: the registry's")
    feature_layer: str | None = opt(None, "cut the backbone at this layer (e.g. mixed7)")
    alpha: float = opt(1.0, "mobilenet_v2 width multiplier")
    head: str = opt("softmax", "softmax or mlp", choices=HEADS)
    hidden_units: int = opt(256, "units of the mlp head's hidden layer")
    dropout: float = opt(0.2, "dropout rate before the head's dense layers")
    optimizer: str = opt("adam", "adam, sgd (momentum 0.9) or rmsprop", choices=OPTIMIZERS)
    learning_rate: float = opt(1e-3, "learning rate")
    batch_size: int = opt(32, "batch size, for features and for training")
    epochs: int = opt(20, "maximum epochs")
    patience: int = opt(10, "early stopping on validation accuracy; 0 disables it")
    seed: int = opt(42, "random seed for the head's initialisation and shuffling")
    validation_percent: float = opt(10.0, "hash split: percent of images for validation")
    test_percent: float = opt(10.0, "hash split: percent of images for test")
    max_pixels: int = opt(DEFAULT_MAX_PIXELS, "refuse images with more pixels than this")
    min_accuracy: float | None = opt(None, "fail (exit 1) when test accuracy is below this")
    progress: bool = opt(True, "show progress bars")

    def backbone_config(self) -> BackboneConfig:
        return BackboneConfig(
            name=self.backbone,
            weights=self.weights,
            image_size=self.image_size,
            feature_layer=self.feature_layer,
            alpha=self.alpha,
        )

    def split_config(self) -> SplitConfig:
        return SplitConfig(self.validation_percent, self.test_percent)

    def preprocessor(self) -> Preprocessor:
        return Preprocessor(self.backbone_config(), self.max_pixels)


@dataclass
class TrainResult:
    config: TrainConfig
    run_dir: Path
    dataset: Dataset
    labels: list[str]
    extractor: keras.Model
    head: keras.Model
    classifier: keras.Model
    table: FeatureTable
    metrics: dict

    def split_indices(self, split: str) -> np.ndarray:
        return np.array([i for i, e in enumerate(self.table.examples) if e.split == split], int)


def default_run_dir(root: str = "runs") -> Path:
    return Path(root) / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def data_hash(table: FeatureTable) -> str:
    """Identifies the training data: label, relative path, split and content of every image."""
    lines = sorted(
        f"{e.label}/{e.relative_path}\t{e.split}\t{digest}"
        for e, digest in zip(table.examples, table.sha256)
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _check_classes(dataset: Dataset, table: FeatureTable) -> None:
    have = {e.label for e in table.examples if e.split == TRAIN}
    for label in dataset.labels:
        if label not in have:
            from export.dataset import DatasetError

            raise DatasetError(
                f"{Path(dataset.root) / label}: no decodable training image in this class folder"
            )


def _split_arrays(table: FeatureTable, split: str):
    idx = [i for i, e in enumerate(table.examples) if e.split == split]
    x = table.features[idx] if idx else np.zeros((0, table.features.shape[1]), np.float32)
    y = np.array([table.examples[i].label_id for i in idx], np.int64)
    return x, y


def fit_head(config: TrainConfig, table: FeatureTable, num_classes: int):
    """Train a fresh head on cached features; returns (head, history dict, seconds)."""
    keras.utils.set_random_seed(config.seed)
    x_train, y_train = _split_arrays(table, TRAIN)
    head = build_head(
        table.features.shape[1],
        num_classes,
        config.head,
        hidden_units=config.hidden_units,
        dropout=config.dropout,
        feature_mean=x_train.mean(axis=0),
        feature_variance=x_train.var(axis=0),
    )
    head.compile(
        optimizer=build_optimizer(config.optimizer, config.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    x_val, y_val = _split_arrays(table, VALIDATION)
    callbacks = []
    validation = (x_val, y_val) if len(y_val) else None
    if validation is None:
        log.warning(
            "no validation images: training %d epochs without early stopping", config.epochs
        )
    elif config.patience > 0:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_accuracy",
                mode="max",
                patience=config.patience,
                restore_best_weights=True,
            )
        )
    started = time.perf_counter()
    history = head.fit(
        x_train,
        y_train,
        validation_data=validation,
        epochs=config.epochs,
        batch_size=config.batch_size,
        shuffle=True,
        callbacks=callbacks,
        verbose=2 if config.progress else 0,
    )
    return head, history.history, time.perf_counter() - started


def evaluate_splits(head: keras.Model, table: FeatureTable, labels: list[str]) -> dict:
    out = {}
    for split in SPLITS:
        x, y = _split_arrays(table, split)
        if not len(y):
            out[split] = {"count": 0, "accuracy": None, "loss": None}
            continue
        probs = np.asarray(head(x, training=False))
        loss = float(np.mean(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None))))
        accuracy = float(np.mean(np.argmax(probs, axis=1) == y))
        per_class = {label: int(np.sum(y == i)) for i, label in enumerate(labels)}
        out[split] = {
            "count": int(len(y)),
            "accuracy": accuracy,
            "loss": loss,
            "per_class_count": per_class,
        }
    return out


def _history_csv(history: dict) -> str:
    keys = list(history)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["epoch", *keys])
    for epoch in range(len(history[keys[0]]) if keys else 0):
        writer.writerow([epoch + 1, *(history[k][epoch] for k in keys)])
    return buf.getvalue()


def plot_curves(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + metric)
            if values:
                ax.plot(
                    range(1, len(values) + 1),
                    values,
                    style,
                    label=("validation" if prefix else "train"),
                )
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    fsutil.atomic_write_bytes(path, buf.getvalue())


def library_versions() -> dict:
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
    }


def train(config: TrainConfig) -> TrainResult:
    if not config.data:
        raise ValueError("data is required: a class-folder root")
    run_dir = Path(config.run_dir) if config.run_dir else default_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    fsutil.atomic_write_json(run_dir / "config.json", asdict(config))

    dataset = scan(config.data, config.split_config())
    log.info("%s: %d images in %d classes", config.data, len(dataset.examples), len(dataset.labels))
    extractor = build_feature_extractor(config.backbone_config())
    table = compute_features(
        dataset.examples,
        extractor,
        config.preprocessor(),
        batch_size=config.batch_size,
        progress=config.progress,
    )
    table.skipped = dataset.skipped + table.skipped
    _check_classes(dataset, table)

    head, history, seconds = fit_head(config, table, len(dataset.labels))
    splits = evaluate_splits(head, table, dataset.labels)
    metrics = {
        "splits": splits,
        "labels": dataset.labels,
        "images_found": len(dataset.examples),
        "images_used": len(table.examples),
        "skipped_count": len(table.skipped),
        "skipped": table.skipped,
        "feature_dim": feature_dim(extractor),
        "epochs_run": len(next(iter(history.values()), [])),
        "train_seconds": seconds,
        "data_hash": data_hash(table),
        "explicit_splits": dataset.explicit_splits,
        "versions": library_versions(),
    }
    fsutil.atomic_write_text(run_dir / "labels.txt", "\n".join(dataset.labels) + "\n")
    fsutil.atomic_write_text(run_dir / "history.csv", _history_csv(history))
    plot_curves(history, run_dir / "curves.png")
    head.save(run_dir / "head.keras")
    fsutil.atomic_write_json(run_dir / "metrics.json", metrics)
    for split in SPLITS:
        acc = splits[split]["accuracy"]
        log.info(
            "%s accuracy: %s (%d images)",
            split,
            "n/a" if acc is None else f"{acc:.4f}",
            splits[split]["count"],
        )

    result = TrainResult(
        config,
        run_dir,
        dataset,
        dataset.labels,
        extractor,
        head,
        build_classifier(extractor, head),
        table,
        metrics,
    )
    check_min_accuracy(metrics, config.min_accuracy)
    return result


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


def load_metrics(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())
