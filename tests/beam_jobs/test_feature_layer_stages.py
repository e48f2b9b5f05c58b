"""A backbone cut at an intermediate layer is the same model in every stage: the Beam job's
features, the head trained from them, the exported SavedModel's embedding, Grad-CAM's layer."""

import json
from pathlib import Path

import numpy as np
import tensorflow as tf
from testconfig import FAST_TRAINING, bottleneck_args

from beam_jobs import bottlenecks
from export.features.bottleneck_schema import decode_example

LAYER = "conv1"  # tiny: conv1 -> conv2 -> max pool; cut at conv1, features are 16 wide


def test_feature_layer_flows_from_beam_through_training_export_and_gradcam(shapes_root, tmp_path):
    from export.experiments.gradcam import load_run
    from export.publishing.exporter import ExportConfig, export_model

    out = tmp_path / "bottlenecks"
    bottlenecks.run(bottleneck_args(shapes_root, out, "--feature_layer", LAYER))
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["backbone"]["feature_layer"] == LAYER and meta["feature_dim"] == 16

    result = export_model(
        ExportConfig(
            bottlenecks=str(out),
            run_dir=str(tmp_path / "run"),
            model_name="cut",
            model_base_path=str(tmp_path / "models" / "cut"),
            **FAST_TRAINING,
        )
    )
    assert result.train.config.feature_layer == LAYER  # taken from the bottlenecks
    card = json.loads((result.path / "assets.extra" / "model_card.json").read_text())
    assert card["backbone"]["feature_layer"] == LAYER and card["backbone"]["feature_dim"] == 16

    files = sorted(str(p) for p in out.glob("features-*.tfrecord.gz"))
    rows = [
        decode_example(r.numpy(), 16)
        for r in tf.data.TFRecordDataset(files, compression_type="GZIP").take(8)
    ]
    images = [Path(r["image/uri"].decode()).read_bytes() for r in rows]
    embedding = tf.saved_model.load(str(result.path)).signatures["embedding"]
    served = embedding(image_bytes=tf.constant(images))["features"].numpy()
    assert np.max(np.abs(served - np.stack([r["features"] for r in rows]))) <= 1e-5

    from export.experiments.gradcam import default_layer

    run = load_run(tmp_path / "run")
    assert default_layer(run.extractor) == LAYER
