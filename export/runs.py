"""A training run's classifier, rebuilt from its run dir (head-only or fine-tuned alike)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import keras

from export.backbones import WEIGHTS_NONE, BackboneConfig, build_feature_extractor
from export.heads import build_classifier

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
