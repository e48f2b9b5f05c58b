import numpy as np
import pytest

from export.model.backbones import (
    REGISTRY,
    BackboneConfig,
    build_feature_extractor,
    feature_dim,
    get_spec,
    names,
)

SLOW = {"inception_v3", "xception", "resnet50", "efficientnet_b0", "vgg19"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names()]
)
def test_every_backbone_builds_and_gives_its_feature_dim(name):
    spec = get_spec(name)
    size = max(spec.min_input_size, 32)
    alpha = 0.35 if name == "mobilenet_v2" else 1.0
    extractor = build_feature_extractor(
        BackboneConfig(name, weights="none", image_size=size, alpha=alpha)
    )
    expected = spec.feature_dim
    assert feature_dim(extractor) == expected
    out = np.asarray(extractor(np.zeros((2, size, size, 3), np.float32), training=False))
    assert out.shape == (2, expected)
    assert np.all(np.isfinite(out))


def test_registry_has_the_issue_backbones():
    assert set(REGISTRY) >= {
        "inception_v3",
        "resnet50",
        "vgg16",
        "vgg19",
        "xception",
        "mobilenet_v2",
        "efficientnet_b0",
        "tiny",
    }
    assert get_spec("inception_v3").input_size == 299
    assert get_spec("inception_v3").feature_dim == 2048


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ValueError, match="unknown backbone 'resnet9000'.*inception_v3.*vgg16"):
        get_spec("resnet9000")


def test_intermediate_feature_layer_inception_mixed7():
    extractor = build_feature_extractor(
        BackboneConfig("inception_v3", weights="none", image_size=150, feature_layer="mixed7")
    )
    assert feature_dim(extractor) == 768


def test_unknown_feature_layer_suggests_close_names():
    with pytest.raises(ValueError, match="no layer 'conv3'.*close matches: conv2, conv1"):
        build_feature_extractor(BackboneConfig("tiny", weights="none", feature_layer="conv3"))


def test_feature_layer_cuts_tiny():
    extractor = build_feature_extractor(
        BackboneConfig("tiny", weights="none", feature_layer="conv1")
    )
    assert feature_dim(extractor) == 16


def test_invalid_arguments_state_rule_and_value(tmp_path):
    with pytest.raises(ValueError, match="at least 75; received 40"):
        build_feature_extractor(BackboneConfig("inception_v3", weights="none", image_size=40))
    with pytest.raises(ValueError, match="alpha applies to mobilenet_v2 only; received alpha=0.5"):
        build_feature_extractor(BackboneConfig("vgg16", weights="none", alpha=0.5))
    with pytest.raises(ValueError, match="tiny.*has no ImageNet weights"):
        build_feature_extractor(BackboneConfig("tiny", weights="imagenet"))
    with pytest.raises(ValueError, match="does not exist"):
        build_feature_extractor(BackboneConfig("tiny", weights=str(tmp_path / "missing.h5")))


def test_random_init_is_reproducible_so_every_stage_builds_the_same_backbone():
    config = BackboneConfig("tiny", weights="none")
    a = build_feature_extractor(config).get_weights()
    b = build_feature_extractor(config).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_weights_from_a_path(tmp_path):
    config = BackboneConfig("tiny", weights="none", init_seed=7)
    source = build_feature_extractor(config)
    path = tmp_path / "tiny.weights.h5"
    source.save_weights(path)
    loaded = build_feature_extractor(BackboneConfig("tiny", weights=str(path), init_seed=99))
    x = np.random.default_rng(0).normal(size=(1, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(source(x)), np.asarray(loaded(x)))
