"""`xfer-compare`: several backbones (and a CNN trained from scratch) on the same data and split.

    python -m export.compare --data images/ --output runs/compare \\
        --backbones mobilenet_v2,mobilenet_v2@alpha=0.35,image_size=96,resnet50

Each entry is trained by `export.train.train` into OUTPUT/runs/NN-ENTRY/; the baseline CNN
(`export.baseline`) into OUTPUT/runs/baseline/. OUTPUT gets comparison.json, .csv, .md (the
table also printed) and .png. An entry that fails (unknown name, weights unavailable offline,
...) gets a row with its error and the others still run.

Exit codes: 0 every entry trained; 1 some entry failed (outputs still written); 2 bad
arguments or dataset.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gc
import io
import logging
import re
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export import fsutil
from export.cliargs import _base_type, add_config_arguments, config_from_args, setup_logging

log = logging.getLogger("xfer-compare")

# TrainConfig fields that xfer-compare sets itself: no global flag for them.
NOT_FLAGS = ("data", "bottlenecks", "run_dir", "backbone", "min_accuracy")
# Per-entry options may change anything but the data, the split and which images are refused:
# the comparison is only fair when every entry sees the same images in the same split.
NOT_PER_ENTRY = (*NOT_FLAGS, "validation_percent", "test_percent", "max_pixels", "progress")
COLUMNS = (
    "name",
    "kind",
    "status",
    "accuracy",
    "accuracy_split",
    "test_accuracy",
    "validation_accuracy",
    "train_seconds",
    "total_seconds",
    "feature_dim",
    "param_count",
    "images_per_second",
    "epochs_run",
    "stopped_at_epoch",
    "image_size",
    "data_hash",
    "run_dir",
    "error",
)
BASELINE = "baseline"
EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


class EntrySyntaxError(ValueError):
    """A --backbones value that cannot be parsed; reported before anything is trained."""


@dataclass
class Entry:
    name: str  # as typed, e.g. "mobilenet_v2@alpha=0.35,image_size=96"
    backbone: str
    options: dict = field(default_factory=dict)


def _coerce(key: str, text: str):
    from export.train import TrainConfig

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    if key not in fields or key in NOT_PER_ENTRY:
        allowed = sorted(set(fields) - set(NOT_PER_ENTRY))
        raise EntrySyntaxError(
            f"unknown per-backbone option {key!r}; options: {', '.join(allowed)}"
        )
    hint = typing.get_type_hints(TrainConfig)[key]
    kind = _base_type(hint)
    optional = type(None) in typing.get_args(hint)
    try:
        if optional and kind is not str and text.lower() in ("none", "null"):
            return None
        if kind is bool:
            if text.lower() not in ("true", "false", "yes", "no", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "yes", "1")
        value = kind(text)
    except ValueError:
        raise EntrySyntaxError(f"option {key}={text!r}: expected {kind.__name__}") from None
    choices = fields[key].metadata.get("choices")
    if choices and value not in choices:
        raise EntrySyntaxError(f"option {key}={text!r}: choose from {', '.join(choices)}")
    return value


def parse_entries(values: list[str]) -> list[Entry]:
    """`a,b@k=v,k2=v2,c`: entries are separated by commas; `NAME@k=v` starts an entry's options
    and following `k=v` items (no `@`) add to it, so `image_size=96` belongs to `b` above."""
    entries: list[Entry] = []
    open_options = False  # whether the last entry was written NAME@...
    for value in values:
        for token in (t.strip() for t in value.split(",")):
            if not token:
                continue
            if "@" in token:
                backbone, _, option = token.partition("@")
                if not backbone.strip() or not option.strip():
                    raise EntrySyntaxError(f"{token!r}: write NAME@key=value")
                entries.append(Entry(token, backbone.strip()))
                open_options = True
                items = [option]
            elif "=" in token:
                if not open_options:
                    raise EntrySyntaxError(
                        f"{token!r} follows no NAME@key=value entry; write NAME@{token}"
                    )
                entries[-1].name += f",{token}"
                items = [token]
            else:
                entries.append(Entry(token, token))
                open_options = False
                items = []
            for item in items:
                key, eq, text = item.partition("=")
                if not eq or not key.strip():
                    raise EntrySyntaxError(f"{item!r}: expected key=value")
                key = key.strip().replace("-", "_")
                entries[-1].options[key] = _coerce(key, text.strip())
    if not entries:
        raise EntrySyntaxError("--backbones names no backbone")
    return entries


def entry_config(base, entry: Entry, run_dir: Path):
    """The TrainConfig of one entry: global flags, then the entry's own options. The global
    --alpha applies only to backbones with a width multiplier; others keep 1.0."""
    from export.backbones import REGISTRY

    spec = REGISTRY.get(entry.backbone)
    changes = {"backbone": entry.backbone, "run_dir": str(run_dir)}
    if spec is not None and not spec.takes_alpha:
        changes["alpha"] = 1.0
    return dataclasses.replace(base, **changes, **entry.options)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")[:80] or "entry"


def sample_images(paths: list[str], preprocessor, limit: int) -> np.ndarray:
    """Up to `limit` model-input images from `paths` (in order, refused files skipped): every
    entry's throughput is measured on the same files."""
    from export.preprocessing import EagerPreprocessor

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
    from export.train import quality_accuracy

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
    from export.train import train

    started = time.perf_counter()
    result = train(config)
    total = time.perf_counter() - started
    extractor = result.extractor
    images = sample_images(paths, result.config.preprocessor(), throughput_images)
    return _row(
        entry.name,
        "backbone",
        status="ok",
        total_seconds=total,
        feature_dim=result.metrics["feature_dim"],
        param_count=int(extractor.count_params() + result.head.count_params()),
        images_per_second=images_per_second(extractor, images, config.batch_size),
        image_size=result.config.backbone_config().input_size,
        data_hash=result.metrics["data_hash"],
        run_dir=str(result.run_dir),
        **_accuracies(result.metrics),
    )


