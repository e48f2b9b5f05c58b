"""One command from images to a published version: train, write the servable, gate, publish."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from export import fsutil
from export.contract import (
    CLASSIFICATION,
    EMBEDDING,
    INPUT_KEY,
    OOD_OUTPUTS,
    PIXELS_INPUT_KEY,
    PREPROCESSING_OUTPUT,
    SERVING_DEFAULT,
    SERVING_PIXELS,
)
from export.data.dataset import TEST, TRAIN, VALIDATION
from export.experiments.report import train_and_report, write_run_report
from export.model.backbones import BackboneConfig, feature_dim
from export.model.pixels import EagerPixels
from export.model.preprocessing import EagerPreprocessor, Preprocessor
from export.publishing import ood, savedmodel
from export.publishing.champion import (
    REFUSED,
    ChampionError,
    Thresholds,
    find_champion,
    judge,
    precheck,
    summary,
)
from export.publishing.config import ExportConfig
from export.publishing.gate import GateError, GateReport, run_gate
from export.publishing.imagenet_head import imagenet_result
from export.publishing.publish import publish
from export.training.config import QualityBarError
from export.training.evaluation import check_min_accuracy, quality_accuracy
from export.training.finetune import BackboneFeatures
from export.training.runs import library_versions
from export.training.train import TrainResult

log = logging.getLogger(__name__)
MODEL_FIELDS = (
    *("backbone", "weights", "image_size", "feature_layer", "alpha"),
    *("resize", "crop_padding", "crop_interpolation", "max_pixels"),
)


@dataclass
class ExportResult:
    version: int
    path: Path
    gate: GateReport
    train: TrainResult
    champion: dict | None = None  # the model card's `champion` section
    ood: dict | None = None  # the model card's `ood` section


def _check_images(result: TrainResult, count: int) -> list[bytes]:
    """Real images to check and warm up with: validation first, then training."""
    import tensorflow as tf

    uris = result.source.uris(VALIDATION, count)
    uris += result.source.uris(TRAIN, count - len(uris))
    images = []
    for uri in uris:
        with tf.io.gfile.GFile(uri, "rb") as f:
            images.append(f.read())
    return images


def _comparison_images(result: TrainResult) -> tuple[str, list[str], list[bytes]]:
    """The split candidate and champion are judged on (test, or validation when there is no test
    split): its images' class names and bytes, every image of it."""
    import tensorflow as tf

    labelled = getattr(result.source, "labelled_uris", None)
    pairs: list[tuple[str, int]] = []
    split = TEST
    for split in (TEST, VALIDATION) if labelled else ():
        pairs = labelled(split)
        if pairs:
            break
    images = []
    for uri, _ in pairs:
        try:
            with tf.io.gfile.GFile(uri, "rb") as f:
                images.append(f.read())
        except (OSError, tf.errors.OpError) as exc:
            message = f"{uri}: cannot read this {split} image to compare with the champion: {exc}"
            raise ChampionError(message) from None
    return split, [result.labels[label_id] for _, label_id in pairs], images


def _refusal(section: dict) -> str:
    figures = f" ({summary(section)})" if "accuracy" in section else ""
    return (
        f"the champion, version {section['version']}, stays{figures}: "
        + "; ".join(section["regressions"])
        + " (--force publishes the candidate anyway)"
    )


def _record_in_run(result: TrainResult, section: dict) -> None:
    """The comparison in the run's metrics.json (`champion`), where the run report reads it."""
    result.metrics["champion"] = section
    path = Path(result.run_dir) / "metrics.json"
    if path.exists():
        fsutil.atomic_write_json(path, {**json.loads(path.read_text()), "champion": section})


def _fine_tune_card(fine_tune: dict | None) -> dict | None:
    """The fine-tuning summary; the card's metrics are the fine-tuned model's."""
    if not fine_tune:
        return None
    keep = ("from", "learning_rate", "momentum", "epochs_run", "augmentation")
    return {
        **{k: fine_tune[k] for k in keep if k in fine_tune},
        "trainable_layer_count": len(fine_tune.get("trainable_layers", [])),
        "head_only_accuracy": {
            split: m["accuracy"] for split, m in fine_tune.get("head_only_splits", {}).items()
        },
    }


