"""The pixel step of the preprocessing contract: encoded bytes -> uint8 [S, S, 3], pure TensorFlow.

Steps 1-4 of the contract (export/model/preprocessing.py adds step 5, the backbone's
normalisation). This module imports no model code (no backbone registry, no weights): besides
the trainer, the Beam jobs and the exported graph, `xfer-score --preprocess client` calls it on the
client (client/pixels.py, the one documented exception to "client/ imports nothing from
export/"), so that the pixels a client sends are the pixels the server would have made.

1. Sniff the format from the magic bytes: JPEG, PNG, GIF, BMP; anything else is refused.
2. Read width and height from the headers and refuse images over `max_pixels` *before* decoding,
   so a decompression bomb is never expanded. For a GIF that is the larger of the logical screen
   and the first frame's descriptor (TensorFlow decodes the frame's size), and only the first
   frame's bytes reach the decoder (giflib would read every frame into memory).
3. Decode to 8-bit RGB: grayscale is replicated, alpha is dropped (not composited), palette
   images (PNG, GIF, 8-bit BMP) are looked up, CMYK/YCCK JPEGs are converted, 16-bit PNG
   samples keep their high byte, an animated GIF gives its first frame. Since version 2, a JPEG
   whose shorter side is at least JPEG_SCALE_MARGIN x 2 x the input size is decoded at 1/2, 1/4
   or 1/8 scale (libjpeg's reduced IDCT): the largest that keeps the shorter side at least
   JPEG_SCALE_MARGIN x the input size.
4. Resize to the backbone's square input in the contract's resize mode (export/model/
   resize_mode.py): `squash`, bilinear with antialiasing (`tf.image.resize(method="bilinear",
   antialias=True)`), ignoring the aspect ratio; or `center_crop` (version 4), the shorter side
   scaled to S + padding and the central S x S kept, in one resampling. On the uint8 pixels:
   memory per image is bounded by the decoded image at one byte a sample, never a float copy of
   it (an image whose width would make the kernel's float intermediate large is resized in
   bands, columns first, equal up to float rounding; see export/model/resize.py).
   Since version 3 the result is rounded half to even (`tf.round`) and clipped to uint8: the
   model's input is then a function of 3 x S x S bytes, which a client can send exactly.
"""

from __future__ import annotations

import re

import tensorflow as tf

from export.model.image_headers import (
    BMP,
    UNKNOWN,
    bmp_colour_table,
    header_size,
    read_header,
    sniff,
    uint_at,
)
from export.model.names import DEFAULT_MAX_PIXELS
from export.model.resize import resize_image
from export.model.resize_mode import CROP_VERSION, SQUASH_VERSION, ResizeMode

# The newest contract version this code makes pixels for, and every one it can make: a squash
# contract is version 3's, a center_crop one version 4's (export/model/resize_mode.py).
PREPROCESSING_VERSION = CROP_VERSION
PIXEL_VERSIONS = (SQUASH_VERSION, CROP_VERSION)
# Version 2: a JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's reduced IDCT), the largest
# that leaves its shorter side at least JPEG_SCALE_MARGIN times the input size.
JPEG_RATIOS = (1, 2, 4, 8)
JPEG_SCALE_MARGIN = 4
ROUNDING = "rounded half to even, clipped to uint8 [0, 255]"


def _jpeg_ratio_index(width: tf.Tensor, height: tf.Tensor, size: int) -> tf.Tensor:
    """Index into JPEG_RATIOS of the largest ratio that leaves the shorter side of the decoded
    image at least JPEG_SCALE_MARGIN times the model's input size."""
    shorter = tf.minimum(width, height)
    index = tf.constant(0)
    for i, ratio in enumerate(JPEG_RATIOS[1:], start=1):
        index = tf.where(shorter >= JPEG_SCALE_MARGIN * ratio * size, i, index)
    return index