def baseline_preprocessor(configs: list, image_size: int | None):
    """The first entry with a known backbone decides the baseline's input (its normalisation
    and, unless --baseline-image-size, its size), so the baseline sees that backbone's pixels.
    Without one: [-1, 1] scaling (mobilenet_v2's) at 224."""
    from export.backbones import REGISTRY, BackboneConfig
    from export.preprocessing import Preprocessor

    for config in configs:
        if config.backbone in REGISTRY:
            backbone = config.backbone_config()
            if image_size:
                backbone = dataclasses.replace(backbone, image_size=image_size)
            return Preprocessor(backbone, config.max_pixels)
    fallback = BackboneConfig("mobilenet_v2", "none", image_size=image_size or 224)
    return Preprocessor(fallback, configs[0].max_pixels)


def run_baseline(dataset, preprocessor, baseline_config, augment_config, run_dir, paths, limit):
    from export.augment import build_augmentation
    from export.baseline import train_baseline

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


def _error_row(name: str, kind: str, exc: BaseException, run_dir: Path) -> dict:
    log.error("%s failed: %s", name, exc)
    log.debug("%s traceback", name, exc_info=exc)
    where = str(run_dir) if run_dir.exists() else None  # a failure may come before any output
    return _row(name, kind, status="error", error=f"{type(exc).__name__}: {exc}", run_dir=where)


def _release_memory() -> None:
    import keras

    keras.backend.clear_session()
    gc.collect()


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    header = (
        "| entry | accuracy | validation accuracy | train s | total s | feature dim | params "
        "| images/s | epochs | status |"
    )
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for row in rows:
        accuracy = _fmt(row["accuracy"])
        if row["accuracy_split"]:
            accuracy += f" ({row['accuracy_split']})"
        status = row["status"] if row["status"] == "ok" else f"error: {row['error']}"
        cells = [
            row["name"],
            accuracy,
            _fmt(row["validation_accuracy"]),
            _fmt(row["train_seconds"], 1),
            _fmt(row["total_seconds"], 1),
            _fmt(row["feature_dim"]),
            _fmt(row["param_count"]),
            _fmt(row["images_per_second"], 1),
            _fmt(row["epochs_run"]),
            status,
        ]
        cleaned = [" ".join(c.replace("|", "\\|").split()) for c in cells]
        lines.append("| " + " | ".join(cleaned) + " |")
    return "\n".join(lines) + "\n"


