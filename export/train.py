"""Head training on frozen backbone features: images -> features once -> head, many epochs."""

from __future__ import annotations

import csv
import dataclasses
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
import tensorflow as tf

from export import fsutil
from export.backbones import BackboneConfig, build_feature_extractor
from export.cliargs import opt
from export.dataset import SPLITS, TEST, TRAIN, VALIDATION, DatasetError, SplitConfig, scan
from export.feature_sources import InMemoryFeatures, TFRecordFeatures, content_hash
from export.features import FeatureTable, compute_features
from export.heads import HEADS, OPTIMIZERS, build_classifier, build_head, build_optimizer
from export.plots import plot_curves
from export.preprocessing import DEFAULT_MAX_PIXELS, Preprocessor
from export.stopping import check_target, stop_record, training_callbacks

log = logging.getLogger(__name__)
SHUFFLE_BUFFER = 50_000  # a full shuffle for datasets up to this size, a window beyond


class QualityBarError(RuntimeError):
    """A trained or exported model is below the accuracy the user asked for."""


@dataclass(frozen=True)
class TrainConfig:
    data: str | None = opt(None, "class-folder root (or a root with train/, test/ class folders)")
    bottlenecks: str | None = opt(None, "train from xfer-bottlenecks output instead of images")
    run_dir: str | None = opt(None, "where config.json, metrics.json, curves.png go")
    backbone: str = opt("mobilenet_v2", "registry name (xfer-backbones lists them)")
    weights: str = opt("imagenet", "imagenet, none, or a path to a weights file")
    image_size: int | None = opt(None, "backbone input size; default: the registry's")
    feature_layer: str | None = opt(None, "cut the backbone at this layer (e.g. mixed7)")
    alpha: float = opt(1.0, "mobilenet_v2 width multiplier")
    head: str = opt("softmax", "softmax or mlp", choices=HEADS)
    hidden_units: int = opt(256, "units of the mlp head's hidden layer")
    dropout: float = opt(0.2, "dropout rate before the head's dense layers")
    l2: float = opt(0.0, "L2 weight penalty on the head's dense layers")
    optimizer: str = opt("adam", "adam, sgd (momentum 0.9) or rmsprop", choices=OPTIMIZERS)
    learning_rate: float = opt(1e-3, "learning rate")
    batch_size: int = opt(32, "batch size, for features and for training")
    epochs: int = opt(20, "maximum epochs")
    patience: int = opt(10, "early stopping on validation accuracy; 0 disables it")
    stop_at_accuracy: float | None = opt(
        None, "stop once validation accuracy (train accuracy without validation) reaches this"
    )
    seed: int = opt(42, "random seed for the head's initialisation and shuffling")
    validation_percent: float = opt(10.0, "hash split: percent of images for validation")
    test_percent: float = opt(10.0, "hash split: percent of images for test")
    max_pixels: int = opt(DEFAULT_MAX_PIXELS, "refuse images with more pixels than this")
    min_accuracy: float | None = opt(None, "fail (exit 1) when test accuracy is below this")
    progress: bool = opt(True, "show progress bars")
    report: bool = opt(True, "write report.html (metrics, plots, Grad-CAM) into the run dir")
    fine_tune_from: str | None = opt(
        None,
        "after the head, train end to end from this backbone layer (a name or a prefix such "
        "as block_13, mixed7, conv5_block1) onward; earlier layers stay frozen",
    )
    fine_tune_epochs: int = opt(5, "maximum fine-tuning epochs (early stopping: --patience)")
    fine_tune_learning_rate: float = opt(1e-4, "fine-tuning learning rate (SGD with momentum)")
    fine_tune_momentum: float = opt(0.9, "fine-tuning SGD momentum")
    augment_rotation: float = opt(40.0, "augmentation: max rotation in degrees; 0 disables")
    augment_shift: float = opt(0.2, "augmentation: max shift, fraction of width/height; 0 off")
    augment_shear: float = opt(0.2, "augmentation: max horizontal shear factor; 0 disables")
    augment_zoom: float = opt(0.2, "augmentation: max zoom in/out per axis (fraction); 0 off")
    augment_flip: bool = opt(True, "augmentation: random horizontal flips")

    def backbone_config(self) -> BackboneConfig:
        return BackboneConfig.of(self)

    def split_config(self) -> SplitConfig:
        return SplitConfig(self.validation_percent, self.test_percent)

    def preprocessor(self) -> Preprocessor:
        return Preprocessor(self.backbone_config(), self.max_pixels)


