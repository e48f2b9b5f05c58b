"""The bottleneck TFRecord format (DESIGN.md): written by the Beam job, read by the trainer.

One gzip-compressed tf.Example per image:
  image/uri (bytes), image/sha256 (bytes, hex), label (bytes), label_id (int64),
  split (bytes: train|validation|test), features (float list), backbone (bytes),
  augment_copy (int64: 0 for the image itself, k for its k-th augmented copy; training split only)
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

FEATURES_PREFIX = "features"
TFRECORD_SUFFIX = ".tfrecord.gz"
ERRORS_PREFIX = "errors"
LABELS_FILE = "labels.txt"
METADATA_FILE = "metadata.json"


def _bytes(value: str) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode("utf-8")]))


def encode_example(
    *,
    uri: str,
    sha256: str,
    label: str,
    label_id: int,
    split: str,
    features: np.ndarray,
    backbone: str,
    augment_copy: int = 0,
) -> bytes:
    feature = {
        "image/uri": _bytes(uri),
        "image/sha256": _bytes(sha256),
        "label": _bytes(label),
        "label_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[label_id])),
        "split": _bytes(split),
        "features": tf.train.Feature(
            # tolist(): protobuf converts a list 7x faster than it iterates an ndarray.
            float_list=tf.train.FloatList(value=np.asarray(features, np.float32).ravel().tolist())
        ),
        "backbone": _bytes(backbone),
        "augment_copy": tf.train.Feature(int64_list=tf.train.Int64List(value=[augment_copy])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def feature_spec(feature_dim: int) -> dict:
    return {
        "image/uri": tf.io.FixedLenFeature([], tf.string),
        "image/sha256": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.string),
        "label_id": tf.io.FixedLenFeature([], tf.int64),
        "split": tf.io.FixedLenFeature([], tf.string),
        "features": tf.io.FixedLenFeature([feature_dim], tf.float32),
        "backbone": tf.io.FixedLenFeature([], tf.string),
        # 0: the image; k > 0: its k-th augmented copy. Absent in files written before copies.
        "augment_copy": tf.io.FixedLenFeature([], tf.int64, default_value=0),
    }


def decode_example(serialized: bytes, feature_dim: int) -> dict:
    parsed = tf.io.parse_single_example(serialized, feature_spec(feature_dim))
    return {k: v.numpy() for k, v in parsed.items()}
