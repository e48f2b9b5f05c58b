"""The bottleneck TFRecord format: written by the Beam job, read by the trainer.

Described in docs/architecture.md, "Bottleneck TFRecords".

One gzip-compressed tf.Example per image:
  image/uri (bytes), image/sha256 (bytes, hex), label (bytes), label_id (int64),
  split (bytes: train|validation|test), features (float list), backbone (bytes),
  augment_copy (int64: 0 for the image itself, k for its k-th augmented copy; training split only)
"""

from __future__ import annotations

import functools
import operator

import numpy as np
import tensorflow as tf

FEATURES_PREFIX = "features"
TFRECORD_SUFFIX = ".tfrecord.gz"
ERRORS_PREFIX = "errors"
LABELS_FILE = "labels.txt"
METADATA_FILE = "metadata.json"


# ------------------------------------------------------------------- hand-encoded tf.Example
#
# Example{Features features = 1}; Features{map<string, Feature> feature = 1}, each map entry a
# message {string key = 1; Feature value = 2}; Feature{oneof: BytesList bytes_list = 1;
# FloatList float_list = 2; Int64List int64_list = 3}; each list {repeated value = 1}, the
# float and int64 values packed. Every field here is length-delimited (wire type 2), so each
# tag is one byte: field << 3 | 2.

_LEN1 = b"\x0a"  # field 1, length-delimited
_LEN2 = b"\x12"  # field 2
_LEN3 = b"\x1a"  # field 3
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_ONE_BYTE_VARINTS = tuple(bytes((n,)) for n in range(0x80))


def _varint(n: int) -> bytes:
    """Base-128 varint of 0 <= n < 2**64."""
    if n < 0x80:
        return _ONE_BYTE_VARINTS[n]
    if n < 0x4000:  # the size of a 1280-float vector, and of the Example holding it
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def _entry_head(key: str) -> bytes:
    """A map entry's key field and the tag of its value field."""
    return _delimited(_LEN1, key.encode("utf-8")) + _LEN2


def _entry(head: bytes, feature: bytes) -> bytes:
    return _delimited(_LEN1, head + _varint(len(feature)) + feature)


def _bytes_entry(head: bytes, value: str) -> bytes:
    """The map entry of a Feature{BytesList{[value]}}."""
    data = value.encode("utf-8")
    n = len(data)
    size = n + 5 + len(head)  # the entry's size when every length in it takes one byte
    if size < 0x80:  # they do: the usual case, in one join
        v = _ONE_BYTE_VARINTS
        return b"".join((_LEN1, v[size], head, v[n + 4], _LEN1, v[n + 2], _LEN1, v[n], data))
    return _entry(head, _delimited(_LEN1, _delimited(_LEN1, data)))


def _int64_entry(head: bytes, value: int) -> bytes:
    """The map entry of a Feature{Int64List{[value]}}."""
    # ints and numpy ints; a float is a TypeError, as in protobuf (and before the cache, which
    # would take 1.0 for 1)
    return _cached_int64_entry(head, operator.index(value))


@functools.lru_cache(maxsize=4096)  # label ids and copy numbers: a few values, many rows
def _cached_int64_entry(head: bytes, value: int) -> bytes:
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"Value out of range: {value}")
    # Two's complement: a negative int64 is a 10-byte varint.
    return _entry(head, _delimited(_LEN3, _delimited(_LEN1, _varint(value & 0xFFFFFFFFFFFFFFFF))))


# Map entries in the order deterministic serialization writes them: protobuf's default (upb)
# backend sorts keys bytewise but puts a key after the keys it is a prefix of, so label_id
# comes before label (the pure-Python backend would put label first).
_AUGMENT_COPY = _entry_head("augment_copy")
_BACKBONE = _entry_head("backbone")
_FEATURES = _entry_head("features")
_SHA256 = _entry_head("image/sha256")
_URI = _entry_head("image/uri")
_LABEL_ID = _entry_head("label_id")
_LABEL = _entry_head("label")
_SPLIT = _entry_head("split")


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
    """The serialized tf.Example of one image.

    Hand-encoded for speed, as this runs once per image in the Beam job: building the
    tf.train.Example protos took ~66 us a row for a 1280-float vector (converting the floats
    one by one), writing the wire format takes ~3.5 us (float32 in; ~4 us from float64).
    tests/export/test_bottleneck_schema_encoding.py pins the bytes to protobuf's
    tf.train.Example(...).SerializeToString(deterministic=True) of the same Example.
    """
    floats = np.asarray(features, dtype="<f4").ravel().tobytes()
    features_head = _features_entry_head(len(floats))
    before = _int64_entry(_AUGMENT_COPY, augment_copy) + _bytes_entry(_BACKBONE, backbone)
    after = (
        _bytes_entry(_SHA256, sha256)
        + _bytes_entry(_URI, uri)
        + _int64_entry(_LABEL_ID, label_id)
        + _bytes_entry(_LABEL, label)
        + _bytes_entry(_SPLIT, split)
    )
    # Example.features: Features{the map entries}; the floats are copied once, by the join.
    size = len(before) + len(features_head) + len(floats) + len(after)
    return b"".join((_LEN1, _varint(size), before, features_head, floats, after))


@functools.lru_cache(maxsize=64)  # one feature size a job
def _features_entry_head(nbytes: int) -> bytes:
    """The "features" map entry up to its packed floats, `nbytes` of them."""
    # FloatList{packed value = 1}: protobuf writes no field for an empty list.
    float_list_head = _LEN1 + _varint(nbytes) if nbytes else b""
    float_list_size = len(float_list_head) + nbytes
    feature_head = _LEN2 + _varint(float_list_size)  # Feature.float_list
    feature_size = len(feature_head) + float_list_size
    entry_head = _FEATURES + _varint(feature_size) + feature_head + float_list_head
    return _LEN1 + _varint(len(entry_head) + nbytes) + entry_head


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
