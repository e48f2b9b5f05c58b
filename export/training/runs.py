"""A training run's directory: its file names, the helpers that write them, and its classifier
rebuilt from it (head-only or fine-tuned alike)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import tensorflow as tf

from export.model.backbones import WEIGHTS_NONE, BackboneConfig, build_feature_extractor
from export.model.heads import build_classifier

HEAD_FILE = "head.keras"  # the final head (fine-tuned when the run fine-tuned)
HEAD_ONLY_FILE = "head_only.keras"  # a fine-tuned run's head before fine-tuning
BACKBONE_WEIGHTS_FILE = "backbone.weights.h5"  # the fine-tuned backbone, when there is one
RUN_FILES = ("config.json", HEAD_FILE, "labels.txt")


def run_backbone(run_dir: str | Path) -> keras.Model:
    """The run's backbone: the configured one, with a fine-tuned run's saved weights loaded
    over a randomly initialised copy (no ImageNet download just to overwrite it)."""
    run = Path(run_dir)
    backbone = BackboneConfig.of(SimpleNamespace(**_config(run)))
    tuned = run / BACKBONE_WEIGHTS_FILE
    if not tuned.exists():
        return build_feature_extractor(backbone)
    extractor = build_feature_extractor(dataclasses.replace(backbone, weights=WEIGHTS_NONE))
    extractor.load_weights(tuned)
    return extractor


def load_run_classifier(
    run_dir: str | Path,
) -> tuple[keras.Model, keras.Model, keras.Model, dict, list[str]]:
    """(classifier, extractor, head, config dict, labels) of a finished xfer-train run; the
    classifier is the same normalised-images -> scores model that export_model publishes."""
    run = Path(run_dir)
    missing = [name for name in RUN_FILES if not (run / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"{run}: no {', '.join(missing)}; not the run dir of a finished xfer-train"
        )
    extractor = run_backbone(run)
    head = keras.models.load_model(run / HEAD_FILE, compile=False)
    labels = [line for line in (run / "labels.txt").read_text().splitlines() if line]
    return build_classifier(extractor, head), extractor, head, _config(run), labels


def _config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def default_run_dir(root: str = "runs") -> Path:
    return Path(root) / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def history_csv(history: dict) -> str:
    keys = list(history)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["epoch", *keys])
    for epoch in range(len(history[keys[0]]) if keys else 0):
        writer.writerow([epoch + 1, *(history[k][epoch] for k in keys)])
    return buf.getvalue()


def library_versions() -> dict:
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
    }


def load_metrics(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())
