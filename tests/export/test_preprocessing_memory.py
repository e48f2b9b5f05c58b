"""Memory per image is bounded by the output, not the input (issue 14, point 2).

Deterministic properties only: peak RSS figures come from bench/memory_bench.py, never a test.
"""

import dataclasses
import io

import numpy as np
import pytest
import tensorflow as tf
from imagegen import encode
from PIL import Image

from export.model import image_headers, resize
from export.model.backbones import BackboneConfig
from export.model.preprocessing import (
    NORMALIZATIONS,
    PREPROCESSING_VERSION,
    EagerPreprocessor,
    Preprocessor,
    decode_image,
)
from export.model.resize_mode import ResizeMode

RNG = np.random.default_rng(14)
TINY = BackboneConfig("tiny", weights="none")  # 32x32 input, "tf" normalisation


def noise(width: int, height: int) -> Image.Image:
    return Image.fromarray(RNG.integers(0, 256, (height, width, 3), dtype=np.uint8))


def one_call_resize(pixels: np.ndarray, size: int = 32) -> np.ndarray:
    """Version 1's arithmetic (a float32 copy of the full image, resized in one call), rounded
    to uint8 as version 3 rounds."""
    resized = tf.image.resize(tf.cast(pixels, tf.float32), [size, size], antialias=True)
    return NORMALIZATIONS["tf"][1](tf.clip_by_value(tf.round(resized), 0.0, 255.0)).numpy()


GREY_LEVEL = 2 / 255  # one step of a uint8 sample, in the "tf" normalisation's units


def assert_equal_up_to_rounding(out: np.ndarray, expected: np.ndarray) -> None:
    """Two resizes equal up to float rounding give the same uint8 pixels, except where a value
    lies within that rounding of a half grey level: there, one grey level apart."""
    np.testing.assert_allclose(out, expected, atol=GREY_LEVEL + 1e-6)
    assert np.mean(out == expected) > 0.99


def graph_functions(fn, signature) -> list[list]:
    """The nodes of a traced function and of each of its branches and loop bodies, by graph."""
    graph_def = tf.function(fn, input_signature=signature).get_concrete_function().graph
    graph_def = graph_def.as_graph_def()
    return [list(graph_def.node)] + [list(f.node_def) for f in graph_def.library.function]


def graph_nodes(fn, signature) -> list:
    """Every node of a traced function, including those of its branches and loop bodies."""
    return [n for nodes in graph_functions(fn, signature) for n in nodes]


def _producer(by_name: dict, node):
    return by_name.get(node.input[0].split(":")[0].lstrip("^"))


@pytest.mark.parametrize("mode", ["squash", "center_crop"])
def test_no_float_copy_of_the_decoded_image_in_the_graph(mode):
    # Version 1 cast the decoded uint8 image to float32 before resizing: ~500 MB for a 36 MP PNG
    # of a few kilobytes. The resize kernel takes the uint8 image itself; the one uint8 -> float
    # cast is the normalisation's, of the [S, S, 3] pixels the resize was rounded to. The crop
    # is the same kernel's scale and translation: no cropped copy, no float one.
    config = dataclasses.replace(TINY, resize=ResizeMode(mode))
    functions = graph_functions(Preprocessor(config).batch, [tf.TensorSpec([None], tf.string)])
    casts = []
    for nodes in functions:
        by_name = {n.name: n for n in nodes}
        for n in nodes:
            if not (
                n.op == "Cast"
                and n.attr["SrcT"].type == tf.uint8.as_datatype_enum
                and n.attr["DstT"].type
                in (tf.float32.as_datatype_enum, tf.float64.as_datatype_enum)
            ):
                continue
            source = _producer(by_name, n)
            if source is not None and source.op == "EnsureShape":
                source = _producer(by_name, source)
            rounded = (
                source is not None
                and source.op == "Cast"
                and source.attr["SrcT"].type == tf.float32.as_datatype_enum
                and source.attr["DstT"].type == tf.uint8.as_datatype_enum
            )
            casts.append((n.name, rounded))
    assert casts and all(rounded for _, rounded in casts), casts
    nodes = [n for nodes in functions for n in nodes]
    resize_inputs = {
        tf.dtypes.as_dtype(n.attr["T"].type).name for n in nodes if n.op == "ScaleAndTranslate"
    }
    assert "uint8" in resize_inputs
    # The batch is mapped over indices: unstacking the strings would copy every image's bytes.
    string_lists = [
        n.name
        for n in nodes
        if n.op in ("TensorListFromTensor", "TensorArrayScatterV3")
        and tf.string.as_datatype_enum in (n.attr["element_dtype"].type, n.attr["T"].type)
    ]
    assert string_lists == []


