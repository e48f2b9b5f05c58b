"""What the run report shows, gathered: per-split features, labels and URIs (from the training
source, or recomputed from the run's images), predictions and thumbnails. No HTML here
(report_html.py draws it)."""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from export.data.dataset import SPLITS
from export.experiments.defaults import MAX_PER_SPLIT
from export.experiments.gradcam import Explainer
from export.model.preprocessing import EagerPreprocessor, Preprocessor, decode_image

log = logging.getLogger(__name__)

THUMBNAIL = 160


@dataclass
class SplitData:
    """Feature rows of one split with their label ids and image URIs, row-aligned."""

    features: np.ndarray
    label_ids: np.ndarray
    uris: list[str]

    def __len__(self) -> int:
        return len(self.label_ids)


@dataclass
class ReportInputs:
    run_dir: Path
    config: dict
    metrics: dict
    labels: list[str]
    head: keras.Model
    splits: dict[str, SplitData]
    preprocessor: Preprocessor
    explainer: Callable[[], Explainer]  # built on demand: only Grad-CAM needs the backbone
    seed: int = 0


# Inputs ----------------------------------------------------------------------------------------


def read_history(run_dir: Path) -> dict[str, list[float]]:
    path = run_dir / "history.csv"
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    keys = [k for k in (rows[0] if rows else {}) if k != "epoch"]
    return {k: [float(r[k]) for r in rows if r.get(k) not in (None, "")] for k in keys}


def splits_from_source(source, limit: int = MAX_PER_SPLIT) -> dict[str, SplitData]:
    return {split: SplitData(*source.read(split, limit)) for split in SPLITS}


def read_bytes(uri: str) -> bytes:
    import tensorflow as tf

    with tf.io.gfile.GFile(uri, "rb") as f:
        return f.read()


def featurize(
    splits: dict[str, SplitData], extractor: keras.Model, preprocessor: Preprocessor, batch=32
) -> dict[str, SplitData]:
    """The features of the same images again, through another backbone (a fine-tuned one:
    the cached bottlenecks are of the frozen backbone and would misstate the final model)."""
    preprocess = EagerPreprocessor(preprocessor)
    out = {}
    for split, data in splits.items():
        pixels, ids, uris = [], [], []
        for uri, label_id in zip(data.uris, data.label_ids):
            try:
                image, reason = preprocess(read_bytes(uri))
            except OSError as exc:
                image, reason = None, str(exc)
            if image is None:
                log.warning("report: %s skipped: %s", uri, reason)
                continue
            pixels.append(image)
            ids.append(label_id)
            uris.append(uri)
        dim = int(extractor.output.shape[-1])
        features = [
            np.asarray(extractor(np.stack(pixels[i : i + batch]), training=False))
            for i in range(0, len(pixels), batch)
        ]
        x = np.concatenate(features) if features else np.zeros((0, dim), np.float32)
        out[split] = SplitData(x, np.asarray(ids, np.int64), uris)
    return out


def thumbnail(uri: str, max_pixels: int, size: int = THUMBNAIL) -> np.ndarray | None:
    """The image as the model decoded it, shrunk; None when it cannot be read any more."""
    import tensorflow as tf
    from PIL import Image

    try:
        image = decode_image(tf.constant(read_bytes(uri)), max_pixels).numpy()
    except (OSError, tf.errors.OpError) as exc:
        log.warning("report: cannot show %s (%s)", uri, exc)
        return None
    picture = Image.fromarray(image)
    picture.thumbnail((size, size))
    return np.asarray(picture)


def predict(head: keras.Model, features: np.ndarray, batch: int = 1024) -> np.ndarray:
    if not len(features):
        return np.zeros((0, int(head.output.shape[-1])), np.float32)
    return np.concatenate(
        [
            np.asarray(head(features[i : i + batch], training=False))
            for i in range(0, len(features), batch)
        ]
    )


# HTML ------------------------------------------------------------------------------------------
