"""The preprocessing contract: encoded image bytes -> backbone input, as one TensorFlow function.

The trainer, the Beam job and the exported SavedModel all call `Preprocessor`, so what a model
sees at serving time is, by construction, what it saw in training.

Contract (version PREPROCESSING_VERSION):
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
4. Resize to the backbone's square input with bilinear interpolation and antialiasing
   (`tf.image.resize(method="bilinear", antialias=True)`), ignoring the aspect ratio, on the
   uint8 pixels: memory per image is bounded by the decoded image at one byte a sample, never a
   float copy of it (an image whose width would make the kernel's float intermediate large is
   resized in bands, columns first, equal up to float rounding; see _resize).
5. Normalise as the backbone's own `preprocess_input` does (the registry names the mode; a test
   checks each mode against Keras' function). The arithmetic is written as multiply-and-add on
   purpose: graph optimisers rewrite `x / c` as `x * (1 / c)`, which changes the last bit of some
   values in a tf.function but not in eager mode, and zero skew means bit-identical inputs.

Version 1 decoded every JPEG at full size and cast the full-size image to float32 before resizing
(about 500 MB for a 36-megapixel PNG of a few kilobytes). Models exported with it keep it: the
preprocessing is in their graph. Bottlenecks record the version, and training refuses ones made
with another.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import tensorflow as tf

from export.contract import DECODE_SCOPE
from export.model.backbones import BackboneConfig

PREPROCESSING_VERSION = "2"
DEFAULT_MAX_PIXELS = 40_000_000
RESIZE_METHOD = "bilinear"
# Version 2: a JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's reduced IDCT), the largest
# that leaves its shorter side at least JPEG_SCALE_MARGIN times the input size.
JPEG_RATIOS = (1, 2, 4, 8)
JPEG_SCALE_MARGIN = 4
# The resize's float working set: TensorFlow's kernel (ScaleAndTranslate) resizes the rows first
# into a [S, W, 3] float32 intermediate. Where that would exceed this, the image is resized in
# bands of rows, columns first, which needs [S, H] weights instead (_resize_in_bands).
RESIZE_WORKSPACE_BYTES = 16 << 20
_BAND_BYTES = 2 << 20  # uint8 bytes of one band of rows
_GIF_LOOKAHEAD = 1024  # sub-blocks of one length skipped per step
_GIF_MAX_STEPS = 4096

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


def _bytes_at(contents: tf.Tensor, length: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
    """The bytes at int64 `positions` of a scalar string, as int64; -1 outside it."""
    inside = tf.logical_and(positions >= 0, positions < length)
    safe = tf.where(inside, positions, tf.zeros_like(positions))
    values = tf.io.decode_raw(tf.strings.substr(contents, safe, tf.ones_like(positions)), tf.uint8)[
        :, 0
    ]
    return tf.where(inside, tf.cast(values, tf.int64), -tf.ones_like(positions))


def _gif_first_frame(contents: tf.Tensor, header: tf.Tensor):
    """(width, height, end) of a GIF's first frame: the size its image descriptor declares (what
    TensorFlow decodes, whatever the logical screen says) and the offset just past its data,
    found by walking the file's blocks. A run of sub-blocks of one length is skipped in one step,
    so a usual file takes a handful; one that needs more than _GIF_MAX_STEPS is refused. Without
    a frame, or when the file ends inside it, (0 or the frame's size, ..., the file's length):
    the decoder then reads the whole file and says what is wrong."""
    length = tf.cast(tf.strings.length(contents), tf.int64)
    flags = tf.cast(header[10], tf.int64)
    global_table = tf.where(
        flags >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), flags % 8), 0
    )
    ahead = tf.range(1, _GIF_LOOKAHEAD + 1, dtype=tf.int64)
    zero = tf.constant(0, tf.int64)
    # phase: at a block's first byte, in an extension's sub-blocks, in the frame's, done
    at_block, in_extension, in_frame, done = 0, 1, 2, 3

    def step(pos, phase, width, height, end, steps):
        def block():
            descriptor = _bytes_at(contents, length, pos + tf.range(10, dtype=tf.int64))
            kind, packed = descriptor[0], descriptor[9]
            local_table = tf.where(
                packed >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), packed % 8), 0
            )
            is_extension = tf.equal(kind, 0x21)
            is_frame = tf.equal(kind, 0x2C)
            # An extension: introducer, label, sub-blocks. A frame: its 10-byte descriptor, a
            # local colour table, the LZW code size, sub-blocks. Anything else (the trailer,
            # garbage) ends the walk without a frame.
            return (
                tf.where(is_extension, pos + 2, pos + 11 + local_table),
                tf.where(is_extension, in_extension, tf.where(is_frame, in_frame, done)),
                tf.where(is_frame, tf.maximum(descriptor[5] + 256 * descriptor[6], 0), width),
                tf.where(is_frame, tf.maximum(descriptor[7] + 256 * descriptor[8], 0), height),
                end,
            )

        def sub_blocks():
            # A sub-block: a length byte, then that many bytes; a zero length ends the run.
            first = _bytes_at(contents, length, pos[None])[0]
            stride = first + 1
            following = _bytes_at(contents, length, pos + stride * ahead)
            same = tf.argmax(
                tf.concat([tf.not_equal(following, first), [True]], 0), output_type=tf.int64
            )
            ended = first <= 0  # the terminator, or the end of the file
            frame_ended = tf.logical_and(ended, tf.equal(phase, in_frame))
            return (
                tf.where(ended, pos + 1, pos + stride * (same + 1)),
                tf.where(ended, tf.where(frame_ended, done, at_block), phase),
                width,
                height,
                tf.where(frame_ended, tf.minimum(pos + 1, length), end),
            )

        pos, phase, width, height, end = tf.cond(tf.equal(phase, at_block), block, sub_blocks)
        return pos, phase, width, height, end, steps + 1

    pos, phase, width, height, end, _ = tf.while_loop(
        lambda pos, phase, *_: tf.logical_and(phase != done, pos < length),
        step,
        (13 + global_table, tf.constant(at_block), zero, zero, length, tf.constant(0)),
        maximum_iterations=_GIF_MAX_STEPS,
    )
    walked = tf.debugging.Assert(
        tf.logical_or(tf.equal(phase, done), pos >= length),
        [f"not a decodable image: GIF structure needs more than {_GIF_MAX_STEPS} steps to read"],
    )
    with tf.control_dependencies([walked]):
        return tf.identity(width), tf.identity(height), tf.identity(end)


def _header_size(contents: tf.Tensor, header: tf.Tensor, fmt: tf.Tensor):
    """(width, height, end) from the file's headers alone; `end` is for GIF only."""
    zero = tf.constant(0, tf.int64)

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(contents), tf.int64)
        return shape[1], shape[0], zero

    def png():
        return _u(header, 16, 4, True), _u(header, 20, 4, True), zero

    def gif():
        screen_width, screen_height = _u(header, 6, 2, False), _u(header, 8, 2, False)
        width, height, end = _gif_first_frame(contents, header)
        # The guard checks the larger of the logical screen and the first frame.
        frame_larger = width * height > screen_width * screen_height
        return (
            tf.where(frame_larger, width, screen_width),
            tf.where(frame_larger, height, screen_height),
            end,
        )

    def bmp():
        width = _u(header, 18, 4, False)
        height = _u(header, 22, 4, False)
        # A negative (two's complement) height marks a top-down bitmap.
        height = tf.where(height >= 2**31, 2**32 - height, height)
        return width, height, zero

    def unknown():
        return zero, zero, zero

    return tf.switch_case(fmt, [unknown, jpeg, png, gif, bmp])