def test_uint8_resize_is_bit_identical_to_version_1():
    image = noise(97, 61)
    out = Preprocessor(TINY)(tf.constant(encode(image, "PNG"))).numpy()
    np.testing.assert_array_equal(out, one_call_resize(np.asarray(image)))


@pytest.mark.parametrize("width, height", [(70_000, 3), (400, 60)])
def test_wide_images_are_resized_in_bands_equal_up_to_rounding(width, height, monkeypatch):
    # 70,000 x 3 at input size 32: the one-call kernel's [32, 70000, 3] float intermediate is over
    # RESIZE_WORKSPACE_BYTES, so the bands path runs as it is. 400 x 60: the same path, forced.
    if width < 1000:
        monkeypatch.setattr(resize, "RESIZE_WORKSPACE_BYTES", 1000)
    image = noise(width, height)
    out = Preprocessor(TINY)(tf.constant(encode(image, "PNG"))).numpy()
    # The passes run in the other order: equal up to float rounding before the rounding to uint8.
    assert_equal_up_to_rounding(out, one_call_resize(np.asarray(image)))


@pytest.mark.parametrize("width, height", [(90, 40), (40, 90), (64, 64)])
def test_palette_bmp_is_looked_up_band_by_band(width, height):
    # An 8-bit BMP is decoded to its indices (one byte a pixel) and looked up band by band:
    # the model input equals the same picture's 24-bit BMP's.
    picture = noise(width, height).convert("P")
    rgb = picture.convert("RGB")
    pre = EagerPreprocessor(Preprocessor(TINY))
    paletted, reason = pre(encode(picture, "BMP"))
    assert reason is None
    assert_equal_up_to_rounding(paletted, pre(encode(rgb, "BMP"))[0])
    np.testing.assert_array_equal(decode_image(encode(picture, "BMP")).numpy(), np.asarray(rgb))


def _gif_frames(data: bytes) -> list[tuple[int, int]]:
    """(offset of its image descriptor, offset just past its data) of every frame of a GIF."""
    flags = data[10]
    pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    found = []
    while data[pos] in (0x21, 0x2C):
        start = pos
        if data[pos] == 0x2C:
            packed = data[pos + 9]
            pos += 11 + (3 * 2 ** ((packed & 7) + 1) if packed & 0x80 else 0)
        else:
            pos += 2
        while data[pos]:
            pos += data[pos] + 1
        pos += 1
        if data[start] == 0x2C:
            found.append((start, pos))
    return found


def _animated_gif(size=(64, 48), colours=("red", "blue", "green"), **kwargs) -> bytes:
    frames = [Image.new("RGB", size, c).convert("P") for c in colours]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, **kwargs)
    return buf.getvalue()


