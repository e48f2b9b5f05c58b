from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf
from testconfig import TINY

from export.data.dataset import TEST, TRAIN, VALIDATION
from export.model.backbones import BackboneConfig
from export.model.preprocessing import NORMALIZATIONS, EagerPreprocessor, Preprocessor
from export.training.augment import (
    AugmentConfig,
    augment_copies,
    augment_images,
    build_augmentation,
    copy_seed,
)
from export.training.config import TrainConfig


def pictures(n=6, size=32, seed=0) -> np.ndarray:
    """Normalised [-1, 1] images with structure (gradients and a bright square), so every
    geometric transform visibly moves pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3), np.float32)
    for i in range(n):
        image = np.stack([xx, yy, xx * yy], axis=-1) * 2 - 1
        top, left = rng.integers(2, size // 2, 2)
        image[top : top + size // 3, left : left + size // 4] = 1.0
        out[i] = image
    return out


def only(name: str, value) -> AugmentConfig:
    fields = {"rotation": 0.0, "shift": 0.0, "shear": 0.0, "zoom": 0.0, "flip": False}
    return AugmentConfig(**{**fields, name: value})


def test_copy_seed_is_a_function_of_content_and_copy_index():
    sha = "ab" * 32
    assert copy_seed(sha, 0) == copy_seed(sha, 0)
    seeds = {copy_seed(sha, k) for k in range(10)} | {copy_seed("cd" * 32, 0)}
    assert len(seeds) == 11
    assert all(0 <= s < 2**31 for s in seeds)


def test_augment_images_is_deterministic_given_the_seed_and_changes_images():
    images = pictures()
    config = AugmentConfig()
    first = augment_images(images, config, seed=copy_seed("ab" * 32, 0))
    again = augment_images(tf.constant(images), config, seed=copy_seed("ab" * 32, 0))
    other = augment_images(images, config, seed=copy_seed("ab" * 32, 1))
    assert first.shape == images.shape and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    for original, augmented in zip(images, first):
        assert np.abs(augmented - original).mean() > 0.01
    # Nearest fill and bilinear resampling only mix existing pixels: no value leaves the range.
    assert first.min() >= images.min() - 1e-5 and first.max() <= images.max() + 1e-5
    # A single image, as a Beam DoFn hands it over.
    single = augment_images(images[0], config, seed=7)
    assert single.shape == images[0].shape
    np.testing.assert_array_equal(single, augment_images(images[:1], config, seed=7)[0])


def test_augment_copies_are_the_per_copy_seeded_images():
    image = pictures(1)[0]
    sha = "ef" * 32
    copies = augment_copies(image, AugmentConfig(), sha, 3)
    assert copies.shape == (3, *image.shape)
    for k in range(3):
        np.testing.assert_array_equal(
            copies[k], augment_images(image, AugmentConfig(), copy_seed(sha, k))
        )
    assert not np.array_equal(copies[0], copies[1])
    np.testing.assert_array_equal(augment_copies(image, AugmentConfig(), sha, 2), copies[:2])


def test_zeroing_every_transform_gives_the_identity():
    flags = TrainConfig(
        augment_rotation=0, augment_shift=0, augment_shear=0, augment_zoom=0, augment_flip=False
    )
    config = AugmentConfig.of(flags)
    assert config == AugmentConfig.disabled() and not config.enabled
    images = pictures()
    np.testing.assert_array_equal(augment_images(images, config, seed=3), images)
    pipeline = build_augmentation(config, seed=3)
    assert [type(layer).__name__ for layer in pipeline.layers] == ["Identity"]
    np.testing.assert_array_equal(pipeline(images, training=True), images)


ZOOM = {"height_factor": (-0.25, 0.25), "width_factor": (-0.25, 0.25)}


@pytest.mark.parametrize(
    "name, value, layer, setting",
    [
        ("rotation", 25.0, "RandomRotation", {"factor": (-25 / 360, 25 / 360)}),
        ("shift", 0.15, "RandomTranslation", {"height_factor": 0.15, "width_factor": 0.15}),
        ("shear", 0.3, "RandomShear", {"x_factor": (-0.3, 0.3)}),
        (
            "zoom",
            0.25,
            "RandomZoom",
            {"height_factor": (-0.25, 0.25), "width_factor": (-0.25, 0.25)},
        ),
        ("flip", True, "RandomFlip", {"mode": "horizontal"}),
    ],
)
def test_each_transform_alone_is_configured_and_changes_images(name, value, layer, setting):
    config = only(name, value)
    pipeline = build_augmentation(config, seed=11)
    assert [type(x).__name__ for x in pipeline.layers] == [layer]
    layer_config = pipeline.layers[0].get_config()
    for key, expected in setting.items():
        if isinstance(expected, str):
            assert layer_config[key] == expected
        else:
            np.testing.assert_allclose(layer_config[key], expected)
    images = pictures(16)
    out = augment_images(images, config, seed=11)
    changed = [not np.array_equal(a, b) for a, b in zip(out, images)]
    assert sum(changed) >= 4, f"{name} changed only {sum(changed)} of 16 images"
    if name == "flip":
        for original, augmented in zip(images, out):
            assert np.array_equal(augmented, original) or np.array_equal(
                augmented, original[:, ::-1]
            )


def test_of_reads_a_stage_configs_flat_fields():
    flags = TrainConfig(
        augment_rotation=15,
        augment_shift=0.1,
        augment_shear=0,
        augment_zoom=0.3,
        augment_flip=False,
    )
    assert AugmentConfig.of(flags) == AugmentConfig(15, 0.1, 0.0, 0.3, False)
    # A stage that exposes only some of the flags keeps the defaults for the rest.
    partial = AugmentConfig.of(SimpleNamespace(augment_rotation=5.0))
    assert partial == AugmentConfig(rotation=5.0)
    assert AugmentConfig.of(TrainConfig()) == AugmentConfig()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"shift": 1.5}, "augment_shift must be in"),
        ({"rotation": -1.0}, "augment_rotation must be in"),
        ({"zoom": 1.0}, "augment_zoom must be below 1"),
        ({"fill_mode": "constant"}, "constant fill does not commute"),
    ],
)
def test_bad_ranges_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AugmentConfig(**kwargs)


@pytest.mark.parametrize("mode", ["tf", "caffe", "torch"])
def test_transforms_commute_with_the_backbones_normalisation(mode):
    """Why augmenting the Preprocessor's output equals augmenting pixels, then normalising."""
    normalise = NORMALIZATIONS[mode][1]
    pixels = (pictures(4) + 1) * 127.5
    config = AugmentConfig(fill_mode="nearest")
    transformed = augment_images(pixels, config, seed=5)
    transformed_then_normalised = np.asarray(normalise(tf.constant(transformed)))
    normalised = np.asarray(normalise(tf.constant(pixels)))
    normalised_then_transformed = augment_images(normalised, config, seed=5)
    assert np.abs(normalised_then_transformed - normalised).max() > 0.5  # it did transform
    np.testing.assert_allclose(normalised_then_transformed, transformed_then_normalised, atol=2e-3)


