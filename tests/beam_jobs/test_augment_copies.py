"""`xfer-bottlenecks --augment_copies K`: K augmented feature copies of training images only."""

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from testconfig import bottleneck_args

from beam_jobs import bottlenecks
from export.features.bottleneck_schema import decode_example
from export.features.sources import TFRecordFeatures
from export.model.backbones import BackboneConfig, build_feature_extractor
from export.model.preprocessing import EagerPreprocessor, Preprocessor
from export.training.augment import AugmentConfig, augment_copies

COPIES = 2


def rows_of(out) -> list[dict]:
    files = sorted(str(p) for p in out.glob("features-*.tfrecord.gz"))
    dim = json.loads((out / "metadata.json").read_text())["feature_dim"]
    return [
        decode_example(r.numpy(), dim)
        for r in tf.data.TFRecordDataset(files, compression_type="GZIP")
    ]


@pytest.fixture(scope="module")
def augmented_dir(shapes_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("augmented")
    bottlenecks.run(
        bottleneck_args(shapes_root, out, "--augment-copies", str(COPIES), "--no-augment-flip")
    )
    return out


def test_copies_only_of_training_images_and_counted_apart(augmented_dir, bottlenecks_dir):
    rows = rows_of(augmented_dir)
    originals = [r for r in rows if r["augment_copy"] == 0]
    copies = [r for r in rows if r["augment_copy"] > 0]
    train = [r for r in originals if r["split"] == b"train"]
    assert {r["split"] for r in copies} == {b"train"}
    assert len(copies) == COPIES * len(train)
    assert sorted(r["augment_copy"] for r in copies) == sorted(
        k for _ in train for k in range(1, COPIES + 1)
    )
    meta = json.loads((augmented_dir / "metadata.json").read_text())
    plain = json.loads((bottlenecks_dir / "metadata.json").read_text())
    assert meta["counts"] == plain["counts"] and meta["total"] == plain["total"] == len(originals)
    assert meta["augmented_copies"] == len(copies)
    assert meta["augment"]["copies"] == COPIES and meta["augment"]["splits"] == ["train"]
    assert meta["augment"]["flip"] is False and meta["augment"]["rotation"] == 40.0


def test_validation_and_test_features_are_untouched(augmented_dir, bottlenecks_dir):
    plain = {r["image/uri"]: r for r in rows_of(bottlenecks_dir)}
    for row in rows_of(augmented_dir):
        if row["augment_copy"] == 0:
            np.testing.assert_array_equal(row["features"], plain[row["image/uri"]]["features"])


def test_copies_are_the_augmented_images_features_and_differ_from_the_original(augmented_dir):
    config = BackboneConfig("tiny", weights="none")
    extractor = build_feature_extractor(config)
    preprocess = EagerPreprocessor(Preprocessor(config))
    rows = rows_of(augmented_dir)
    by_uri = {r["image/uri"]: r for r in rows if r["augment_copy"] == 0}
    augment = AugmentConfig(flip=False)
    checked = 0
    for row in [r for r in rows if r["augment_copy"] == 1][:5]:
        uri = row["image/uri"].decode()
        pixels, _ = preprocess(Path(uri).read_bytes())
        images = augment_copies(pixels, augment, row["image/sha256"].decode(), COPIES)
        expected = np.asarray(extractor(images, training=False))
        copies = sorted(
            (r for r in rows if r["image/uri"] == row["image/uri"] and r["augment_copy"] > 0),
            key=lambda r: r["augment_copy"],
        )
        got = np.stack([r["features"] for r in copies])
        assert np.max(np.abs(got - expected)) <= 1e-5
        assert np.max(np.abs(got[0] - by_uri[row["image/uri"]]["features"])) > 1e-3
        checked += 1
    assert checked == 5


def test_trainer_uses_copies_for_training_only(augmented_dir, bottlenecks_dir):
    source = TFRecordFeatures(str(augmented_dir))
    plain = TFRecordFeatures(str(bottlenecks_dir))

    def count(dataset):
        return sum(1 for _ in dataset)

    train = count(plain.dataset("train"))
    assert count(source.dataset("train")) == train
    assert count(source.dataset("train", copies=True)) == (COPIES + 1) * train
    assert count(source.dataset("validation", copies=True)) == count(plain.dataset("validation"))
    from export.features.sources import content_hash

    assert content_hash(source.rows()) == content_hash(plain.rows())


def test_head_trains_on_the_copies_and_is_evaluated_on_images(augmented_dir, tmp_path):
    from export.training.config import TrainConfig
    from export.training.train import train

    result = train(
        TrainConfig(bottlenecks=str(augmented_dir), run_dir=str(tmp_path), epochs=2, report=False)
    )
    train_images = result.metrics["splits"]["train"]["count"]
    assert result.metrics["training_rows"] == (COPIES + 1) * train_images
    assert (
        result.metrics["images_used"]
        == json.loads((augmented_dir / "metadata.json").read_text())["total"]
    )


def test_bad_copy_count_is_refused():
    with pytest.raises(ValueError, match="augment_copies"):
        bottlenecks.parse_args(["--input", "x", "--output", "y", "--augment-copies", "-1"])
