"""Grad-CAM: which pixels made the classifier pick a class.

Gradients of the class score with respect to a conv feature map, averaged over space, weight the
map's channels; the ReLU of the weighted sum, upsampled to the backbone's input size, is the
heatmap (Selvaraju et al., 2017). The score is the pre-softmax logit: a saturated softmax
probability has almost no gradient, which would leave confident predictions unexplained.
"""

from __future__ import annotations

import difflib
import io
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import tensorflow as tf

from export.model.backbones import BackboneConfig
from export.model.preprocessing import (
    DEFAULT_MAX_PIXELS,
    EagerPreprocessor,
    Preprocessor,
    decode_image,
)
from export.training.runs import load_run_classifier

OVERLAY_ALPHA = 0.4
OVERLAY_MAX_SIDE = 1024  # overlays of huge photos are downscaled to this (peaks are not)


class ExplainError(ValueError):
    """A run dir, layer or class that cannot be explained; the message says which and why."""


def conv_layers(extractor: keras.Model) -> list[str]:
    """Layers with a [N, H, W, C] output: the ones Grad-CAM can use."""
    return [layer.name for layer in extractor.layers if len(layer.output.shape) == 4]


def default_layer(extractor: keras.Model) -> str:
    """The last spatial map before the feature pooling (e.g. `conv2` of `tiny`, `out_relu` of
    mobilenet_v2, or the --feature-layer cut): the finest map that still has the features'
    semantics."""
    names = conv_layers(extractor)
    if not names:
        raise ExplainError(f"{extractor.name} has no layer with a spatial [N, H, W, C] output")
    return names[-1]


def _logits_fn(head: keras.Model):
    """features -> pre-softmax scores, when the head ends in a softmax Dense (ours do)."""
    last = head.layers[-1]
    activation = getattr(last, "activation", None)
    if isinstance(last, keras.layers.Dense) and getattr(activation, "__name__", "") == "softmax":
        before = keras.Model(head.inputs, last.input)

        def logits(features):
            return tf.matmul(before(features, training=False), last.kernel) + last.bias

        return logits
    return lambda features: tf.math.log(head(features, training=False) + 1e-12)