@pytest.fixture(scope="module")
def images(shapes_root):
    from export.data.dataset import scan
    from export.features.extraction import compute_features
    from export.features.sources import InMemoryFeatures
    from export.model.backbones import build_feature_extractor
    from export.training.finetune import ImageSource

    config = TrainConfig(data=str(shapes_root), **TINY)
    dataset = scan(shapes_root)
    preprocessor = Preprocessor.of(config)
    table = compute_features(
        dataset.examples,
        build_feature_extractor(BackboneConfig.of(config)),
        preprocessor,
        progress=False,
    )
    source = InMemoryFeatures(table, dataset.labels, table.skipped)
    return ImageSource.of(source, preprocessor)


def _preprocessed(images, split):
    preprocess = EagerPreprocessor(images.preprocessor)
    out = []
    for uri, _ in images.examples[split]:
        with open(uri, "rb") as f:
            out.append(preprocess(f.read())[0])
    return np.stack(out)


@pytest.mark.parametrize("split", [VALIDATION, TEST])
def test_validation_and_test_images_are_exactly_the_preprocessors_output(images, split):
    expected = _preprocessed(images, split)
    got = np.concatenate([x for x, _ in images.batches(split, 8).as_numpy_iterator()])
    labels = np.concatenate([y for _, y in images.batches(split, 8).as_numpy_iterator()])
    assert len(got) == len(images.examples[split]) >= 5
    np.testing.assert_array_equal(got, expected)  # bit-identical: never augmented
    assert labels.tolist() == [label for _, label in images.examples[split]]


def test_only_the_training_batches_are_augmented(images):
    plain = _preprocessed(images, TRAIN)
    keys = {x.tobytes() for x in plain}

    def batches(config):
        ds = images.training_batches(16, config, seed=1)
        return [(x, y) for x, y in ds.as_numpy_iterator()]

    unaugmented = batches(AugmentConfig.disabled())
    augmented = batches(AugmentConfig())
    assert sum(len(y) for _, y in augmented) == len(plain) == len(images.examples[TRAIN])
    # Without augmentation every training image is one the Preprocessor produced ...
    assert all(x.tobytes() in keys for xs, _ in unaugmented for x in xs)
    # ... with it, none is (each was rotated, shifted, sheared and zoomed).
    assert not any(x.tobytes() in keys for xs, _ in augmented for x in xs)
    # Same labels, reshuffled with the seed.
    assert sorted(np.concatenate([y for _, y in augmented])) == sorted(
        label for _, label in images.examples[TRAIN]
    )
