"""The preprocessing contract: encoded image bytes -> backbone input, as one TensorFlow function.

The trainer, the Beam job and the exported SavedModel all call `Preprocessor`, so what a model
sees at serving time is, by construction, what it saw in training.

Contract (version PREPROCESSING_VERSION):
1. Sniff the format from the magic bytes: JPEG, PNG, GIF, BMP; anything else is refused.
2. Read width and height from the header and refuse images over `max_pixels` *before* decoding,
   so a decompression bomb is never expanded.
3. Decode to 8-bit RGB: grayscale is replicated, alpha is dropped (not composited), palette
   images (PNG, GIF, 8-bit BMP) are looked up, CMYK/YCCK JPEGs are converted, 16-bit PNG
   samples keep their high byte, an animated GIF gives its first frame.
4. Resize to the backbone's square input with bilinear interpolation and antialiasing
   (`tf.image.resize(method="bilinear", antialias=True)`), ignoring the aspect ratio.
5. Normalise as the backbone's own `preprocess_input` does (the registry names the mode; a test
   checks each mode against Keras' function). The arithmetic is written as multiply-and-add on
   purpose: graph optimisers rewrite `x / c` as `x * (1 / c)`, which changes the last bit of some
   values in a tf.function but not in eager mode, and zero skew means bit-identical inputs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import tensorflow as tf

from export.contract import DECODE_SCOPE
from export.model.backbones import BackboneConfig
from export.model.names import DEFAULT_MAX_PIXELS

PREPROCESSING_VERSION = "1"
RESIZE_METHOD = "bilinear"

# mode -> (description, function on float32 RGB in [0, 255])
NORMALIZATIONS = {
    "tf": ("scale to [-1, 1]", lambda x: x * (1.0 / 127.5) - 1.0),
    "caffe": (
        "RGB->BGR, subtract the ImageNet mean",
        lambda x: tf.reverse(x, axis=[-1]) - tf.constant([103.939, 116.779, 123.68]),
    ),
    "torch": (
        "scale to [0, 1], subtract the ImageNet mean, divide by its std",
        lambda x: (
            (x * (1.0 / 255.0) - tf.constant([0.485, 0.456, 0.406]))
            * tf.constant([1 / 0.229, 1 / 0.224, 1 / 0.225])
        ),
    ),
    "raw": ("none: pixels in [0, 255] (the model normalises inside)", lambda x: x),
    # EfficientNet-Lite's training normalisation (official MEAN_RGB 127, STDDEV_RGB 128); both
    # constants, 1/128 and 127/128, are exact in float32.
    "lite": ("subtract 127, divide by 128", lambda x: x * (1.0 / 128.0) - 127.0 / 128.0),
}

_UNKNOWN, _JPEG, _PNG, _GIF, _BMP = 0, 1, 2, 3, 4
_HEADER_BYTES = 64


def _u(header: tf.Tensor, start: int, size: int, big_endian: bool) -> tf.Tensor:
    """Unsigned integer of `size` bytes at `start` of a uint8 header tensor, as int64."""
    value = tf.constant(0, tf.int64)
    order = range(size) if big_endian else reversed(range(size))
    for i in order:
        value = value * 256 + tf.cast(header[start + i], tf.int64)
    return value


def _sniff(header: tf.Tensor) -> tf.Tensor:
    def starts(*magic: int) -> tf.Tensor:
        return tf.reduce_all(tf.equal(header[: len(magic)], tf.constant(magic, tf.uint8)))

    return tf.case(
        [
            (starts(0xFF, 0xD8, 0xFF), lambda: tf.constant(_JPEG)),
            (starts(0x89, 0x50, 0x4E, 0x47), lambda: tf.constant(_PNG)),
            (starts(0x47, 0x49, 0x46, 0x38), lambda: tf.constant(_GIF)),
            (starts(0x42, 0x4D), lambda: tf.constant(_BMP)),
        ],
        default=lambda: tf.constant(_UNKNOWN),
        exclusive=True,
    )


def _header_size(contents: tf.Tensor, header: tf.Tensor, fmt: tf.Tensor):
    """(width, height) from the file header alone."""

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(contents), tf.int64)
        return shape[1], shape[0]

    def png():
        return _u(header, 16, 4, True), _u(header, 20, 4, True)

    def gif():
        return _u(header, 6, 2, False), _u(header, 8, 2, False)

    def bmp():
        width = _u(header, 18, 4, False)
        height = _u(header, 22, 4, False)
        # A negative (two's complement) height marks a top-down bitmap.
        height = tf.where(height >= 2**31, 2**32 - height, height)
        return width, height

    def unknown():
        return tf.constant(0, tf.int64), tf.constant(0, tf.int64)

    return tf.switch_case(fmt, [unknown, jpeg, png, gif, bmp])


def _decode_palette_bmp(contents: tf.Tensor, header: tf.Tensor) -> tf.Tensor:
    """8-bit BMPs index a colour table that tf.io.decode_bmp ignores; look it up here."""
    indices = tf.io.decode_bmp(contents, channels=0)[..., 0]
    dib_size = _u(header, 14, 4, False)
    colours_used = _u(header, 46, 4, False)
    colours = tf.where(colours_used == 0, tf.constant(256, tf.int64), colours_used)
    table = tf.strings.substr(contents, 14 + dib_size, colours * 4)
    bgra = tf.reshape(tf.io.decode_raw(table, tf.uint8), [-1, 4])
    rgb = tf.reverse(bgra[:, :3], axis=[1])
    return tf.gather(rgb, tf.cast(indices, tf.int32))


def decode_image(contents: tf.Tensor, max_pixels: int = DEFAULT_MAX_PIXELS) -> tf.Tensor:
    """Scalar string -> uint8 [H, W, 3], refusing unknown formats and oversized images."""
    contents = tf.convert_to_tensor(contents, tf.string)
    padded = contents + tf.constant(b"\0" * _HEADER_BYTES)
    header = tf.io.decode_raw(tf.strings.substr(padded, 0, _HEADER_BYTES), tf.uint8)
    fmt = _sniff(header)
    known = tf.debugging.Assert(
        fmt != _UNKNOWN,
        ["not a decodable image: unknown format (expected JPEG, PNG, GIF or BMP)"],
    )
    with tf.control_dependencies([known]):
        width, height = _header_size(contents, header, fmt)
    pixels = width * height
    message = tf.strings.format(
        "image is {}x{} = {} pixels, over the limit of {} (max_pixels)",
        (width, height, pixels, max_pixels),
    )
    within_limit = tf.debugging.Assert(pixels <= max_pixels, [message])
    not_empty = tf.debugging.Assert(
        pixels > 0, ["not a decodable image: header declares zero width or height"]
    )
    bits_per_pixel = _u(header, 28, 2, False)
    is_bmp = tf.equal(fmt, _BMP)
    bmp_depth_ok = tf.debugging.Assert(
        tf.logical_or(tf.logical_not(is_bmp), bits_per_pixel >= 8),
        [tf.strings.format("BMP with {} bits per pixel is not supported", bits_per_pixel)],
    )

    def generic():
        return tf.io.decode_image(contents, channels=3, dtype=tf.uint8, expand_animations=False)

    def jpeg():
        # The accurate integer IDCT: the library default trades accuracy for speed.
        return tf.io.decode_jpeg(contents, channels=3, dct_method="INTEGER_ACCURATE")

    def bmp():
        return tf.cond(
            tf.equal(bits_per_pixel, 8), lambda: _decode_palette_bmp(contents, header), generic
        )

    with tf.control_dependencies([within_limit, not_empty, bmp_depth_ok]):
        image = tf.switch_case(fmt, [generic, jpeg, generic, generic, bmp])
    image.set_shape([None, None, 3])
    return image


@dataclass(frozen=True)
class Preprocessor:
    """The contract for one backbone: bytes -> normalised float32 [S, S, 3]."""

    backbone: BackboneConfig
    max_pixels: int = DEFAULT_MAX_PIXELS

    @classmethod
    def of(cls, flags) -> Preprocessor:
        """From a stage's flat config (the backbone fields and max_pixels), as BackboneConfig.of."""
        return cls(BackboneConfig.of(flags), flags.max_pixels)

    @property
    def image_size(self) -> int:
        return self.backbone.input_size

    @property
    def output_spec(self) -> tf.TensorSpec:
        return tf.TensorSpec([self.image_size, self.image_size, 3], tf.float32)

    def __call__(self, contents: tf.Tensor) -> tf.Tensor:
        image = decode_image(contents, self.max_pixels)
        size = self.image_size
        resized = tf.image.resize(
            tf.cast(image, tf.float32), [size, size], method=RESIZE_METHOD, antialias=True
        )
        normalised = NORMALIZATIONS[self.backbone.spec.normalization][1](resized)
        return tf.ensure_shape(tf.cast(normalised, tf.float32), [size, size, 3])

    def batch(self, contents: tf.Tensor) -> tf.Tensor:
        """[N] strings -> [N, S, S, 3]; the form used inside the exported graph, under the
        DECODE_SCOPE name scope so that a server can tell a refused image by the failing node."""
        with tf.name_scope(DECODE_SCOPE):
            return tf.map_fn(self, contents, fn_output_signature=self.output_spec)

    def describe(self) -> dict:
        spec = self.backbone.spec
        return {
            "version": PREPROCESSING_VERSION,
            "image_size": self.image_size,
            "resize": f"{RESIZE_METHOD}, antialias, aspect ratio not kept",
            "normalization": NORMALIZATIONS[spec.normalization][0],
            "max_pixels": self.max_pixels,
        }


