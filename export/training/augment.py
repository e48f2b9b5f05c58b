"""Training-time augmentation: random geometric transforms of preprocessed (model-input) images.

The transform set is the Fashion-MNIST/InceptionV3 tutorial's ImageDataGenerator(rotation_range=40,
width_shift_range=0.2, height_shift_range=0.2, shear_range=0.2, zoom_range=0.2,
horizontal_flip=True, fill_mode="nearest"), as Keras 3 preprocessing layers.

It runs on images that the shared Preprocessor already decoded, resized and normalised, so there
is one preprocessing path. That is sound because the normalisations are per-channel affine maps
(or a channel permutation), and resampling (bilinear or nearest, with nearest/reflect/wrap fill)
only forms convex combinations of existing pixels: transform-then-normalise equals
normalise-then-transform up to float rounding. A constant fill would not commute (the fill value
would mean different colours per backbone), so it is refused.

Only the training split is ever augmented; validation and test see the Preprocessor's output.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import keras
import numpy as np

FILL_MODES = ("nearest", "reflect", "wrap")
_SEED_MODULUS = 2**31 - 1  # Keras seeds are ints; stay inside int32 for every backend


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms; a zero (False for flip) turns that transform off."""

    rotation: float = 40.0  # degrees, uniform in [-rotation, rotation]
    shift: float = 0.2  # fraction of height and of width, each uniform in [-shift, shift]
    shear: float = 0.2  # horizontal shear factor (x += s * y), uniform in [-shear, shear]
    zoom: float = 0.2  # height and width scaled independently by 1 + uniform[-zoom, zoom]
    flip: bool = True  # horizontal flip with probability 1/2
    fill_mode: str = "nearest"

    def __post_init__(self):
        for name, low, high in (
            ("rotation", 0.0, 180.0),
            ("shift", 0.0, 1.0),
            ("shear", 0.0, 1.0),
            ("zoom", 0.0, 1.0),
        ):
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"augment_{name} must be in [{low}, {high}]; received {value}")
        if self.zoom >= 1.0:
            raise ValueError(f"augment_zoom must be below 1 (1 would zoom to nothing); {self.zoom}")
        if self.fill_mode not in FILL_MODES:
            raise ValueError(
                f"fill_mode must be one of {', '.join(FILL_MODES)} (constant fill does not "
                f"commute with normalisation); received {self.fill_mode!r}"
            )

    @classmethod
    def of(cls, flags) -> AugmentConfig:
        """From a stage's flat config (fields augment_rotation, augment_shift, augment_shear,
        augment_zoom, augment_flip); a missing field keeps its default, so a stage may expose
        only some of them."""
        defaults = cls()
        return cls(
            **{
                name: getattr(flags, f"augment_{name}", getattr(defaults, name))
                for name in ("rotation", "shift", "shear", "zoom", "flip", "fill_mode")
            }
        )

    @classmethod
    def disabled(cls) -> AugmentConfig:
        return cls(rotation=0.0, shift=0.0, shear=0.0, zoom=0.0, flip=False)

    @property
    def enabled(self) -> bool:
        return bool(self.rotation or self.shift or self.shear or self.zoom or self.flip)

    def to_dict(self) -> dict:
        return asdict(self)


def build_augmentation(config: AugmentConfig, seed: int) -> keras.Sequential:
    """Batches [N, S, S, 3] -> same shape, each image transformed independently when called with
    training=True; the identity with training=False or when every transform is off.

    Each transform has its own seed (seed + a fixed offset) so their draws are not correlated and
    turning one off does not change the others; a freshly built pipeline called on the same input
    gives the same output.
    """
    layers = keras.layers
    fill = {"fill_mode": config.fill_mode}

    def seeded(offset: int) -> dict:
        return {**fill, "seed": (seed + offset) % _SEED_MODULUS}

    stages = []
    if config.rotation:
        stages.append(layers.RandomRotation(config.rotation / 360.0, **seeded(0), name="rotation"))
    if config.shift:
        stages.append(
            layers.RandomTranslation(config.shift, config.shift, **seeded(1), name="shift")
        )
    if config.shear:
        # ImageDataGenerator shears along x only, by an angle in degrees (0.2 there is 0.2
        # degrees, barely visible); we keep the intent instead: a shear factor up to 0.2.
        stages.append(layers.RandomShear(config.shear, 0.0, **seeded(2), name="shear"))
    if config.zoom:
        zoom = (-config.zoom, config.zoom)
        stages.append(layers.RandomZoom(zoom, zoom, **seeded(3), name="zoom"))
    if config.flip:
        stages.append(layers.RandomFlip("horizontal", seed=seeded(4)["seed"], name="flip"))
    if not stages:
        stages.append(layers.Identity(name="identity"))
    return keras.Sequential(stages, name="augmentation")


def copy_seed(sha256_hex: str, copy_index: int) -> int:
    """The seed of augmented copy `copy_index` of an image: a function of its content only, so a
    retried or re-run Beam bundle writes the same copies, and copies of one image differ."""
    digest = hashlib.sha256(f"{sha256_hex}:{copy_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % _SEED_MODULUS


def augment_images(images, config: AugmentConfig, seed: int) -> np.ndarray:
    """Augment preprocessed images ([S, S, 3] or [N, S, S, 3]) as training would; a pure function
    of (images, config, seed): the pipeline is built fresh for each call."""
    batch = np.asarray(images, dtype=np.float32)
    single = batch.ndim == 3
    if single:
        batch = batch[None]
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected [S, S, 3] or [N, S, S, 3] images; received {batch.shape}")
    if not config.enabled:
        out = batch.copy()
    else:
        out = np.asarray(build_augmentation(config, seed)(batch, training=True), np.float32)
    return out[0] if single else out


def augment_copies(image, config: AugmentConfig, sha256_hex: str, copies: int) -> np.ndarray:
    """`copies` augmented versions [K, S, S, 3] of one preprocessed image [S, S, 3]; copy k is
    augment_images(image, config, copy_seed(sha256_hex, k)), whatever K is."""
    return np.stack(
        [augment_images(image, config, copy_seed(sha256_hex, k)) for k in range(copies)]
    )