def _decode(contents: tf.Tensor, max_pixels: int, size: int | None):
    """(pixels, palette): uint8 [H, W, 3] and an empty [0, 3] palette, or for an 8-bit BMP its
    uint8 [H, W, 1] colour indices and [N, 3] colour table (looked up by the caller, band by
    band, so that the image is never held at full size in more than one byte per pixel).
    With `size`, a large JPEG is decoded at a reduced DCT scale (_jpeg_ratio_index)."""
    contents = tf.convert_to_tensor(contents, tf.string)
    header = read_header(contents)
    fmt = sniff(header)
    known = tf.debugging.Assert(
        fmt != UNKNOWN,
        ["not a decodable image: unknown format (expected JPEG, PNG, GIF or BMP)"],
    )
    with tf.control_dependencies([known]):
        width, height, end = header_size(contents, header, fmt)
    pixels = width * height
    message = tf.strings.format(
        "image is {}x{} = {} pixels, over the limit of {} (max_pixels)",
        (width, height, pixels, max_pixels),
    )
    within_limit = tf.debugging.Assert(pixels <= max_pixels, [message])
    not_empty = tf.debugging.Assert(
        pixels > 0, ["not a decodable image: header declares zero width or height"]
    )
    bits_per_pixel = uint_at(header, 28, 2, False)
    is_bmp = tf.equal(fmt, BMP)
    bmp_depth_ok = tf.debugging.Assert(
        tf.logical_or(tf.logical_not(is_bmp), bits_per_pixel >= 8),
        [tf.strings.format("BMP with {} bits per pixel is not supported", bits_per_pixel)],
    )
    no_palette = tf.zeros([0, 3], tf.uint8)

    def generic():
        return tf.io.decode_image(contents, channels=3, dtype=tf.uint8, expand_animations=False)

    def jpeg():
        def at(ratio):
            # The accurate integer IDCT: the library default trades accuracy for speed. At a
            # reduced scale libjpeg computes a smaller IDCT from the same coefficients.
            return lambda: tf.io.decode_jpeg(
                contents, channels=3, ratio=ratio, dct_method="INTEGER_ACCURATE"
            )

        if size is None:
            return at(1)(), no_palette
        index = _jpeg_ratio_index(width, height, size)
        return tf.switch_case(index, [at(r) for r in JPEG_RATIOS]), no_palette

    def gif():
        # Only the first frame's bytes (and a trailer) reach the decoder: giflib reads every
        # frame of a file into memory before TensorFlow looks at the first.
        first = tf.cond(
            end < tf.cast(tf.strings.length(contents), tf.int64),
            lambda: tf.strings.substr(contents, tf.constant(0, tf.int64), end) + b"\x3b",
            lambda: contents,
        )
        return (
            tf.io.decode_image(first, channels=3, dtype=tf.uint8, expand_animations=False),
            no_palette,
        )

    def bmp():
        def palette():
            indices = tf.io.decode_bmp(contents, channels=0)
            return indices[..., :1], bmp_colour_table(contents, header)

        return tf.cond(tf.equal(bits_per_pixel, 8), palette, lambda: (generic(), no_palette))

    with tf.control_dependencies([within_limit, not_empty, bmp_depth_ok]):
        image, table = tf.switch_case(
            fmt,
            [lambda: (generic(), no_palette), jpeg, lambda: (generic(), no_palette), gif, bmp],
        )
    image.set_shape([None, None, None])
    return image, table


def decode_image(contents: tf.Tensor, max_pixels: int = DEFAULT_MAX_PIXELS) -> tf.Tensor:
    """Scalar string -> uint8 [H, W, 3] at full size, refusing unknown formats and oversized
    images (for display; the model's input is `Preprocessor`'s)."""
    image, table = _decode(contents, max_pixels, size=None)
    image = tf.cond(
        tf.shape(table)[0] > 0,
        lambda: tf.gather(table, tf.cast(image[..., 0], tf.int32)),
        lambda: image,
    )
    image.set_shape([None, None, 3])
    return image


def image_pixels(
    contents: tf.Tensor,
    size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    resize: ResizeMode | None = None,
) -> tf.Tensor:
    """Scalar string -> uint8 [size, size, 3]: steps 1-4 of the contract (this module's
    docstring), in the `resize` mode (default squash). Every path that makes a model input calls
    this function, the client included."""
    resized = resize_image(*_decode(contents, max_pixels, size), size, resize)
    rounded = tf.clip_by_value(tf.round(resized), 0.0, 255.0)
    return tf.ensure_shape(tf.cast(rounded, tf.uint8), [size, size, 3])


def contract_resize(fields: dict) -> ResizeMode:
    """The resize mode of a served contract (serving_pixels' `preprocessing` output, parsed);
    ValueError saying why when this code cannot make its pixels: a version it does not know, or
    a mode that version does not have."""
    version = str(fields.get("version"))
    if version not in PIXEL_VERSIONS:
        raise ValueError(f"it makes versions {' and '.join(PIXEL_VERSIONS)}")
    resize = ResizeMode.from_contract(fields)
    if resize.version != version:
        raise ValueError(f"resize {resize} is version {resize.version}")
    return resize


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
    text = re.sub(r"\s*\[\[\{\{(?:function_)?node .*", "", text, flags=re.S)
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


class EagerPixels:
    """Per-file pixels for Python loops (the client, the Beam workers, the warmup file): a traced
    `image_pixels` plus readable errors."""

    def __init__(
        self, size: int, max_pixels: int = DEFAULT_MAX_PIXELS, resize: ResizeMode | None = None
    ):
        self.size = size
        self.max_pixels = max_pixels
        self.resize = resize or ResizeMode()
        self._fn = tf.function(
            lambda contents: image_pixels(contents, size, max_pixels, self.resize),
            input_signature=[tf.TensorSpec([], tf.string)],
        )

    def __call__(self, contents: bytes):
        """(uint8 array [S, S, 3], None) on success, (None, reason) when the image is refused."""
        try:
            return self._fn(tf.constant(contents)).numpy(), None
        except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as exc:
            return None, error_reason(exc)