@dataclass
class TrainResult:
    config: TrainConfig
    run_dir: Path
    labels: list[str]
    head: keras.Model
    source: InMemoryFeatures | TFRecordFeatures
    metrics: dict
    _extractor: keras.Model | None = None

    @property
    def extractor(self) -> keras.Model:
        """The backbone; built on first use (training from bottlenecks does not need it)."""
        if self._extractor is None:
            self._extractor = build_feature_extractor(self.config.backbone_config())
        return self._extractor

    @property
    def classifier(self) -> keras.Model:
        return build_classifier(self.extractor, self.head)


def default_run_dir(root: str = "runs") -> Path:
    return Path(root) / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def _split(source, split: str, copies: bool = False) -> tf.data.Dataset:
    """`copies`: with the Beam job's augmented copies, when the source has any (Beam output
    written with --augment_copies); other sources yield each image once either way."""
    if copies and getattr(source, "has_copies", False):
        return source.dataset(split, copies=True)
    return source.dataset(split)


def _batches(source, split: str, batch_size: int, copies: bool = False) -> tf.data.Dataset:
    return _split(source, split, copies).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def train_moments(source, batch_size: int) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """Mean and variance of the training features, and images per class, in one streaming pass."""
    total = np.zeros(source.feature_dim, np.float64)
    squares = np.zeros(source.feature_dim, np.float64)
    per_class: dict[int, int] = {}
    for x, y in _batches(source, TRAIN, 1024, copies=True).as_numpy_iterator():
        total += x.sum(axis=0, dtype=np.float64)
        squares += np.square(x, dtype=np.float64).sum(axis=0)
        for label_id, n in zip(*np.unique(y, return_counts=True)):
            per_class[int(label_id)] = per_class.get(int(label_id), 0) + int(n)
    n = sum(per_class.values())
    if n == 0:
        raise DatasetError("no training images: every image was skipped or assigned elsewhere")
    mean = total / n
    return (
        mean.astype(np.float32),
        np.maximum(squares / n - mean**2, 0).astype(np.float32),
        (per_class),
    )


def _check_classes(labels: list[str], per_class: dict[int, int], where: str) -> None:
    for label_id, label in enumerate(labels):
        if not per_class.get(label_id):
            raise DatasetError(
                f"{Path(where) / label}: no decodable training image in this class folder"
            )


