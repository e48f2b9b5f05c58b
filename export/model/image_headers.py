"""What an image file says about itself before it is decoded, read inside the TensorFlow graph.

The preprocessing contract (export/model/preprocessing.py) uses this to refuse an oversized image
from its headers alone, so that a decompression bomb is never expanded: the format from the magic
bytes, width and height from each format's header, and for a GIF the first frame's descriptor and
the offset where its data ends (found by walking the file's blocks), so that only that frame
reaches giflib, which would read every frame into memory.
"""

from __future__ import annotations

import tensorflow as tf

UNKNOWN, JPEG, PNG, GIF, BMP = 0, 1, 2, 3, 4
HEADER_BYTES = 64
GIF_LOOKAHEAD = 1024  # sub-blocks of one length skipped per step of the walk
GIF_MAX_STEPS = 4096


def read_header(contents: tf.Tensor) -> tf.Tensor:
    """The first HEADER_BYTES bytes as uint8, zero-padded; never a copy of the whole file."""
    head = tf.strings.substr(contents, 0, HEADER_BYTES) + tf.constant(b"\0" * HEADER_BYTES)
    return tf.io.decode_raw(tf.strings.substr(head, 0, HEADER_BYTES), tf.uint8)


def uint_at(header: tf.Tensor, start: int, size: int, big_endian: bool) -> tf.Tensor:
    """Unsigned integer of `size` bytes at `start` of a uint8 header tensor, as int64."""
    value = tf.constant(0, tf.int64)
    order = range(size) if big_endian else reversed(range(size))
    for i in order:
        value = value * 256 + tf.cast(header[start + i], tf.int64)
    return value


def sniff(header: tf.Tensor) -> tf.Tensor:
    def starts(*magic: int) -> tf.Tensor:
        return tf.reduce_all(tf.equal(header[: len(magic)], tf.constant(magic, tf.uint8)))

    return tf.case(
        [
            (starts(0xFF, 0xD8, 0xFF), lambda: tf.constant(JPEG)),
            (starts(0x89, 0x50, 0x4E, 0x47), lambda: tf.constant(PNG)),
            (starts(0x47, 0x49, 0x46, 0x38), lambda: tf.constant(GIF)),
            (starts(0x42, 0x4D), lambda: tf.constant(BMP)),
        ],
        default=lambda: tf.constant(UNKNOWN),
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


def gif_first_frame(contents: tf.Tensor, header: tf.Tensor):
    """(width, height, end) of a GIF's first frame: the size its image descriptor declares (what
    TensorFlow decodes, whatever the logical screen says) and the offset just past its data,
    found by walking the file's blocks. A run of sub-blocks of one length is skipped in one step,
    so a usual file takes a handful; one that needs more than GIF_MAX_STEPS is refused. Without
    a frame, or when the file ends inside it, (0 or the frame's size, ..., the file's length):
    the decoder then reads the whole file and says what is wrong."""
    length = tf.cast(tf.strings.length(contents), tf.int64)
    flags = tf.cast(header[10], tf.int64)
    global_table = tf.where(
        flags >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), flags % 8), 0
    )
    ahead = tf.range(1, GIF_LOOKAHEAD + 1, dtype=tf.int64)
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
        maximum_iterations=GIF_MAX_STEPS,
    )
    walked = tf.debugging.Assert(
        tf.logical_or(tf.equal(phase, done), pos >= length),
        [f"not a decodable image: GIF structure needs more than {GIF_MAX_STEPS} steps to read"],
    )
    with tf.control_dependencies([walked]):
        return tf.identity(width), tf.identity(height), tf.identity(end)


# Called, not inlined: inlined, the walk's nodes would run (as a dead branch) for every image.
_gif_first_frame_call = tf.function(
    gif_first_frame,
    input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([HEADER_BYTES], tf.uint8)],
    autograph=False,
    experimental_attributes={"_noinline": True},
)


def header_size(contents: tf.Tensor, header: tf.Tensor, fmt: tf.Tensor):
    """(width, height, end) from the file's headers alone; `end` is for GIF only."""
    zero = tf.constant(0, tf.int64)

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(contents), tf.int64)
        return shape[1], shape[0], zero

    def png():
        return uint_at(header, 16, 4, True), uint_at(header, 20, 4, True), zero

    def gif():
        screen_width, screen_height = uint_at(header, 6, 2, False), uint_at(header, 8, 2, False)
        width, height, end = _gif_first_frame_call(contents, header)
        # The guard checks the larger of the logical screen and the first frame.
        frame_larger = width * height > screen_width * screen_height
        return (
            tf.where(frame_larger, width, screen_width),
            tf.where(frame_larger, height, screen_height),
            end,
        )

    def bmp():
        width = uint_at(header, 18, 4, False)
        height = uint_at(header, 22, 4, False)
        # A negative (two's complement) height marks a top-down bitmap.
        height = tf.where(height >= 2**31, 2**32 - height, height)
        return width, height, zero

    def unknown():
        return zero, zero, zero

    return tf.switch_case(fmt, [unknown, jpeg, png, gif, bmp])


def bmp_colour_table(contents: tf.Tensor, header: tf.Tensor) -> tf.Tensor:
    """8-bit BMPs index a colour table that tf.io.decode_bmp ignores: it, as uint8 [N, 3] RGB."""
    dib_size = uint_at(header, 14, 4, False)
    colours_used = uint_at(header, 46, 4, False)
    colours = tf.where(colours_used == 0, tf.constant(256, tf.int64), colours_used)
    table = tf.strings.substr(contents, 14 + dib_size, colours * 4)
    bgra = tf.reshape(tf.io.decode_raw(table, tf.uint8), [-1, 4])
    return tf.reverse(bgra[:, :3], axis=[1])