def fit_ood(config: ExportConfig, result: TrainResult) -> tuple[ood.OodDetector | None, dict]:
    """The OOD detector on the training split's features, its threshold on validation's (on
    training's when there is no validation split), and the model card's `ood` section."""
    if config.imagenet_head:
        return None, {"method": None, "reason": "no training features: the pretrained head"}
    features, computed = result.source, "bottlenecks"
    if result.metrics.get("fine_tune"):
        # The cached features are the backbone's before fine-tuning, not the exported one's.
        features = BackboneFeatures.of(result.extractor, result.source, config)
        computed = "fine-tuned backbone, at export"
    started = time.monotonic()
    x, y = features.arrays(TRAIN)
    detector = ood.fit(x, y, len(result.labels))
    split = VALIDATION
    calibration, _ = features.arrays(VALIDATION)
    if not len(calibration):
        split, calibration = TRAIN, x
    detector = ood.calibrate(detector, calibration, config.ood_fpr, split)
    seconds = round(time.monotonic() - started, 1)
    log.info(
        "ood: threshold %.4g (%s, fpr %g), features from the %s, %.1f s",
        detector.threshold, split, config.ood_fpr, computed, seconds,
    )  # fmt: skip
    card = {**detector.card(len(x)), "calibration_images": len(calibration)}
    return detector, {**card, "features": computed, "seconds": seconds}


def model_card(config: ExportConfig, result: TrainResult) -> dict:
    backbone = BackboneConfig.of(config)
    return {
        "model_name": config.model_name,
        "version": None,  # set when the version number is known
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backbone": {
            **backbone.to_dict(),
            "feature_dim": feature_dim(result.extractor),
            "input_size": backbone.input_size,
        },
        "preprocessing": Preprocessor.of(config).describe(),
        "head": {
            "kind": "imagenet (pretrained classifier)" if config.imagenet_head else config.head,
            "hidden_units": config.hidden_units,
            "dropout": config.dropout,
        },
        "classes": result.labels,
        "data": {
            "source": result.metrics["source"],
            "hash": result.metrics["data_hash"],
            "images_used": result.metrics["images_used"],
            "skipped_count": result.metrics["skipped_count"],
        },
        "metrics": {
            split: {k: v for k, v in m.items() if k != "per_class_count"}
            for split, m in result.metrics["splits"].items()
        },
        "training": {
            "optimizer": config.optimizer,
            "learning_rate": config.learning_rate,
            "batch_size": config.batch_size,
            "epochs_run": result.metrics["epochs_run"],
            "seed": config.seed,
            "run_dir": str(result.run_dir),
            "fine_tune": _fine_tune_card(result.metrics.get("fine_tune")),
        },
        "signatures": {
            SERVING_DEFAULT: {
                "inputs": [INPUT_KEY],
                "outputs": ["scores", "classes", "labels", "top_scores", *OOD_OUTPUTS],
            },
            SERVING_PIXELS: {
                "inputs": [
                    f"{PIXELS_INPUT_KEY} (uint8 [-1, {backbone.input_size}, "
                    f"{backbone.input_size}, 3], the contract's pixel step)"
                ],
                "outputs": [
                    *("scores", "classes", "labels", "top_scores", PREPROCESSING_OUTPUT),
                    *OOD_OUTPUTS,
                ],
            },
            CLASSIFICATION: {
                "inputs": ["inputs (tf.Example with image/encoded)"],
                "outputs": ["classes", "scores"],
            },
            EMBEDDING: {"inputs": [INPUT_KEY], "outputs": ["features"]},
        },
        "versions": library_versions(),
    }