def fit_head(config: TrainConfig, source, mean, variance):
    """Train a fresh head on features; returns (head, history dict, seconds)."""
    keras.utils.set_random_seed(config.seed)
    head = build_head(
        source.feature_dim,
        len(source.labels),
        config.head,
        hidden_units=config.hidden_units,
        dropout=config.dropout,
        l2=config.l2,
        feature_mean=mean,
        feature_variance=variance,
    )
    head.compile(
        optimizer=build_optimizer(config.optimizer, config.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    train_ds = (
        _split(source, TRAIN, copies=True)  # with the Beam job's augmented copies, if any
        .shuffle(SHUFFLE_BUFFER, seed=config.seed, reshuffle_each_iteration=True)
        .batch(config.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    validation = _batches(source, VALIDATION, config.batch_size)
    has_validation = any(True for _ in validation.take(1))
    if not has_validation:
        log.warning(
            "no validation images: training %d epochs without early stopping", config.epochs
        )
    callbacks = training_callbacks(config.patience, config.stop_at_accuracy, has_validation)
    started = time.perf_counter()
    history = head.fit(
        train_ds,
        validation_data=validation if has_validation else None,
        epochs=config.epochs,
        callbacks=callbacks,
        shuffle=False,  # train_ds is shuffled above, with the seed
        verbose=2 if config.progress else 0,
    )
    return head, history.history, time.perf_counter() - started


def evaluate_splits(head: keras.Model, source, batch_size: int = 256) -> dict:
    out = {}
    for split in SPLITS:
        losses, hits, per_class = 0.0, 0, dict.fromkeys(source.labels, 0)
        for x, y in _batches(source, split, batch_size).as_numpy_iterator():
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


def _history_csv(history: dict) -> str:
    keys = list(history)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["epoch", *keys])
    for epoch in range(len(history[keys[0]]) if keys else 0):
        writer.writerow([epoch + 1, *(history[k][epoch] for k in keys)])
    return buf.getvalue()


def library_versions() -> dict:
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
    }


def extract_features(config: TrainConfig, examples) -> tuple[FeatureTable, keras.Model]:
    """The config's backbone over `examples`, through its preprocessing contract."""
    extractor = build_feature_extractor(config.backbone_config())
    table = compute_features(
        examples,
        extractor,
        config.preprocessor(),
        batch_size=config.batch_size,
        progress=config.progress,
    )
    return table, extractor


def _features_from_images(config: TrainConfig) -> tuple[InMemoryFeatures, keras.Model, str]:
    dataset = scan(config.data, config.split_config())
    log.info("%s: %d files in %d classes", config.data, len(dataset.examples), len(dataset.labels))
    table, extractor = extract_features(config, dataset.examples)
    source = InMemoryFeatures(table, dataset.labels, dataset.skipped + table.skipped)
    return source, extractor, dataset.root


def _config_from_bottlenecks(config: TrainConfig, source: TFRecordFeatures) -> TrainConfig:
    """The bottlenecks' backbone is the one the exported model must contain."""
    backbone = BackboneConfig.from_dict(source.metadata["backbone"])
    split = source.metadata.get("split", {})
    return dataclasses.replace(
        config,
        backbone=backbone.name,
        weights=backbone.weights,
        image_size=backbone.image_size,
        feature_layer=backbone.feature_layer,
        alpha=backbone.alpha,
        max_pixels=source.metadata["preprocessing"]["max_pixels"],
        validation_percent=split.get("validation_percent", config.validation_percent),
        test_percent=split.get("test_percent", config.test_percent),
    )


def train(config: TrainConfig) -> TrainResult:
    if bool(config.data) == bool(config.bottlenecks):
        raise ValueError("give exactly one of data (class folders) or bottlenecks (Beam output)")
    check_target(config.stop_at_accuracy)  # before minutes of feature extraction
    extractor = None
    if config.bottlenecks:
        source = TFRecordFeatures(config.bottlenecks)
        config = _config_from_bottlenecks(config, source)
        where = source.metadata["job_options"]["xfer"]["input"]
    else:
        source, extractor, where = _features_from_images(config)
    tuner = None
    if config.fine_tune_from:  # resolve the layer now, not after the head's epochs
        from export.finetune import FineTuner

        tuner = FineTuner.prepare(config, extractor)
    run_dir = Path(config.run_dir) if config.run_dir else default_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    fsutil.atomic_write_json(run_dir / "config.json", asdict(config))

    mean, variance, per_class = train_moments(source, config.batch_size)
    _check_classes(source.labels, per_class, where)
    head, history, seconds = fit_head(config, source, mean, variance)
    splits = evaluate_splits(head, source)
    if tuner:
        extractor, splits = tuner.run(run_dir, source, head, splits)
    metrics = {
        "splits": splits,
        "labels": source.labels,
        "source": config.bottlenecks or config.data,
        "images_used": sum(m["count"] for m in splits.values()),
        "skipped_count": (source.metadata["errors"] if config.bottlenecks else len(source.skipped)),
        "skipped": source.skipped,
        "feature_dim": source.feature_dim,
        "training_rows": sum(per_class.values()),  # with the Beam job's augmented copies
        "epochs_run": len(next(iter(history.values()), [])),
        "train_seconds": seconds,
        "stopped_at_accuracy": stop_record(history, config.stop_at_accuracy),
        "data_hash": content_hash(source.rows()),
        "versions": library_versions(),
    }
    if tuner:
        metrics["fine_tune"] = tuner.metrics
    fsutil.atomic_write_text(run_dir / "labels.txt", "\n".join(source.labels) + "\n")
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
    result = TrainResult(config, run_dir, source.labels, head, source, metrics, extractor)
    if config.report:
        from export.report import write_run_report

        write_run_report(result)
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