def _bmp_colour_table(contents: tf.Tensor, header: tf.Tensor) -> tf.Tensor:
    """8-bit BMPs index a colour table that tf.io.decode_bmp ignores: it, as uint8 [N, 3] RGB."""
    dib_size = _u(header, 14, 4, False)
    colours_used = _u(header, 46, 4, False)
    colours = tf.where(colours_used == 0, tf.constant(256, tf.int64), colours_used)
    table = tf.strings.substr(contents, 14 + dib_size, colours * 4)
    bgra = tf.reshape(tf.io.decode_raw(table, tf.uint8), [-1, 4])
    return tf.reverse(bgra[:, :3], axis=[1])


def _jpeg_ratio_index(width: tf.Tensor, height: tf.Tensor, size: int) -> tf.Tensor:
    """Index into JPEG_RATIOS of the largest ratio that leaves the shorter side of the decoded
    image at least JPEG_SCALE_MARGIN times the model's input size."""
    shorter = tf.minimum(width, height)
    index = tf.constant(0)
    for i, ratio in enumerate(JPEG_RATIOS[1:], start=1):
        index = tf.where(shorter >= JPEG_SCALE_MARGIN * ratio * size, i, index)
    return index


def _header(contents: tf.Tensor) -> tf.Tensor:
    """The first _HEADER_BYTES bytes as uint8, zero-padded; never a copy of the whole file."""
    head = tf.strings.substr(contents, 0, _HEADER_BYTES) + tf.constant(b"\0" * _HEADER_BYTES)
    return tf.io.decode_raw(tf.strings.substr(head, 0, _HEADER_BYTES), tf.uint8)


