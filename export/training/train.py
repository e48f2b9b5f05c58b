"""Head training on frozen backbone features: images -> features once -> head, many epochs."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from export import fsutil
from export.data.dataset import SPLITS, TRAIN, VALIDATION, DatasetError, scan
from export.features.extraction import FeatureTable, compute_features
from export.features.sources import InMemoryFeatures, TFRecordFeatures, content_hash
from export.model.backbones import BackboneConfig, build_feature_extractor
from export.model.heads import build_classifier, build_head, build_optimizer
from export.model.preprocessing import Preprocessor
from export.model.resize_mode import DEFAULT_CROP_PADDING, DEFAULT_INTERPOLATION
from export.plots import plot_curves
from export.training.config import TrainConfig
from export.training.evaluation import (
    batches,
    check_min_accuracy,
    evaluate_splits,
    split_dataset,
)
from export.training.finetune import FineTuner
from export.training.runs import default_run_dir, history_csv, library_versions
from export.training.stopping import (
    check_target,
    fit_with_stops,
    kept_epoch,
    log_kept,
    stop_record,
    warn_small_validation,
)

log = logging.getLogger(__name__)
SHUFFLE_BUFFER = 50_000  # a full shuffle for datasets up to this size, a window beyond
CACHE_BYTES = 2 << 30  # feature rows up to this size are held in memory after the first epoch


@dataclasses.dataclass
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
            self._extractor = build_feature_extractor(BackboneConfig.of(self.config))
        return self._extractor

    @property
    def classifier(self) -> keras.Model:
        return build_classifier(self.extractor, self.head)


def train_moments(source, batch_size: int) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """Mean and variance of the training features, and images per class, in one streaming pass."""
    total = np.zeros(source.feature_dim, np.float64)
    squares = np.zeros(source.feature_dim, np.float64)
    per_class: dict[int, int] = {}
    for x, y in batches(source, TRAIN, 1024, copies=True).as_numpy_iterator():
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


def feature_bytes(source) -> int:
    """Bytes of every feature row of a source (augmented copies included)."""
    metadata = getattr(source, "metadata", None)
    if metadata is None:
        table = getattr(source, "table", None)
        return int(table.features.nbytes) if table is not None else CACHE_BYTES + 1
    rows = int(metadata.get("total", 0)) + int(metadata.get("augmented_copies") or 0)
    return rows * source.feature_dim * 4


def epoch_datasets(source, batch_size: int, seed: int):
    """(training batches, validation batches) for the head's epochs. Features that fit in
    CACHE_BYTES are kept in memory after the first epoch: every later epoch would otherwise read
    and un-gzip every shard again, twice (a split is a filter over all of them), which is most of
    an epoch's time on cached bottlenecks (docs/benchmarks.md, cached_head_epoch_vs_e2e)."""
    cache = feature_bytes(source) <= CACHE_BYTES
    train = split_dataset(source, TRAIN, copies=True)  # with the Beam job's augmented copies
    validation = split_dataset(source, VALIDATION)
    if cache:
        train, validation = train.cache(), validation.cache()
    train = (
        train.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    return train, validation.batch(batch_size).prefetch(tf.data.AUTOTUNE)


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
    train_ds, validation = epoch_datasets(source, config.batch_size, config.seed)
    has_validation = any(True for _ in validation.take(1))
    if not has_validation:
        log.warning(
            "no validation images: training %d epochs without early stopping", config.epochs
        )
    fit = fit_with_stops(
        head, train_ds, validation if has_validation else None, config.epochs, config
    )
    return head, fit.history, fit.seconds


def extract_features(config: TrainConfig, examples) -> tuple[FeatureTable, keras.Model]:
    """The config's backbone over `examples`, through its preprocessing contract."""
    extractor = build_feature_extractor(BackboneConfig.of(config))
    table = compute_features(
        examples,
        extractor,
        Preprocessor.of(config),
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
    """The bottlenecks' backbone, resize mode included, is the one the exported model must
    contain; a --resize that names another mode is refused."""
    meta = source.metadata
    backbone = BackboneConfig.from_dict(meta["backbone"])  # no resize recorded: squash
    theirs = backbone.resize
    made_with = str(meta.get("preprocessing_version") or meta["preprocessing"].get("version", "1"))
    if made_with != theirs.version:
        # The exported model would decode images with this version's preprocessing: a head
        # trained on features of another would see different pixels at serving time.
        raise ValueError(
            f"{source.prefix}: bottlenecks made with preprocessing version {made_with}, but this"
            f" xfer preprocesses with version {theirs.version} (resize {theirs};"
            " docs/preprocessing.md); compute them again with xfer-bottlenecks, or train from"
            " the images"
        )
    if config.resize is not None and BackboneConfig.of(config).resize != theirs:
        # The same reason: the model would resize images as the features were not.
        raise ValueError(
            f"{source.prefix}: bottlenecks computed with resize {theirs}, but this run asks for"
            f" resize {BackboneConfig.of(config).resize}; compute them again with"
            " xfer-bottlenecks --resize, or leave --resize out to take the bottlenecks' mode"
        )
    crop = (config.crop_padding, config.crop_interpolation)
    given = config.resize is None and crop != (DEFAULT_CROP_PADDING, DEFAULT_INTERPOLATION)
    if given and (not theirs.is_crop or crop != (theirs.crop_padding, theirs.interpolation)):
        raise ValueError(
            f"{source.prefix}: --crop-padding {crop[0]} / --crop-interpolation {crop[1]} "
            f"given without --resize, and the bottlenecks were computed with resize "
            f"{theirs}; give --resize center_crop to ask for that crop (the bottlenecks "
            "must then be computed with it), or leave the crop flags out"
        )
    split = source.metadata.get("split", {})
    return dataclasses.replace(
        config,
        backbone=backbone.name,
        weights=backbone.weights,
        image_size=backbone.image_size,
        feature_layer=backbone.feature_layer,
        alpha=backbone.alpha,
        **theirs.flags(),
        max_pixels=source.metadata["preprocessing"]["max_pixels"],
        validation_percent=split.get("validation_percent", config.validation_percent),
        test_percent=split.get("test_percent", config.test_percent),
    )


def train(config: TrainConfig, check_quality: bool = True) -> TrainResult:
    """Features, head, evaluation and the run directory; with `check_quality`, then
    QualityBarError below `config.min_accuracy` (the run directory is complete either way)."""
    if bool(config.data) == bool(config.bottlenecks):
        raise ValueError("give exactly one of data (class folders) or bottlenecks (Beam output)")
    check_target(config.stop_at_accuracy)  # before minutes of feature extraction
    extractor = None
    if config.bottlenecks:
        source = TFRecordFeatures(config.bottlenecks)
        config = _config_from_bottlenecks(config, source)
        where = source.metadata["job_options"]["xfer"]["input"]
    else:
        # The mode recorded in config.json is the one used, never "the default".
        config = dataclasses.replace(config, **BackboneConfig.of(config).resize.flags())
        source, extractor, where = _features_from_images(config)
    tuner = None
    if config.fine_tune_from:  # resolve the layer now, not after the head's epochs
        tuner = FineTuner.prepare(config, extractor)
    run_dir = Path(config.run_dir) if config.run_dir else default_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    fsutil.atomic_write_json(run_dir / "config.json", asdict(config))

    mean, variance, per_class = train_moments(source, config.batch_size)
    _check_classes(source.labels, per_class, where)
    head, history, seconds = fit_head(config, source, mean, variance)
    splits = evaluate_splits(head, source)
    kept = kept_epoch(history, config.patience)
    log_kept(kept)
    warn_small_validation(splits[VALIDATION]["per_class_count"])
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
        "kept_epoch": kept,
        "stopped_at_accuracy": stop_record(history, config.stop_at_accuracy),
        "data_hash": content_hash(source.rows()),
        "versions": library_versions(),
    }
    if tuner:
        metrics["fine_tune"] = tuner.metrics
    fsutil.atomic_write_text(run_dir / "labels.txt", "\n".join(source.labels) + "\n")
    fsutil.atomic_write_text(run_dir / "history.csv", history_csv(history))
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
    if check_quality:
        check_min_accuracy(metrics, config.min_accuracy)
    return result
