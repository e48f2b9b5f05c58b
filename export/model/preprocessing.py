"""The preprocessing contract: encoded image bytes -> backbone input, as one TensorFlow function.

The trainer, the Beam job and the exported SavedModel all call `Preprocessor`, so what a model
sees at serving time is, by construction, what it saw in training.

Contract (version 3 for the squash resize, 4 for center_crop), in two steps that can be called
apart:
1-4. `image_pixels` (export/model/pixels.py): bytes -> uint8 [S, S, 3]: format sniffing, the
   pixel limit before decoding, decoding to RGB (large JPEGs at a reduced DCT scale), the resize
   in the backbone config's mode (squash or center_crop, export/model/resize_mode.py), rounded to
   uint8 (since version 3). Pure TensorFlow, so that a client can make the same pixels
   (`xfer-score --preprocess client`) and send them to the exported model's `serving_pixels`
   signature.
5. `normalise`: uint8 -> float32, as the backbone's own `preprocess_input` does (the registry
   names the mode; a test checks each mode against Keras' function). The arithmetic is written
   as multiply-and-add on purpose: graph optimisers rewrite `x / c` as `x * (1 / c)`, which
   changes the last bit of some values in a tf.function but not in eager mode, and zero skew
   means bit-identical inputs.

Version 1 decoded every JPEG at full size and cast the full-size image to float32 before resizing
(about 500 MB for a 36-megapixel PNG of a few kilobytes); version 2 fed the resize's fractional
output to the network. Models exported with them keep them: the preprocessing is in their graph.
Bottlenecks record the version and the resize mode, and training refuses ones made with another.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from export.contract import DECODE_SCOPE
from export.model.backbones import BackboneConfig
from export.model.names import DEFAULT_MAX_PIXELS
from export.model.pixels import (
    JPEG_RATIOS,
    JPEG_SCALE_MARGIN,
    PREPROCESSING_VERSION,
    ROUNDING,
    decode_image,
    error_reason,
    image_pixels,
)
from export.model.resize_mode import ResizeMode

# Names of the contract that callers import from here (the pixel step's live in pixels.py).
__all__ = [
    "DEFAULT_MAX_PIXELS",
    "JPEG_RATIOS",
    "JPEG_SCALE_MARGIN",
    "NORMALIZATIONS",
    "PREPROCESSING_VERSION",
    "EagerPreprocessor",
    "Preprocessor",
    "decode_image",
    "error_reason",
]

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

    @property
    def resize(self) -> ResizeMode:
        return self.backbone.resize

    def pixels(self, contents: tf.Tensor) -> tf.Tensor:
        """Scalar string -> uint8 [S, S, 3]: the contract's steps 1-4 (export/model/pixels.py)."""
        return image_pixels(contents, self.image_size, self.max_pixels, self.resize)

    def normalise(self, pixels: tf.Tensor) -> tf.Tensor:
        """uint8 [..., S, S, 3] -> float32: step 5, element by element, so one image or a batch
        gives the same values."""
        normalised = NORMALIZATIONS[self.backbone.spec.normalization][1](
            tf.cast(pixels, tf.float32)
        )
        return tf.cast(normalised, tf.float32)

    def __call__(self, contents: tf.Tensor) -> tf.Tensor:
        size = self.image_size
        return tf.ensure_shape(self.normalise(self.pixels(contents)), [size, size, 3])

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
            "version": self.resize.version,
            "image_size": self.image_size,
            "resize": self.resize.describe(),
            "resize_mode": self.resize.to_dict(),
            "jpeg_scaling": (
                "JPEG decoded at 1/2, 1/4 or 1/8 scale, the largest that keeps its shorter side"
                f" >= {JPEG_SCALE_MARGIN} x image_size"
            ),
            "rounding": ROUNDING,
            "normalization": NORMALIZATIONS[spec.normalization][0],
            "max_pixels": self.max_pixels,
        }


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