def export_model(config: ExportConfig, result: TrainResult | None = None) -> ExportResult:
    """Train (unless `result` is given), then publish the next version; raises on a failed gate."""
    report_after = False
    if result is None and config.imagenet_head:
        result = imagenet_result(config)
    if result is None:
        run_dir = config.run_dir or str(
            Path("runs") / config.model_name / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        )
        # The report is written after the gate, with the champion comparison in it.
        report_after = config.report
        result = train_and_report(
            dataclasses.replace(config, run_dir=run_dir, min_accuracy=None, report=False)
        )
    # Trained from bottlenecks, the backbone is the one the Beam job used: take it from the run.
    config = dataclasses.replace(
        config, **{name: getattr(result.config, name) for name in MODEL_FIELDS}
    )
    # The champion: what refuses the candidate before it is built, then the images to compare on.
    champion = find_champion(config.base_path)
    thresholds = Thresholds(config.max_regression, config.max_class_regression)
    early = precheck(champion, result.labels, thresholds, config.force)
    if early:
        _record_in_run(result, early)
        if report_after:
            write_run_report(result)
        raise GateError(_refusal(early))
    compare_split, truth, compare_images = (
        _comparison_images(result) if champion and not champion.error else (TEST, [], [])
    )
    images = _check_images(result, max(config.gate_images, config.warmup_images))
    preprocessor = Preprocessor.of(config)
    preprocess = EagerPreprocessor(preprocessor)
    batch = np.stack([preprocess(i)[0] for i in images])
    pixel_step = EagerPixels(preprocessor.image_size, preprocessor.max_pixels, preprocessor.resize)
    warmup = images[: config.warmup_images]
    warmup_pixels = np.stack([pixel_step(i)[0] for i in warmup])
    # The in-memory model run as a graph (tf.function): the same graph optimisations the
    # SavedModel gets, so parity measures the export, not eager-vs-graph kernel rounding
    # (measured 2e-7 eager vs 3e-9 graph on EfficientNet-Lite0; the bound is 1e-5).
    import tensorflow as tf

    classifier, extractor = result.classifier, result.extractor
    expected_scores = tf.function(lambda x: classifier(x, training=False))(batch).numpy()
    expected_features = tf.function(lambda x: extractor(x, training=False))(batch).numpy()

    detector, ood_card = fit_ood(config, result)
    card = model_card(config, result)
    card["ood"] = ood_card
    if detector is None:
        for signature in (SERVING_DEFAULT, SERVING_PIXELS):
            outputs = card["signatures"][signature]["outputs"]
            card["signatures"][signature]["outputs"] = [o for o in outputs if o not in OOD_OUTPUTS]

    def write(directory: Path, version: int) -> None:
        if not (directory / "saved_model.pb").exists():
            savedmodel.write_saved_model(
                directory,
                result.classifier,
                result.extractor,
                Preprocessor.of(config),
                result.labels,
                config.top_k,
                detector,
            )
            savedmodel.write_warmup(
                directory, config.model_name, warmup, warmup_pixels, detector is not None
            )
        card["version"] = version
        savedmodel.write_model_card(directory, card)

    def gate(directory: Path) -> GateReport:
        try:
            check_min_accuracy(result.metrics, config.min_accuracy)
        except QualityBarError as exc:
            raise GateError(str(exc)) from None
        report = run_gate(
            directory,
            images[: config.gate_images],
            expected_scores,
            expected_features,
            top_k=config.top_k,
            tolerance=config.parity_tolerance,
            contract=savedmodel.pixels_contract(preprocessor),
            eval_images=compare_images,
            champion=champion.path if champion and compare_images else None,
            ood=detector,
        )
        section = judge(
            champion, compare_split, truth, report, result.labels, thresholds, config.force
        )
        card["champion"] = section
        _record_in_run(result, section)
        log.info("champion: %s; %s", section["outcome"], summary(section))
        if section["outcome"] == REFUSED:
            raise GateError(_refusal(section))
        card["gate"] = report.to_dict()
        split, accuracy = quality_accuracy(result.metrics)
        card["gate"]["quality"] = {
            "split": split,
            "accuracy": accuracy,
            "min_accuracy": config.min_accuracy,
        }
        savedmodel.write_model_card(directory, card)
        return report

    try:
        version, path, report = publish(config.base_path, write, gate, config.version)
    finally:
        if report_after:
            write_run_report(result)
    return ExportResult(version, path, report, result, card.get("champion"), card["ood"])
