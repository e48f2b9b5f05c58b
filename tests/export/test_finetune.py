import dataclasses
import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from testconfig import TINY

from export.data.dataset import SPLITS, TEST, TRAIN, VALIDATION
from export.model.backbones import BackboneConfig, build_feature_extractor
from export.model.heads import build_classifier
from export.model.preprocessing import EagerPreprocessor, Preprocessor
from export.training.config import TrainConfig
from export.training.runs import BACKBONE_WEIGHTS_FILE, HEAD_ONLY_FILE, load_run_classifier
from export.training.train import train

# Head first (a few epochs, so its scores are not saturated), then 3 epochs end to end.
FINE_TUNE = {
    **TINY,
    "epochs": 8,
    "patience": 0,
    "learning_rate": 0.01,
    "progress": False,
    "fine_tune_from": "conv2",
    "fine_tune_epochs": 3,
    "fine_tune_learning_rate": 0.01,
    "report": False,  # the HTML report is another stage, tested elsewhere
}


def weights_by_layer(model: keras.Model) -> dict[str, list[np.ndarray]]:
    """By layer name; the input layer by position (Keras numbers its auto-generated name)."""
    return {
        "input" if i == 0 else layer.name: [np.array(w) for w in layer.weights]
        for i, layer in enumerate(model.layers)
    }


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def batch_of(uris, preprocessor) -> np.ndarray:
    preprocess = EagerPreprocessor(preprocessor)
    return np.stack([preprocess(Path(uri).read_bytes())[0] for uri in uris])