def _decode(contents: tf.Tensor, max_pixels: int, size: int | None):
    """(pixels, palette): uint8 [H, W, 3] and an empty [0, 3] palette, or for an 8-bit BMP its
    uint8 [H, W, 1] colour indices and [N, 3] colour table (looked up by the caller, band by
    band, so that the image is never held at full size in more than one byte per pixel).
    With `size`, a large JPEG is decoded at a reduced DCT scale (_jpeg_ratio_index)."""
    contents = tf.convert_to_tensor(contents, tf.string)
    header = _header(contents)
    fmt = _sniff(header)
    known = tf.debugging.Assert(
        fmt != _UNKNOWN,
        ["not a decodable image: unknown format (expected JPEG, PNG, GIF or BMP)"],
    )
    with tf.control_dependencies([known]):
        width, height, end = _header_size(contents, header, fmt)
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
            return indices[..., :1], _bmp_colour_table(contents, header)

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


def _scale(images: tf.Tensor, size, scale) -> tf.Tensor:
    """tf.image.resize(method="bilinear", antialias=True)'s kernel, with the scale given: a scale
    of 1 along an axis is the identity there (the triangle kernel weighs the pixel 1 and its
    neighbours 0), bit for bit."""
    return tf.raw_ops.ScaleAndTranslate(
        images=images,
        size=tf.cast(tf.stack(size), tf.int32),
        scale=tf.stack(scale),
        translation=tf.zeros([2]),
        kernel_type="triangle",
        antialias=True,
    )


def _height_weights(height: tf.Tensor, size: int) -> tf.Tensor:
    """[S, H] float32: the weights the antialiased bilinear kernel gives input row h in output row
    y, computed as ScaleAndTranslate computes them (triangle kernel widened by the downscale,
    sampled at pixel centres, clamped to the image, each row normalised to sum 1)."""
    scale = tf.cast(size, tf.float32) / tf.cast(height, tf.float32)
    inv_scale = tf.cast(1.0 / tf.cast(scale, tf.float64), tf.float32)
    kernel_scale = tf.maximum(inv_scale, 1.0)
    centres = (tf.range(size, dtype=tf.float32) + 0.5) * inv_scale  # [S]
    rows = tf.range(height, dtype=tf.float32) + 0.5  # [H]
    # Divisions, not multiplications by a reciprocal: in a tf.function grappler rewrites the
    # latter into the former, which would differ in the last bit from eager mode and tf.data.
    distance = tf.abs((rows[None, :] - centres[:, None]) / kernel_scale)
    weights = tf.maximum(1.0 - distance, 0.0)
    return weights / tf.reduce_sum(weights, axis=1, keepdims=True)


