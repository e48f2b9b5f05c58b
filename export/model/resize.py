"""uint8 image -> float32 [S, S, 3], in the contract's resize mode, without a full-size float copy.

TensorFlow's ScaleAndTranslate kernel (what `tf.image.resize(method="bilinear", antialias=True)`
runs) is registered for uint8 and converts each sample with `static_cast<float>` as it reads it:
given the uint8 image, its result is the float-copy result to the bit. It resizes the rows first,
into a [S, W, 3] float32 intermediate; where that would be large, the image is resized in bands of
rows, columns first (resize_in_bands), equal up to float rounding.

`squash` is `tf.image.resize` of the whole image to S x S. `center_crop` is the same kernel given a
scale (the shorter side to S + padding) and a translation (the centre to the centre): one
resampling in which pixels outside the crop's kernel support weigh nothing, with no cropped copy
made and no more float working set than squash's, the bands path included.
"""

from __future__ import annotations

import tensorflow as tf

from export.model.resize_mode import ResizeMode

RESIZE_METHOD = "bilinear"
# The kernels of ScaleAndTranslate that the two interpolations name (tf.image.resize's own).
KERNELS = {"bilinear": "triangle", "bicubic": "keyscubic"}
# The resize's float working set: where the kernel's [S, W, 3] float32 intermediate would exceed
# this (and the image is not over 3 times taller than wide), it is resized in bands, which hold
# one band at a time.
RESIZE_WORKSPACE_BYTES = 16 << 20
BAND_BYTES = 512 << 10  # uint8 bytes of one band of rows


def _scale(images: tf.Tensor, size, scale, translation=None, kernel="triangle") -> tf.Tensor:
    """tf.image.resize(method="bilinear", antialias=True)'s kernel, with the scale (and for a crop
    the translation and kernel) given: a scale of 1 and a translation of 0 along an axis is the
    identity there (either kernel weighs the pixel 1 and its neighbours 0), bit for bit."""
    return tf.raw_ops.ScaleAndTranslate(
        images=images,
        size=tf.cast(tf.stack(size), tf.int32),
        scale=tf.stack(scale),
        translation=tf.zeros([2]) if translation is None else tf.stack(translation),
        kernel_type=kernel,
        antialias=True,
    )


def _triangle(distance):
    return tf.maximum(1.0 - distance, 0.0)


def _keys_cubic(distance):
    """Keys' cubic with a = -0.5, as ScaleAndTranslate's `keyscubic` (and Pillow's bicubic)."""
    near = ((1.5 * distance - 2.5) * distance) * distance + 1.0
    far = ((-0.5 * distance + 2.5) * distance - 4.0) * distance + 2.0
    return tf.where(distance < 1.0, near, tf.where(distance < 2.0, far, 0.0))


_KERNEL_FUNCTIONS = {"triangle": _triangle, "keyscubic": _keys_cubic}


def height_weights(height: tf.Tensor, size: int, scale=None, translation=None, kernel="triangle"):
    """The height pass's weights, as ScaleAndTranslate computes them (the kernel widened by the
    downscale, sampled at pixel centres, clamped to the image), before each output row is
    normalised to sum 1: a function of (start, stop) giving the [S, stop - start] weights of
    those input rows, so that the [S, H] matrix is never held whole. Without `scale`, S / H."""
    if scale is None:
        scale = tf.cast(size, tf.float32) / tf.cast(height, tf.float32)
    inv_scale = tf.cast(1.0 / tf.cast(scale, tf.float64), tf.float32)
    kernel_scale = tf.maximum(inv_scale, 1.0)
    centres = (tf.range(size, dtype=tf.float32) + 0.5) * inv_scale  # [S]
    if translation is not None:
        centres = centres - inv_scale * translation
    weigh = _KERNEL_FUNCTIONS[kernel]

    def between(start, stop):
        rows = tf.cast(tf.range(start, stop), tf.float32) + 0.5  # [b]
        # A division, not a multiplication by the reciprocal: in a tf.function grappler rewrites
        # the latter into the former, which would differ in the last bit from eager mode.
        distance = tf.abs((rows[None, :] - centres[:, None]) / kernel_scale)
        return weigh(distance)

    return between


def crop_geometry(height: tf.Tensor, width: tf.Tensor, size: int, padding: int):
    """center_crop's (scale, translation along the height, along the width), float32, as
    ScaleAndTranslate takes them: the shorter side to size + padding, the image's centre to the
    output's. Computed in float64 from the integers, so that every caller gets the same bits."""
    shorter = tf.cast(tf.minimum(height, width), tf.float64)
    scale = tf.cast(size + padding, tf.float64) / shorter
    scale32 = tf.cast(scale, tf.float32)

    def centred(length):
        return tf.cast((size - tf.cast(length, tf.float64) * scale) / 2.0, tf.float32)

    return scale32, centred(height), centred(width)