def rows_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def comparison_png(rows: list[dict]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ok = [r for r in rows if r["status"] == "ok"]
    names = [r["name"] for r in ok]
    fig = Figure(figsize=(max(8.0, 1.6 * len(ok) + 4), 8))
    FigureCanvasAgg(fig)
    panels = (
        ("accuracy (test; validation without test)", "accuracy", 3),
        ("training time (s): fit, and total incl. features", "train_seconds", 1),
        ("feature dimension (baseline: width before softmax)", "feature_dim", 0),
        ("images/s (forward pass)", "images_per_second", 1),
    )
    x = np.arange(len(ok))
    for i, (title, key, digits) in enumerate(panels, start=1):
        ax = fig.add_subplot(2, 2, i)
        if key == "train_seconds":
            totals = [r["total_seconds"] or 0 for r in ok]
            ax.bar(x, totals, color="#c6dbef", label="total")
            ax.bar(x, [r[key] or 0 for r in ok], color="#2171b5", width=0.5, label="fit")
            if ok:
                ax.legend(fontsize=8)
        else:
            values = [r[key] or 0 for r in ok]
            bars = ax.bar(
                x, values, color=["#fd8d3c" if r["kind"] == BASELINE else "#2171b5" for r in ok]
            )
            ax.bar_label(bars, labels=[_fmt(r[key], digits) for r in ok], fontsize=7)
        if key == "accuracy":
            ax.set_ylim(0, 1.08)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    failed = [r["name"] for r in rows if r["status"] != "ok"]
    if failed:
        fig.suptitle("failed: " + ", ".join(failed), color="#cf222e", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write_outputs(output: Path, rows: list[dict], report: dict) -> str:
    table = markdown_table(rows)
    fsutil.atomic_write_json(output / "comparison.json", {**report, "entries": rows})
    fsutil.atomic_write_text(output / "comparison.csv", rows_csv(rows))
    fsutil.atomic_write_text(output / "comparison.md", table)
    fsutil.atomic_write_bytes(output / "comparison.png", comparison_png(rows))
    return table


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers: {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers: {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    from export.train import TrainConfig

    parser = argparse.ArgumentParser(
        prog="xfer-compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, help="class-folder root, as for xfer-train")
    parser.add_argument(
        "--backbones",
        action="append",
        required=True,
        help="comma-separated entries NAME or NAME@key=value,key=value (any TrainConfig option "
        "but the data and split ones); repeatable",
    )
    parser.add_argument("--output", required=True, help="directory for the comparison")
    parser.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train a small CNN from scratch (default: yes)",
    )
    parser.add_argument("--baseline-epochs", "--baseline_epochs", type=int, default=30)
    parser.add_argument(
        "--baseline-filters",
        "--baseline_filters",
        type=_int_list,
        default=(32, 64, 128),
        help="widths of its Conv-BN-ReLU-MaxPool blocks (default: 32,64,128)",
    )
    parser.add_argument(
        "--baseline-image-size",
        "--baseline_image_size",
        type=int,
        default=None,
        help="its input size (default: the first backbone's)",
    )
    parser.add_argument(
        "--baseline-learning-rate", "--baseline_learning_rate", type=float, default=1e-3
    )
    parser.add_argument("--baseline-dropout", "--baseline_dropout", type=float, default=0.5)
    parser.add_argument(
        "--throughput-images",
        "--throughput_images",
        type=int,
        default=256,
        help="images timed for images/s (the same files for every entry; default: 256)",
    )
    add_config_arguments(parser, TrainConfig, exclude=NOT_FLAGS)
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    from export.augment import AugmentConfig
    from export.baseline import BaselineConfig
    from export.dataset import DatasetError, scan
    from export.stopping import check_target
    from export.train import TrainConfig, library_versions

    parser = build_parser()
    args = parser.parse_args(argv)
    output = Path(args.output)
    try:
        entries = parse_entries(args.backbones)
        base = dataclasses.replace(config_from_args(TrainConfig, args), data=args.data)
        check_target(base.stop_at_accuracy)
        augment_config = AugmentConfig.of(base)
        dataset = scan(args.data, base.split_config())
    except (EntrySyntaxError, DatasetError, ValueError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    runs = output / "runs"
    configs = [
        entry_config(base, entry, runs / f"{i:02d}-{_slug(entry.name)}")
        for i, entry in enumerate(entries, start=1)
    ]
    paths = [e.path for e in dataset.examples]
    rows = []
    for entry, config in zip(entries, configs):
        log.info("=== %s", entry.name)
        try:
            rows.append(run_backbone(entry, config, paths, args.throughput_images))
        except Exception as exc:  # one entry's failure must not stop the comparison
            rows.append(_error_row(entry.name, "backbone", exc, Path(config.run_dir)))
        _release_memory()
    baseline_config = None
    if args.baseline:
        baseline_config = BaselineConfig(
            filters=args.baseline_filters,
            dropout=args.baseline_dropout,
            learning_rate=args.baseline_learning_rate,
            batch_size=base.batch_size,
            epochs=args.baseline_epochs,
            patience=base.patience,
            seed=base.seed,
            stop_at_accuracy=base.stop_at_accuracy,
            progress=base.progress,
        )
        log.info("=== %s", BASELINE)
        try:
            preprocessor = baseline_preprocessor(configs, args.baseline_image_size)
            rows.append(
                run_baseline(
                    dataset,
                    preprocessor,
                    baseline_config,
                    augment_config,
                    runs / BASELINE,
                    paths,
                    args.throughput_images,
                )
            )
        except Exception as exc:
            rows.append(_error_row(BASELINE, BASELINE, exc, runs / BASELINE))
        _release_memory()
    report = {
        "data": args.data,
        "split": dataclasses.asdict(base.split_config()),
        "train_config": dataclasses.asdict(base),
        "baseline_config": dataclasses.asdict(baseline_config) if baseline_config else None,
        "augmentation": augment_config.to_dict() if baseline_config else None,
        "throughput": {
            "images": args.throughput_images,
            "batch_size": base.batch_size,
            "measures": "forward passes of preprocessed images (traced graph, one warm-up "
            "batch); decoding and resizing excluded",
        },
        "versions": library_versions(),
    }
    print(write_outputs(output, rows, report), end="")
    failed = [r["name"] for r in rows if r["status"] != "ok"]
    if failed:
        log.error("failed: %s (see comparison.md)", ", ".join(failed))
        return EXIT_SOME_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