def _resize_in_bands(rows_of, height, width, size: int) -> tf.Tensor:
    """Columns first, for wide images: each band of rows (`rows_of(start, stop)`,
    uint8 [b, W, 3]) is transposed and narrowed to S columns by the kernel, then added into the
    output through the height pass's weights (an [S, b] slice of _height_weights). The float
    working set is those weights (4*S*H bytes) and one band, not the kernel's 12*S*W; the result
    equals the one-call resize up to float rounding (the passes run in the other order)."""
    band = tf.maximum(tf.constant(1, tf.int64), _BAND_BYTES // (3 * width))
    count = tf.cast((height + band - 1) // band, tf.int32)
    narrow = tf.cast(size, tf.float32) / tf.cast(width, tf.float32)
    weights = _height_weights(height, size)

    def body(i, total):
        start = tf.cast(i, tf.int64) * band
        stop = tf.minimum(height, start + band)
        across = tf.transpose(rows_of(start, stop), [1, 0, 2])[None]  # [1, W, b, 3]
        narrowed = _scale(across, [size, stop - start], [narrow, 1.0])[0]  # [S, b, 3]
        rows = tf.reshape(tf.transpose(narrowed, [1, 0, 2]), [-1, size * 3])  # [b, S*3]
        return i + 1, total + tf.matmul(weights[:, start:stop], rows)

    _, total = tf.while_loop(
        lambda i, _: i < count,
        body,
        (tf.constant(0), tf.zeros([size, size * 3])),
        parallel_iterations=1,
    )
    return tf.reshape(total, [size, size, 3])


def _resize(image: tf.Tensor, table: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 pixels (or palette indices and their table) -> float32 [S, S, 3], never holding a
    float copy of the full-size image: the kernel takes uint8 and computes in float32 exactly as
    on a cast copy (`static_cast<float>` of each sample), so the result is the same to the bit.
    Where that kernel's [S, W, 3] intermediate would pass RESIZE_WORKSPACE_BYTES and the bands
    path's [S, H] weights are smaller (H < 3W), and always for a palette, in bands."""
    shape = tf.shape(image, out_type=tf.int64)
    height, width = shape[0], shape[1]
    rows_cost = 12 * size * width  # the one-call kernel's float intermediate, [S, W, 3]
    columns_cost = 4 * size * height  # _resize_in_bands' height weights, [S, H]
    paletted = tf.shape(table)[0] > 0

    def direct():
        return tf.image.resize(image, [size, size], method=RESIZE_METHOD, antialias=True)

    def rgb_bands():
        return _resize_in_bands(lambda start, stop: image[start:stop], height, width, size)

    def palette():
        # Looked up band by band: the full-size RGB image is never made.
        def rows_of(source):
            return lambda start, stop: tf.gather(table, tf.cast(source[start:stop, :, 0], tf.int32))

        def tall():
            # Transposed (one byte a pixel), so that the bands run across the long side.
            flipped = tf.transpose(image, [1, 0, 2])
            return tf.transpose(_resize_in_bands(rows_of(flipped), width, height, size), [1, 0, 2])

        return tf.cond(
            height > width, tall, lambda: _resize_in_bands(rows_of(image), height, width, size)
        )

    banded = tf.logical_and(rows_cost > RESIZE_WORKSPACE_BYTES, columns_cost < rows_cost)
    return tf.case([(paletted, palette), (banded, rgb_bands)], default=direct, exclusive=False)


@dataclass(frozen=True)
class Preprocessor:
    """The contract for one backbone: bytes -> normalised float32 [S, S, 3]."""

    backbone: BackboneConfig
    max_pixels: int = DEFAULT_MAX_PIXELS

    @property
    def image_size(self) -> int:
        return self.backbone.input_size

    @property
    def output_spec(self) -> tf.TensorSpec:
        return tf.TensorSpec([self.image_size, self.image_size, 3], tf.float32)

    def __call__(self, contents: tf.Tensor) -> tf.Tensor:
        size = self.image_size
        resized = _resize(*_decode(contents, self.max_pixels, size), size)
        normalised = NORMALIZATIONS[self.backbone.spec.normalization][1](resized)
        return tf.ensure_shape(tf.cast(normalised, tf.float32), [size, size, 3])

    def batch(self, contents: tf.Tensor) -> tf.Tensor:
        """[N] strings -> [N, S, S, 3]; the form used inside the exported graph, under the
        DECODE_SCOPE name scope so that a server can tell a refused image by the failing node.
        Mapped over indices: `contents[i]` shares the request's buffer, where mapping over the
        strings themselves would copy every image's bytes first."""
        contents = tf.convert_to_tensor(contents, tf.string)
        with tf.name_scope(DECODE_SCOPE):
            return tf.map_fn(
                lambda i: self(contents[i]),
                tf.range(tf.shape(contents)[0]),
                fn_output_signature=self.output_spec,
            )

    def describe(self) -> dict:
        spec = self.backbone.spec
        return {
            "version": PREPROCESSING_VERSION,
            "image_size": self.image_size,
            "resize": f"{RESIZE_METHOD}, antialias, aspect ratio not kept",
            "jpeg_scaling": (
                "JPEG decoded at 1/2, 1/4 or 1/8 scale, the largest that keeps its shorter side"
                f" >= {JPEG_SCALE_MARGIN} x image_size"
            ),
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