class GradCam:
    """Grad-CAM over a frozen-feature classifier: extractor (images -> features) + head."""

    def __init__(self, extractor: keras.Model, head: keras.Model, layer: str | None = None):
        self.layer = layer or default_layer(extractor)
        candidates = conv_layers(extractor)
        if self.layer not in candidates:
            close = difflib.get_close_matches(self.layer, candidates, n=6, cutoff=0.4)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise ExplainError(
                f"{extractor.name} has no spatial layer {self.layer!r}{hint} "
                "(xfer-backbones --layers NAME lists layers and shapes)"
            )
        self._model = keras.Model(
            extractor.inputs, [extractor.get_layer(self.layer).output, extractor.output]
        )
        self._logits = _logits_fn(head)
        self.input_size = int(extractor.input.shape[1])

    def __call__(self, images, class_ids=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Normalised images [N, S, S, 3] -> (heatmaps [N, S, S] in [0, 1], probabilities [N, C],
        explained class ids [N]); class_ids None explains each image's predicted class."""
        images = tf.convert_to_tensor(np.asarray(images, np.float32))
        with tf.GradientTape() as tape:
            conv, features = self._model(images, training=False)
            logits = self._logits(features)
            if class_ids is None:
                ids = tf.argmax(logits, axis=1, output_type=tf.int32)
            else:
                ids = tf.constant(np.asarray(class_ids, np.int32))
            score = tf.reduce_sum(tf.gather(logits, ids, axis=1, batch_dims=1))
        grads = tape.gradient(score, conv)
        weights = tf.reduce_mean(grads, axis=(1, 2))
        cam = tf.nn.relu(tf.einsum("nhwk,nk->nhw", conv, weights))
        cam = tf.image.resize(cam[..., None], [self.input_size] * 2, method="bilinear")[..., 0]
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        cam = tf.math.divide_no_nan(cam, peak)
        return cam.numpy(), tf.nn.softmax(logits).numpy(), ids.numpy()


def peak_xy(heatmap: np.ndarray, width: int, height: int) -> tuple[int, int]:
    """The heatmap's maximum in original-image pixels; preprocessing resized the image to the
    square input ignoring its aspect ratio, so each axis maps back on its own."""
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    x = (col + 0.5) * width / heatmap.shape[1] - 0.5
    y = (row + 0.5) * height / heatmap.shape[0] - 0.5
    return int(np.clip(round(x), 0, width - 1)), int(np.clip(round(y), 0, height - 1))


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """uint8 image [H, W, 3] blended with the jet-coloured heatmap resized to it."""
    from matplotlib import colormaps

    height, width = image.shape[:2]
    resized = tf.image.resize(heatmap[..., None], [height, width], method="bilinear")[..., 0]
    colours = colormaps["jet"](np.clip(resized.numpy(), 0, 1))[..., :3] * 255.0
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colours
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def _downscaled(image: np.ndarray, max_side: int) -> np.ndarray:
    from PIL import Image

    if max(image.shape[:2]) <= max_side:
        return image
    picture = Image.fromarray(image)
    picture.thumbnail((max_side, max_side))
    return np.asarray(picture)


@dataclass
class Explanation:
    image: np.ndarray  # decoded original, uint8 [H, W, 3]
    heatmap: np.ndarray  # [S, S] at the backbone's input size, in [0, 1]
    probabilities: np.ndarray  # [C]
    class_id: int  # the class explained
    peak: tuple[int, int]  # (x, y) in original-image pixels

    @property
    def predicted_id(self) -> int:
        return int(np.argmax(self.probabilities))

    def overlay(self, max_side: int = OVERLAY_MAX_SIDE) -> np.ndarray:
        return overlay(_downscaled(self.image, max_side), self.heatmap)


class Explainer:
    """Encoded image bytes -> Explanation, through the same Preprocessor as training."""

    def __init__(self, gradcam: GradCam, preprocessor: Preprocessor, labels: list[str]):
        self.gradcam = gradcam
        self.preprocessor = preprocessor
        self.labels = labels
        self._preprocess = EagerPreprocessor(preprocessor)

    def class_id(self, label: str | None) -> int | None:
        if label is None:
            return None
        if label not in self.labels:
            raise ExplainError(f"--class {label!r} is not a label of this run: {self.labels}")
        return self.labels.index(label)

    def explain(self, contents: bytes, class_id: int | None = None) -> Explanation:
        """Raises ValueError with the preprocessing contract's reason for a refused image."""
        pixels, reason = self._preprocess(contents)
        if reason is not None:
            raise ValueError(reason)
        image = decode_image(tf.constant(contents), self.preprocessor.max_pixels).numpy()
        ids = None if class_id is None else [class_id]
        heatmaps, probabilities, explained = self.gradcam(pixels[None], ids)
        height, width = image.shape[:2]
        return Explanation(
            image,
            heatmaps[0],
            probabilities[0],
            int(explained[0]),
            peak_xy(heatmaps[0], width, height),
        )


@dataclass
class RunModel:
    """A training run's classifier rebuilt from its run dir."""

    config: dict
    backbone: BackboneConfig
    extractor: keras.Model
    head: keras.Model
    labels: list[str]

    @property
    def preprocessor(self) -> Preprocessor:
        return Preprocessor(self.backbone, self.config.get("max_pixels", DEFAULT_MAX_PIXELS))

    def explainer(self, layer: str | None = None) -> Explainer:
        return Explainer(GradCam(self.extractor, self.head, layer), self.preprocessor, self.labels)


def load_run(run_dir: str | Path) -> RunModel:
    """The run's final classifier: a fine-tuned run's backbone weights replace the configured
    ones (export.training.runs knows the run dir's layout)."""

    try:
        _, extractor, head, config, labels = load_run_classifier(run_dir)
    except FileNotFoundError as exc:
        raise ExplainError(str(exc)) from None
    return RunModel(config, BackboneConfig.of(SimpleNamespace(**config)), extractor, head, labels)