@pytest.fixture(scope="module")
def tuned(shapes_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tuned")
    return train(TrainConfig(data=str(shapes_root), run_dir=str(run_dir), **FINE_TUNE))


def original_backbone(config: TrainConfig) -> keras.Model:
    """The backbone before fine-tuning: weights "none" are seeded, identical in every build."""
    return build_feature_extractor(BackboneConfig.of(config))


def head_only_classifier(result) -> keras.Model:
    head = keras.models.load_model(result.run_dir / HEAD_ONLY_FILE, compile=False)
    return build_classifier(original_backbone(result.config), head)


def test_only_layers_from_the_named_one_on_change(tuned):
    before = weights_by_layer(original_backbone(tuned.config))
    after = weights_by_layer(tuned.extractor)
    assert list(before) == ["input", "conv1", "conv2", "max_pool"]
    assert same(before["conv1"], after["conv1"])  # before conv2: frozen
    assert not np.array_equal(before["conv2"][0], after["conv2"][0])  # kernel moved
    assert all(np.isfinite(w).all() for ws in after.values() for w in ws)
    fine_tune = tuned.metrics["fine_tune"]
    assert fine_tune["from"] == "conv2" and fine_tune["trainable_layers"] == ["conv2"]
    head_only = keras.models.load_model(tuned.run_dir / HEAD_ONLY_FILE, compile=False)
    assert not same(head_only.get_layer("scores").weights, tuned.head.get_layer("scores").weights)


def test_metrics_record_both_phases_and_the_run_dir_can_rebuild_the_model(tuned):
    metrics = json.loads((tuned.run_dir / "metrics.json").read_text())
    fine_tune = metrics["fine_tune"]
    assert fine_tune["epochs_run"] == 3 and len(fine_tune["history"]["val_accuracy"]) == 3
    assert fine_tune["learning_rate"] == 0.01 and fine_tune["momentum"] == 0.9
    assert fine_tune["augmentation"]["rotation"] == 40.0
    for split in SPLITS:
        head_only, final = fine_tune["head_only_splits"][split], metrics["splits"][split]
        assert head_only["count"] == final["count"] > 0
        assert 0 <= final["accuracy"] <= 1 and final["loss"] != head_only["loss"]
    assert metrics["splits"]["validation"]["accuracy"] >= 0.8
    png = (tuned.run_dir / "fine_tune_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert len((tuned.run_dir / "fine_tune_history.csv").read_text().splitlines()) == 4
    assert (tuned.run_dir / BACKBONE_WEIGHTS_FILE).is_file()

    classifier, extractor, head, config, labels = load_run_classifier(tuned.run_dir)
    assert labels == tuned.labels and config["fine_tune_from"] == "conv2"
    x = batch_of(tuned.source.uris(VALIDATION, 8), Preprocessor.of(tuned.config))
    expected = np.asarray(tuned.classifier(x, training=False))
    np.testing.assert_allclose(np.asarray(classifier(x, training=False)), expected, atol=1e-6)
    assert np.abs(np.asarray(head_only_classifier(tuned)(x)) - expected).max() > 1e-3


def test_fine_tuned_model_is_what_export_publishes_through_the_gate(tuned, shapes_root, tmp_path):
    from export.publishing.exporter import ExportConfig, export_model

    config = ExportConfig(
        data=str(shapes_root), model_name="tuned", model_base_path=str(tmp_path), **FINE_TUNE
    )
    exported = export_model(config, result=tuned)
    assert exported.version == 1
    assert exported.gate.max_abs_diff["serving_default/scores"] <= 1e-5
    card = json.loads((exported.path / "assets.extra" / "model_card.json").read_text())
    assert card["training"]["fine_tune"]["from"] == "conv2"
    assert set(card["training"]["fine_tune"]["head_only_accuracy"]) == set(SPLITS)
    # The OOD detector: fitted on the fine-tuned backbone's features of the training images
    # (the cached ones are the backbone's before fine-tuning), its threshold on validation's.
    detector = card["ood"]
    assert detector["method"] == "mahalanobis_tied_ledoit_wolf"
    assert detector["features"] == "fine-tuned backbone, at export"
    assert "ood_score" in card["signatures"]["serving_default"]["outputs"]
    validation = [Path(uri).read_bytes() for uri, _ in tuned.source.labelled_uris(VALIDATION)]
    assert detector["calibration_images"] == len(validation) < 100
    serving = tf.saved_model.load(str(exported.path)).signatures["serving_default"]
    served = serving(image_bytes=tf.constant(validation))
    scores, flags = served["ood_score"].numpy(), served["is_ood"].numpy()
    # Under 100 validation images, the 99% quantile is their highest score: the served scores
    # are in the space the threshold was chosen in, so their maximum is the threshold, and no
    # image is flagged but, by float32 rounding in the graph, that one.
    assert scores.max() == pytest.approx(detector["threshold"], rel=1e-5)
    assert flags.sum() <= 1 and flags[scores.argmax()] == flags.any()

    uris = tuned.source.uris(VALIDATION, 6) + tuned.source.uris(TRAIN, 6)
    contents = [Path(uri).read_bytes() for uri in uris]
    published = serving(image_bytes=tf.constant(contents))["scores"].numpy()
    x = batch_of(uris, Preprocessor.of(tuned.config))
    np.testing.assert_allclose(published, np.asarray(tuned.classifier(x)), atol=1e-5)
    head_only = np.asarray(head_only_classifier(tuned)(x))
    assert np.abs(published - head_only).max() > 1e-3, "the head-only model was published"


def test_backbone_runs_in_inference_mode_even_where_batch_norm_could_train():
    """The wrapper alone keeps moving statistics, although fit() runs with training=True and
    this batch norm is left trainable (its gamma moves; its statistics must not)."""
    from export.model.heads import build_head
    from export.training.finetune import fine_tune_model

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    backbone = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="toy")
    model = fine_tune_model(backbone, build_head(4, 2, dropout=0.0))
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    images = rng.normal(2.0, 3.0, (32, 8, 8, 3)).astype(np.float32)
    bn = backbone.get_layer("bn")
    statistics = [np.array(bn.moving_mean), np.array(bn.moving_variance)]
    gamma = np.array(bn.gamma)
    model.fit(images, rng.integers(0, 2, 32), epochs=2, batch_size=8, verbose=0)
    assert same(statistics, [np.array(bn.moving_mean), np.array(bn.moving_variance)])
    assert not np.array_equal(gamma, np.array(bn.gamma))


def test_unknown_layer_is_a_clear_error_before_any_training(shapes_root, tmp_path):
    run_dir = tmp_path / "run"
    config = TrainConfig(data=str(shapes_root), run_dir=str(run_dir), **FINE_TUNE)
    with pytest.raises(ValueError) as info:
        train(dataclasses.replace(config, fine_tune_from="conv3"))
    message = str(info.value)
    assert "no layer named or starting with 'conv3'" in message
    assert "close matches: conv1, conv2" in message or "close matches: conv2, conv1" in message
    assert "xfer-backbones --layers tiny" in message
    assert not run_dir.exists()  # failed before the run dir and the head's epochs


def write_bottlenecks(prefix, source, backbone: BackboneConfig, preprocessor, root, splits):
    """Bottleneck output in the Beam job's schema, for the images of `splits`; every training
    image is written twice, as augmented copies are (same URI)."""
    from export.features.bottleneck_schema import encode_example

    prefix.mkdir()
    table = source.table
    with tf.io.TFRecordWriter(
        str(prefix / "features-00000-of-00001.tfrecord.gz"), options="GZIP"
    ) as writer:
        for example, digest, features in zip(table.examples, table.sha256, table.features):
            copies = (2 if example.split == TRAIN else 1) if example.split in splits else 0
            for _ in range(copies):
                writer.write(
                    encode_example(
                        uri=example.path,
                        sha256=digest,
                        label=example.label,
                        label_id=example.label_id,
                        split=example.split,
                        features=features,
                        backbone=backbone.name,
                    )
                )
    (prefix / "labels.txt").write_text("\n".join(source.labels) + "\n")
    metadata = {
        "backbone": backbone.to_dict(),
        "feature_dim": source.feature_dim,
        "errors": len(source.skipped),
        "preprocessing": preprocessor.describe(),
        "split": {"validation_percent": 10.0, "test_percent": 10.0},
        "job_options": {"xfer": {"input": str(root)}},
    }
    (prefix / "metadata.json").write_text(json.dumps(metadata))


def test_from_bottlenecks_a_block_prefix_keeps_earlier_layers_and_batch_norm_frozen(tmp_path):
    """MobileNetV2 (batch norms everywhere), trained from bottleneck TFRecords: the images to
    fine-tune on are the records' URIs. No validation split, to keep the test short."""
    from imagegen import write_shapes_dataset

    from export.data.dataset import scan
    from export.features.extraction import compute_features
    from export.features.sources import InMemoryFeatures, TFRecordFeatures

    root = write_shapes_dataset(tmp_path / "images", per_class=10)
    config = TrainConfig(
        run_dir=str(tmp_path / "run"),
        **{
            **FINE_TUNE,
            "backbone": "mobilenet_v2",
            "alpha": 0.35,
            "image_size": 64,
            "epochs": 2,
            "fine_tune_from": "block_13",  # a block: the first layer named block_13*
            "fine_tune_epochs": 1,
        },
    )
    original = build_feature_extractor(BackboneConfig.of(config))
    before = weights_by_layer(original)
    dataset = scan(root)
    table = compute_features(
        dataset.examples, original, Preprocessor.of(config), batch_size=64, progress=False
    )
    source = InMemoryFeatures(table, dataset.labels, table.skipped)
    prefix = tmp_path / "bottlenecks"
    backbone, preprocessor = BackboneConfig.of(config), Preprocessor.of(config)
    write_bottlenecks(prefix, source, backbone, preprocessor, root, splits=(TRAIN, TEST))
    records = TFRecordFeatures(str(prefix))
    for split in (TRAIN, TEST):  # each image once, although training images have two records
        assert records.labelled_uris(split) == sorted(source.labelled_uris(split))
    assert records.labelled_uris(VALIDATION) == []

    result = train(dataclasses.replace(config, bottlenecks=str(prefix)))
    fine_tune = result.metrics["fine_tune"]
    for split in SPLITS:
        assert result.metrics["splits"][split]["count"] == len(records.labelled_uris(split))
    assert fine_tune["head_only_splits"][TRAIN]["count"] == 2 * len(records.labelled_uris(TRAIN))

    after = weights_by_layer(result.extractor)
    names = list(before)
    start = names.index("block_13_expand")
    assert fine_tune["from"] == "block_13_expand"
    for name in names[:start]:
        assert same(before[name], after[name]), f"{name} is before block_13 but changed"
    changed = [n for n in names[start:] if not same(before[n], after[n])]
    assert changed, "no layer from block_13 on was trained"
    batch_norms = [
        layer.name
        for layer in result.extractor.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert len(batch_norms) > 10
    for name in batch_norms:  # gamma, beta and the moving statistics alike
        assert same(before[name], after[name]), f"batch norm {name} changed"
    trainable = fine_tune["trainable_layers"]
    assert trainable[0] == "block_13_expand" and not set(trainable) & set(batch_norms)
    assert set(changed) <= set(trainable)
