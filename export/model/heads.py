"""Classifier heads trained on frozen backbone features."""

from __future__ import annotations

import keras
import numpy as np

from export.model.names import HEADS, OPTIMIZERS

# Standardising divides by each feature's training standard deviation. A feature that is (nearly)
# constant in training, e.g. a channel that never fires on this data (181 of EfficientNet-Lite0's
# 1,280 on the digits), would be multiplied by up to 1/sqrt(1e-7): the first image or fine-tuning
# step that wakes it sends the logits to 1e5 and the loss to 1e14 (measured). Variances are
# floored at this fraction of their mean over features (digits test accuracy: 95.9% without,
# 96.5% with).
VARIANCE_FLOOR = 0.1


def floor_variance(variance, fraction: float = VARIANCE_FLOOR) -> np.ndarray:
    variance = np.asarray(variance, dtype=np.float64)
    return np.maximum(variance, fraction * variance.mean()).astype(np.float32)


def build_head(
    feature_dim: int,
    num_classes: int,
    kind: str = "softmax",
    *,
    hidden_units: int = 256,
    dropout: float = 0.2,
    l2: float = 0.0,
    feature_mean=None,
    feature_variance=None,
) -> keras.Model:
    """`softmax`: the Inception retraining tutorial's single layer.

    `mlp`: the ResNet50 tutorial's Dropout -> GlobalAveragePooling -> Dense(relu) -> BatchNorm ->
    softmax; the pooling already happened in the feature extractor (so that features can be
    cached as vectors), the rest is here.

    Both start by standardising features with the training set's mean and variance (floored:
    VARIANCE_FLOOR), so one learning rate suits backbones whose features differ in scale by
    orders of magnitude.
    """
    if kind not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}; received {kind!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1); received {dropout}")
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0; received {l2}")
    regularizer = keras.regularizers.L2(l2) if l2 else None
    inputs = keras.Input((feature_dim,), name="features")
    x = inputs
    if feature_mean is not None:
        x = keras.layers.Normalization(
            mean=feature_mean, variance=floor_variance(feature_variance), name="standardize"
        )(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x) if dropout else x
    if kind == "mlp":
        x = keras.layers.Dense(
            hidden_units, activation="relu", kernel_regularizer=regularizer, name="hidden"
        )(x)
        x = keras.layers.BatchNormalization(name="hidden_bn")(x)
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", kernel_regularizer=regularizer, name="scores"
    )(x)
    return keras.Model(inputs, outputs, name=f"{kind}_head")


def build_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; received {name!r}")


def build_classifier(extractor: keras.Model, head: keras.Model) -> keras.Model:
    """Normalised images -> class scores: the model that gets exported."""
    return keras.Model(extractor.input, head(extractor.output), name="classifier")