# tf.debugging.Assert words its message differently in graph and in eager mode.
_ASSERTION = re.compile(
    r"assertion failed: \[(?P<msg>.*?)\]|Summarized data: b(?P<q>['\"])(?P<eager>.*?)(?P=q)", re.S
)


def error_reason(exc: BaseException) -> str:
    """A one-line reason from a TensorFlow decode error, without graph node noise."""
    text = getattr(exc, "message", None) or str(exc)
    match = _ASSERTION.search(text)
    if match:
        return (match.group("msg") or match.group("eager")).strip()
    text = re.sub(r"\s*\[\[\{\{node .*", "", text, flags=re.S)
    text = re.sub(r"\s*\[Op:\w+\].*", "", text, flags=re.S)
    text = re.sub(r"\{\{function_node [^}]*\}\}", "", text)
    lines = [
        line.strip()
        for line in text.splitlines()
        if line.strip()
        and not line.startswith("  ")
        and not line.startswith(("Graph execution error", "Detected at node"))
    ]
    return f"not a decodable image: {lines[-1] if lines else type(exc).__name__}"


class EagerPreprocessor:
    """Per-file preprocessing for Python loops: a traced Preprocessor plus readable errors."""

    def __init__(self, preprocessor: Preprocessor):
        self.preprocessor = preprocessor
        self._fn = tf.function(
            preprocessor.__call__, input_signature=[tf.TensorSpec([], tf.string)]
        )

    def __call__(self, contents: bytes):
        """(array [S, S, 3], None) on success, (None, reason) when the image is refused."""
        try:
            return self._fn(tf.constant(contents)).numpy(), None
        except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as exc:
            return None, error_reason(exc)
