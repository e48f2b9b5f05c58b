"""From an image to its bottleneck row: the backbone behind RunInference, the augmented copies of
training images, the tf.Example each result becomes (and back), and the statistic keys the rows
are counted under for metadata.json."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.transforms.window import GlobalWindows

from beam_jobs.common import NAMESPACE
from beam_jobs.inputs import ImageKey, error_row
from export.features.bottleneck_schema import encode_example
from export.features.extraction import FeatureModel, ImageError
from export.model.backbones import BackboneConfig, build_feature_extractor
from export.model.preprocessing import DEFAULT_MAX_PIXELS, EagerPreprocessor, Preprocessor
from export.training.augment import augment_copies

# Keys of the per-bundle statistics that metadata.json is built from (summed over the job).
COUNT = "count"  # (COUNT, split, label): images written
COPIES = "copies"  # (COPIES,): augmented copies written
DIM = "dim"  # (DIM, feature dim): one key per dimension seen
ERRORS = "errors"  # (ERRORS,): error rows


def row_stat(key: ImageKey) -> tuple:
    """The statistic a written row counts towards: its split and class, or the copies."""
    return (COPIES,) if key.copy else (COUNT, key.split, key.label)


def count_split_images(stats: Counter, sign: int) -> None:
    """The images_<split> counters, from a bundle's statistics (sign -1: rows removed)."""
    for stat, n in stats.items():
        if stat[0] == COUNT:
            Metrics.counter(NAMESPACE, f"images_{stat[1]}").inc(sign * n)


class BackboneModelHandler(ModelHandler[bytes, Any, FeatureModel]):
    """Beam ModelHandler for a registry backbone: encoded images in, loaded once per worker
    process, batched; a refused image comes out as an ImageError, never as a failed batch."""

    def __init__(
        self,
        backbone: BackboneConfig,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        *,
        min_batch_size: int = 8,
        max_batch_size: int = 64,
        pixels: bool = False,
    ):
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self.backbone = backbone
        self.max_pixels = max_pixels
        self.pixels = pixels  # inputs are preprocessed images (augmented copies), not bytes
        self._batches = Metrics.counter(NAMESPACE, "batches")
        self._redone = Metrics.counter(NAMESPACE, "batches_redone_per_image")

    def load_model(self) -> FeatureModel:
        return FeatureModel(
            build_feature_extractor(self.backbone), Preprocessor(self.backbone, self.max_pixels)
        )

    def run_inference(self, batch: Sequence[bytes], model: FeatureModel, inference_args=None):
        self._batches.inc()
        if self.pixels:
            features = model.features_of_pixels(np.stack(batch))
            return [PredictionResult(x, y) for x, y in zip(batch, features)]
        outputs, redone = model.features(batch)
        if redone:
            self._redone.inc()
        return [PredictionResult(x, y) for x, y in zip(batch, outputs)]

    def get_num_bytes(self, batch: Sequence) -> int:
        return sum(x.nbytes if self.pixels else len(x) for x in batch)

    def get_metrics_namespace(self) -> str:
        return f"{NAMESPACE}_backbone"


class AugmentCopies(beam.DoFn):
    """A training image -> K augmented model inputs, keyed as copies 1..K of it.

    Copy k is a pure function of the image's bytes (its sha256) and k, so a retried bundle or a
    re-run job writes the same copies. An image the contract refuses yields nothing here: the
    image's own path already reports it.
    """

    def __init__(self, backbone: BackboneConfig, max_pixels: int, augment, copies: int):
        self.backbone = backbone
        self.max_pixels = max_pixels
        self.augment = augment
        self.copies = copies
        self.written = Metrics.counter(NAMESPACE, "augmented_copies")
        self._preprocess = None

    def setup(self):
        self._preprocess = EagerPreprocessor(Preprocessor(self.backbone, self.max_pixels))

    def process(self, image: tuple[ImageKey, bytes]):
        key, data = image
        pixels, reason = self._preprocess(data)
        if reason is not None:
            return
        images = augment_copies(pixels, self.augment, key.sha256, self.copies)
        self.written.inc(len(images))
        for k, pixels in enumerate(images, start=1):
            yield key._replace(copy=k), pixels


class EncodeRows(beam.DoFn):
    """(ImageKey, PredictionResult) -> its final tf.Example row, label id included; a refused
    image -> 'errors'. Counts per split and class go out once per bundle to 'stats'.

    One step per image from the model to the sink: every per-element Beam step costs as much as
    a fifth of a small backbone's per-image time.
    """

    def __init__(self, backbone: str):
        self.backbone = backbone
        self.failed = Metrics.counter(NAMESPACE, "images_failed")
        self._stats: Counter = Counter()
        self._ids: tuple[int, dict[str, int]] = (0, {})

    def start_bundle(self):
        self._stats = Counter()

    def label_ids(self, labels: list[str]) -> dict[str, int]:
        if self._ids[0] != id(labels):
            self._ids = (id(labels), {label: i for i, label in enumerate(labels)})
        return self._ids[1]

    def process(self, element, labels: list[str]):
        key, result = element
        if isinstance(result.inference, ImageError):
            self.failed.inc()
            return [beam.pvalue.TaggedOutput("errors", error_row(key.uri, result.inference.reason))]
        features = np.asarray(result.inference, dtype=np.float32)
        self._stats[row_stat(key)] += 1
        self._stats[(DIM, int(features.size))] = 1
        row = encode_example(
            uri=key.uri,
            sha256=key.sha256,
            label=key.label,
            label_id=self.label_ids(labels)[key.label],
            split=key.split,
            features=features,
            backbone=self.backbone,
            augment_copy=key.copy,
        )
        return [row]

    def finish_bundle(self):
        count_split_images(self._stats, +1)
        for stat, n in self._stats.items():
            yield beam.pvalue.TaggedOutput("stats", GlobalWindows.windowed_value((stat, n)))


def parse_row(row: bytes):
    """(ImageKey, tf.train.Example) of a written row."""
    example = tf.train.Example.FromString(row)
    return key_of(example), example


def key_of(example) -> ImageKey:
    feature = example.features.feature

    def text(name: str) -> str:
        return feature[name].bytes_list.value[0].decode("utf-8")

    copy = feature["augment_copy"].int64_list.value
    return ImageKey(
        text("image/uri"),
        text("label"),
        text("split"),
        text("image/sha256"),
        int(copy[0]) if copy else 0,
    )