def resize_in_bands(rows_of, height, width, size: int, crop=None) -> tf.Tensor:
    """Columns first, for wide images: each band of rows (`rows_of(start, stop)`,
    uint8 [b, W, 3]) is transposed and narrowed to S columns by the kernel, then added into the
    output through the height pass's weights for those rows; each output row is divided by the
    sum of its weights at the end. The float working set is one band, not the kernel's 12*S*W
    bytes; the result equals the one-call resize up to float rounding (the passes run in the
    other order). `crop`: (scale, translation of the rows, of the columns, kernel) of
    center_crop; None squashes (bilinear, S / H and S / W)."""
    band = tf.maximum(tf.constant(1, tf.int64), BAND_BYTES // (3 * width))
    count = tf.cast((height + band - 1) // band, tf.int32)
    if crop is None:
        narrow = tf.cast(size, tf.float32) / tf.cast(width, tf.float32)
        weights_of = height_weights(height, size)
        across_args = {}
    else:
        scale, down, along, kernel = crop
        narrow = scale
        weights_of = height_weights(height, size, scale, down, kernel)
        across_args = {"translation": [along, 0.0], "kernel": kernel}

    def body(i, total, norm):
        start = tf.cast(i, tf.int64) * band
        stop = tf.minimum(height, start + band)
        across = tf.transpose(rows_of(start, stop), [1, 0, 2])[None]  # [1, W, b, 3]
        narrowed = _scale(across, [size, stop - start], [narrow, 1.0], **across_args)[0]
        rows = tf.reshape(tf.transpose(narrowed, [1, 0, 2]), [-1, size * 3])  # [b, S*3]
        weights = weights_of(start, stop)  # [S, b]
        return i + 1, total + tf.matmul(weights, rows), norm + tf.reduce_sum(weights, axis=1)

    _, total, norm = tf.while_loop(
        lambda i, *_: i < count,
        body,
        (tf.constant(0), tf.zeros([size, size * 3]), tf.zeros([size])),
        parallel_iterations=1,
    )
    return tf.reshape(total / norm[:, None], [size, size, 3])


def resize_image(
    image: tf.Tensor, table: tf.Tensor, size: int, resize: ResizeMode | None = None
) -> tf.Tensor:
    """uint8 pixels (or palette indices and their table) -> float32 [S, S, 3] in the `resize`
    mode (default squash), never holding a float copy of the full-size image: the kernel takes
    uint8 and computes in float32 exactly as on a cast copy (`static_cast<float>` of each
    sample), so the result is the same to the bit. Where that kernel's [S, W, 3] intermediate
    would pass RESIZE_WORKSPACE_BYTES and H < 3W, and always for a palette, in bands (one loop
    for every case: the nodes of an untaken branch run as dead ones for every image, so the
    fewer the cheaper)."""
    resize = resize or ResizeMode()
    shape = tf.shape(image, out_type=tf.int64)
    height, width = shape[0], shape[1]
    rows_cost = 12 * size * width  # the one-call kernel's float intermediate, [S, W, 3]
    banded = tf.logical_and(rows_cost > RESIZE_WORKSPACE_BYTES, height < 3 * width)
    paletted = tf.shape(table)[0] > 0

    def in_bands():
        # A palette is looked up band by band: the full-size RGB image is never made. A tall one
        # is transposed first (one byte a pixel), so that the bands run across its long side.
        flip = tf.logical_and(paletted, height > width)
        source = tf.cond(flip, lambda: tf.transpose(image, [1, 0, 2]), lambda: image)
        rows, cols = tf.cond(flip, lambda: (width, height), lambda: (height, width))

        def rows_of(start, stop):
            band = source[start:stop]
            return tf.cond(
                paletted, lambda: tf.gather(table, tf.cast(band[:, :, 0], tf.int32)), lambda: band
            )

        crop = None
        if resize.is_crop:
            scale, down, along = crop_geometry(height, width, size, resize.crop_padding)
            down, along = tf.cond(flip, lambda: (along, down), lambda: (down, along))
            crop = (scale, down, along, KERNELS[resize.interpolation])
        resized = resize_in_bands(rows_of, rows, cols, size, crop)
        return tf.cond(flip, lambda: tf.transpose(resized, [1, 0, 2]), lambda: resized)

    def in_one_call():
        if not resize.is_crop:
            return tf.image.resize(image, [size, size], method=RESIZE_METHOD, antialias=True)
        scale, down, along = crop_geometry(height, width, size, resize.crop_padding)
        kernel = KERNELS[resize.interpolation]
        return _scale(image[None], [size, size], [scale, scale], [down, along], kernel)[0]

    return tf.cond(tf.logical_or(paletted, banded), in_bands, in_one_call)
