"""Where the head's training features come from: computed in process, or Beam's TFRecords.

Both give the trainer the same thing: per-split tf.data datasets of (features, label_id), the
URIs of real images for the export gate, and the rows that identify the data.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from export.features.bottleneck_schema import (
    ERRORS_PREFIX,
    FEATURES_PREFIX,
    LABELS_FILE,
    METADATA_FILE,
    TFRECORD_SUFFIX,
    feature_spec,
)
from export.features.extraction import FeatureTable

log = logging.getLogger(__name__)
MAX_LISTED_SKIPPED = 1000


def content_hash(rows: Iterator[tuple[str, str, str]]) -> str:
    """Order-independent hash of (label, split, sha256) rows: same images, labels and splits give
    the same hash wherever the files live and whichever stage read them."""
    total = 0
    for label, split, digest in rows:
        line = f"{label}\t{split}\t{digest}".encode()
        total = (total + int.from_bytes(hashlib.sha256(line).digest(), "big")) % (1 << 256)
    return f"{total:064x}"


@dataclass
class InMemoryFeatures:
    table: FeatureTable
    labels: list[str]
    skipped: list[dict] = field(default_factory=list)

    @property
    def feature_dim(self) -> int:
        return int(self.table.features.shape[1])

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        idx = [i for i, e in enumerate(self.table.examples) if e.split == split]
        x = self.table.features[idx] if idx else np.zeros((0, self.feature_dim), np.float32)
        y = np.array([self.table.examples[i].label_id for i in idx], np.int64)
        return x, y

    def dataset(self, split: str) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices(self.arrays(split))

    def uris(self, split: str, limit: int) -> list[str]:
        return [e.path for e in self.table.examples if e.split == split][:limit]

    def read(self, split: str, limit: int | None = None):
        """(features, label ids, uris) of a split, row-aligned, at most `limit` rows."""
        x, y = self.arrays(split)
        return x[:limit], y[:limit], self.uris(split, len(y) if limit is None else limit)

    def labelled_uris(self, split: str) -> list[tuple[str, int]]:
        """(uri, label id) of every decodable image of a split: what fine-tuning reads."""
        return [(e.path, e.label_id) for e in self.table.examples if e.split == split]

    def rows(self) -> Iterator[tuple[str, str, str]]:
        for example, digest in zip(self.table.examples, self.table.sha256):
            yield example.label, example.split, digest


class TFRecordFeatures:
    """Streams the Beam job's shards; nothing is loaded into memory whole."""

    def __init__(self, prefix: str):
        self.prefix = prefix.rstrip("/")
        metadata_path = f"{self.prefix}/{METADATA_FILE}"
        if not tf.io.gfile.exists(metadata_path):
            raise FileNotFoundError(
                f"{metadata_path} not found: not the output of a finished xfer-bottlenecks job"
            )
        with tf.io.gfile.GFile(metadata_path) as f:
            self.metadata = json.load(f)
        with tf.io.gfile.GFile(f"{self.prefix}/{LABELS_FILE}") as f:
            self.labels = [line for line in f.read().splitlines() if line]
        # The job lists its shards: a stray file matching the pattern is never read as data.
        listed = self.metadata.get("shards")
        self.files = (
            [f"{self.prefix}/{name}" for name in listed]
            if listed
            else sorted(tf.io.gfile.glob(f"{self.prefix}/{FEATURES_PREFIX}-*{TFRECORD_SUFFIX}"))
        )
        if not self.files:
            pattern = f"{FEATURES_PREFIX}-*{TFRECORD_SUFFIX}"
            raise FileNotFoundError(f"{self.prefix}: no {pattern} shards")
        self.feature_dim = int(self.metadata["feature_dim"])
        # Written with xfer-bottlenecks --augment_copies: training rows have augmented copies.
        self.has_copies = bool(self.metadata.get("augmented_copies"))
        self.skipped = self._errors()

    def _errors(self) -> list[dict]:
        rows = []
        for path in sorted(tf.io.gfile.glob(f"{self.prefix}/{ERRORS_PREFIX}-*.jsonl")):
            with tf.io.gfile.GFile(path) as f:
                for line in f:
                    if line.strip() and len(rows) < MAX_LISTED_SKIPPED:
                        row = json.loads(line)
                        rows.append({"path": row["uri"], "reason": row["reason"]})
        return rows

    def _records(self) -> tf.data.Dataset:
        spec = feature_spec(self.feature_dim)
        return tf.data.TFRecordDataset(
            self.files, compression_type="GZIP", num_parallel_reads=tf.data.AUTOTUNE
        ).map(lambda s: tf.io.parse_single_example(s, spec), num_parallel_calls=tf.data.AUTOTUNE)

    def _split(self, split: str, copies: bool = False) -> tf.data.Dataset:
        """A split's records; augmented copies (xfer-bottlenecks --augment_copies) only when
        asked for: the head trains on them, everything that counts or evaluates images does not."""
        found = self._records().filter(lambda r: tf.equal(r["split"], split))
        return found if copies else found.filter(lambda r: tf.equal(r["augment_copy"], 0))

    def dataset(self, split: str, copies: bool = False) -> tf.data.Dataset:
        return self._split(split, copies).map(lambda r: (r["features"], r["label_id"]))

    def uris(self, split: str, limit: int) -> list[str]:
        found = self._split(split).take(limit)
        return [r["image/uri"].decode() for r in found.as_numpy_iterator()]

    def read(self, split: str, limit: int | None = None):
        """(features, label ids, uris) of a split, row-aligned, at most `limit` rows: one pass,
        since shards are read interleaved and two passes need not agree on the order."""
        found = self._split(split)
        if limit is not None:
            found = found.take(limit)
        x, y, uris = [], [], []
        for r in found.as_numpy_iterator():
            x.append(r["features"])
            y.append(r["label_id"])
            uris.append(r["image/uri"].decode())
        if not x:
            return np.zeros((0, self.feature_dim), np.float32), np.zeros(0, np.int64), []
        return np.stack(x).astype(np.float32), np.asarray(y, np.int64), uris

    def arrays(self, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        x, y, _ = self.read(split, limit)
        return x, y

    def labelled_uris(self, split: str) -> list[tuple[str, int]]:
        """(uri, label id) of every image of a split, once each (augmented copies share a URI),
        in a stable order: what fine-tuning reads instead of the cached features."""
        spec = {k: feature_spec(self.feature_dim)[k] for k in ("image/uri", "label_id", "split")}
        found = (
            tf.data.TFRecordDataset(self.files, compression_type="GZIP")
            .map(lambda s: tf.io.parse_single_example(s, spec))  # not the feature vectors
            .filter(lambda r: tf.equal(r["split"], split))
        )
        pairs = {}
        for r in found.map(lambda r: (r["image/uri"], r["label_id"])).as_numpy_iterator():
            pairs.setdefault(r[0].decode(), int(r[1]))
        return sorted(pairs.items())

    def rows(self) -> Iterator[tuple[str, str, str]]:
        originals = self._records().filter(lambda r: tf.equal(r["augment_copy"], 0))
        for r in originals.as_numpy_iterator():
            yield r["label"].decode(), r["split"].decode(), r["image/sha256"].decode()