def test_gif_frame_larger_than_its_screen_is_checked_against_the_limit():
    # TensorFlow decodes a GIF's first frame at the size its descriptor declares; version 1
    # checked only the logical screen, so a 107 KB GIF with a 16x16 screen and a 12000x12000
    # frame expanded to 2 GB.
    data = bytearray(encode(Image.new("P", (200, 150), 0), "GIF"))
    data[6:10] = (16).to_bytes(2, "little") + (16).to_bytes(2, "little")
    small = EagerPreprocessor(Preprocessor(TINY, max_pixels=10_000))
    assert small(bytes(data))[1] == (
        "image is 200x150 = 30000 pixels, over the limit of 10000 (max_pixels)"
    )
    assert decode_image(bytes(data)).shape == (150, 200, 3)


def test_only_the_first_gif_frame_reaches_the_decoder():
    # giflib reads every frame into memory before TensorFlow takes the first: an animated GIF
    # cost its frame count times its size (bench/memory_bench.py). The block walk finds where
    # the first frame's data ends, and only the bytes up to there (and a trailer) are decoded.
    data = _animated_gif(comment=b"a comment", interlace=True)
    (first, end), second = _gif_frames(data)[:2]
    contents = tf.constant(data)
    header = image_headers.read_header(contents)
    width, height, found = image_headers.gif_first_frame(contents, header)
    assert (int(width), int(height), int(found)) == (64, 48, end)
    assert end < second[0]
    decoded = decode_image(data).numpy()
    np.testing.assert_array_equal(decoded, decode_image(data[:end] + b"\x3b").numpy())
    assert tuple(decoded[10, 10]) == (255, 0, 0)


def test_gif_whose_blocks_take_too_many_steps_is_refused():
    # The block walk skips a run of equal-length sub-blocks in one step; data cut into
    # alternating 1- and 2-byte sub-blocks would take one step each, and is refused.
    data = encode(noise(120, 100).convert("P"), "GIF")
    start = _gif_frames(data)[0][0]
    packed = data[start + 9]
    pos = start + 11 + (3 * 2 ** ((packed & 7) + 1) if packed & 0x80 else 0)
    payload, end = bytearray(), pos
    while data[end]:
        payload += data[end + 1 : end + 1 + data[end]]
        end += data[end] + 1
    chunked, i, n = bytearray(data[:pos]), 0, 0
    while i < len(payload):
        size = min(1 + n % 2, len(payload) - i)
        chunked += bytes([size]) + payload[i : i + size]
        i, n = i + size, n + 1
    chunked += data[end:]
    assert n > image_headers.GIF_MAX_STEPS
    reason = EagerPreprocessor(Preprocessor(TINY))(bytes(chunked))[1]
    assert reason == (
        f"not a decodable image: GIF structure needs more than {image_headers.GIF_MAX_STEPS}"
        " steps to read"
    )


@pytest.mark.parametrize("width, height, ratio", [(600, 520, 4), (500, 300, 2), (250, 250, 1)])
def test_large_jpeg_is_decoded_at_a_reduced_dct_scale(width, height, ratio):
    # Input size 32: the shorter side must stay >= 4 x 32 = 128 after scaling.
    data = encode(noise(width, height), "JPEG", quality=90)
    decoded = tf.io.decode_jpeg(data, channels=3, ratio=ratio, dct_method="INTEGER_ACCURATE")
    out = Preprocessor(TINY)(tf.constant(data)).numpy()
    np.testing.assert_array_equal(out, one_call_resize(decoded.numpy()))
    # decode_image (the reports' and Grad-CAM's picture) stays at full size.
    assert decode_image(data).shape == (height, width, 3)


def test_the_contract_records_its_version_and_jpeg_scaling():
    # Squash is version 3's contract to the letter (export/model/resize_mode.py): it says "3".
    described = Preprocessor(TINY).describe()
    assert described["version"] == "3" and PREPROCESSING_VERSION == "4"
    assert described["resize_mode"] == {"mode": "squash"}
    assert described["rounding"] == "rounded half to even, clipped to uint8 [0, 255]"
    assert described["jpeg_scaling"] == (
        "JPEG decoded at 1/2, 1/4 or 1/8 scale, the largest that keeps its shorter side >= 4 x"
        " image_size"
    )
