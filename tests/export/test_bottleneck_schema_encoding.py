"""encode_example writes the tf.Example wire format by hand: it must give exactly the bytes
protobuf's deterministic serialization gives, and parse back to the values it was given."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from export.features.bottleneck_schema import decode_example, encode_example

# 1e300 as float32 is inf, as it was before; numpy warns about the cast.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")


# The reference: how encode_example built the Example with protobuf before it was hand-encoded.
def _bytes(value: str) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode("utf-8")]))


def reference_example(
    *,
    uri: str,
    sha256: str,
    label: str,
    label_id: int,
    split: str,
    features: np.ndarray,
    backbone: str,
    augment_copy: int = 0,
) -> tf.train.Example:
    feature = {
        "image/uri": _bytes(uri),
        "image/sha256": _bytes(sha256),
        "label": _bytes(label),
        "label_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[label_id])),
        "split": _bytes(split),
        "features": tf.train.Feature(
            float_list=tf.train.FloatList(value=np.asarray(features, np.float32).ravel().tolist())
        ),
        "backbone": _bytes(backbone),
        "augment_copy": tf.train.Feature(int64_list=tf.train.Int64List(value=[augment_copy])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def reference_encode(**kwargs) -> bytes:
    return reference_example(**kwargs).SerializeToString(deterministic=True)


RNG = np.random.default_rng(20240601)
SHA = "0123456789abcdef" * 4


def row(dim: int = 32, **overrides) -> dict:
    kwargs = dict(
        uri="gs://bucket/images/cats/img_000123.jpg",
        sha256=SHA,
        label="cats",
        label_id=3,
        split="train",
        features=RNG.standard_normal(dim).astype(np.float32),
        backbone="efficientnet_lite0",
        augment_copy=0,
    )
    kwargs.update(overrides)
    return kwargs


SPECIAL = np.array(
    [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 3.4028235e38, 1.0],
    dtype=np.float32,
)

CASES = {
    "typical": row(),
    "dim-1": row(1),
    "dim-32": row(32),
    "dim-1280": row(1280),
    "dim-0": row(0),
    # sizes around the 2-/3-byte varint boundary (16384) of the packed floats and their wrappers
    **{f"dim-{d}": row(d) for d in (4093, 4094, 4095, 4096, 4097)},
    "unicode": row(
        uri="gs://bücket/猫/ñandú 🐈.jpg", label="chats-élégants 猫", split="validation"
    ),
    "empty-strings": row(uri="", sha256="", label="", split="", backbone=""),
    "label-id--1": row(label_id=-1),
    "label-id-0": row(label_id=0),
    "label-id-127": row(label_id=127),
    "label-id-128": row(label_id=128),
    "label-id-2**40": row(label_id=2**40),
    "label-id-int64-max": row(label_id=2**63 - 1),
    "label-id-int64-min": row(label_id=-(2**63)),
    "label-id-numpy": row(label_id=np.int64(-7), augment_copy=np.int32(5)),
    "augment-copy-3": row(augment_copy=3),
    "augment-copy-2**40": row(augment_copy=2**40, label_id=-1),
    "float64": row(features=RNG.standard_normal(1280)),
    "float64-not-float32-exact": row(features=np.array([0.1, 1 / 3, 1e-50, 1e300, -2.5])),
    "non-contiguous": row(features=RNG.standard_normal(2560).astype(np.float32)[::2]),
    "fortran-2d": row(features=np.asfortranarray(RNG.standard_normal((4, 8)))),
    "2d-row": row(features=RNG.standard_normal((1, 1280)).astype(np.float32)),
    "big-endian": row(features=RNG.standard_normal(16).astype(">f4")),
    "list": row(features=[1.0, -2.0, 0.5]),
    "nan-inf": row(features=SPECIAL),
    # a string whose entry no longer fits one-byte lengths, and a much longer one
    "long-uri": row(uri="gs://bucket/" + "d/" * 100 + "x.jpg"),
    "very-long-label": row(label="ü" * 20000),
}


@pytest.mark.parametrize("kwargs", CASES.values(), ids=CASES.keys())
def test_bytes_identical_to_protobuf_deterministic(kwargs):
    encoded = encode_example(**kwargs)
    assert isinstance(encoded, bytes)
    assert encoded == reference_encode(**kwargs)


@pytest.mark.parametrize("field", ["uri", "sha256", "label", "split", "backbone"])
def test_string_lengths_across_the_varint_boundaries(field):
    """Every length around where a size in the entry needs a second varint byte; with a
    two-byte character so that characters and bytes differ."""
    for n in [*range(100, 135), 16370, 16385]:
        for text in ("x" * n, "é" + "x" * (n - 2)):
            kwargs = row(8, **{field: text})
            assert encode_example(**kwargs) == reference_encode(**kwargs), (field, n, text[:2])


def test_negative_label_id_is_a_ten_byte_varint():
    encoded = encode_example(**row(4, label_id=-1))
    # entry{key "label_id", value (14 bytes): Feature{int64_list (12): Int64List{packed (10)}}}
    entry = b"\x0a\x08label_id\x12\x0e\x1a\x0c\x0a\x0a" + b"\xff" * 9 + b"\x01"
    assert b"\x0a" + bytes([len(entry)]) + entry in encoded


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _keys_in_wire_order(encoded: bytes) -> list[str]:
    assert encoded[0] == 0x0A  # Example.features
    size, i = _varint(encoded, 1)
    assert i + size == len(encoded)
    keys = []
    while i < len(encoded):
        assert encoded[i] == 0x0A  # Features.feature: one map entry
        size, i = _varint(encoded, i + 1)
        entry, i = encoded[i : i + size], i + size
        assert entry[0] == 0x0A  # the entry's key
        key_size, j = _varint(entry, 1)
        keys.append(entry[j : j + key_size].decode("utf-8"))
    return keys


def test_map_entries_in_protobufs_deterministic_order():
    """upb (protobuf's default backend) writes a key after the keys it is a prefix of:
    label_id before label, not sorted() order. The bytes-identity tests would catch a change;
    this one says what changed."""
    expected = ["augment_copy", "backbone", "features", "image/sha256", "image/uri",
                "label_id", "label", "split"]  # fmt: skip
    assert _keys_in_wire_order(reference_encode(**row())) == expected
    assert _keys_in_wire_order(encode_example(**row())) == expected


def test_reparses_and_reserializes_to_the_same_bytes():
    for name, kwargs in CASES.items():
        encoded = encode_example(**kwargs)
        example = tf.train.Example.FromString(encoded)
        assert example.SerializeToString(deterministic=True) == encoded, name


DECODED = "typical dim-1 dim-1280 unicode empty-strings label-id--1 label-id-2**40 augment-copy-3"
DECODED += " float64 non-contiguous nan-inf"


@pytest.mark.parametrize("name", DECODED.split())
def test_decodes_to_the_same_values_as_before(name):
    kwargs = CASES[name]
    dim = np.asarray(kwargs["features"]).size
    old = reference_example(**kwargs).SerializeToString()  # what encode_example wrote before
    new = decode_example(encode_example(**kwargs), dim)
    assert new.keys() == decode_example(old, dim).keys()
    for key, value in decode_example(old, dim).items():
        got, want = np.asarray(new[key]), np.asarray(value)
        assert (got.dtype, got.shape) == (want.dtype, want.shape), key
        assert got.tobytes() == want.tobytes(), key  # bytewise: NaN, -0.0

    assert new["image/uri"].decode("utf-8") == kwargs["uri"]
    assert new["image/sha256"].decode("utf-8") == kwargs["sha256"]
    assert new["label"].decode("utf-8") == kwargs["label"]
    assert new["split"].decode("utf-8") == kwargs["split"]
    assert new["backbone"].decode("utf-8") == kwargs["backbone"]
    assert new["label_id"] == kwargs["label_id"]
    assert new["augment_copy"] == kwargs["augment_copy"]
    expected = np.asarray(kwargs["features"], np.float32).ravel()
    assert new["features"].tobytes() == expected.astype("<f4").tobytes()


def test_nan_and_inf_survive_bit_for_bit():
    decoded = decode_example(encode_example(**row(features=SPECIAL)), SPECIAL.size)
    assert decoded["features"].astype("<f4").tobytes() == SPECIAL.astype("<f4").tobytes()


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("label_id", 2**63, ValueError),
        ("label_id", -(2**63) - 1, ValueError),
        ("augment_copy", 2**64, ValueError),
        ("label_id", 1.0, TypeError),  # 1.0 == 1: must not be served the cached entry of 1
        ("augment_copy", 0.0, TypeError),
        ("label_id", "3", TypeError),
    ],
)
def test_rejects_what_protobuf_rejects(field, value, error):
    if isinstance(value, float):
        encode_example(**row(4, **{field: int(value)}))  # the equal int, encoded (and cached)
    with pytest.raises(error):
        reference_encode(**row(4, **{field: value}))
    with pytest.raises(error):
        encode_example(**row(4, **{field: value}))
