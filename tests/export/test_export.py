import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from imagegen import COLOURS, encode, square_image
from PIL import Image

from export.contract import CLASSIFY_METHOD, PREDICT_METHOD
from export.model.pixels import image_pixels
from export.publishing.exporter import export_model
from export.publishing.gate import GateError, run_gate
from export.publishing.publish import TMP_PREFIX, VersionExistsError, publish
from export.publishing.versions import list_versions


def jpeg(colour):
    return encode(square_image(COLOURS[colour], 48, np.random.default_rng(5)), "JPEG")


def test_layout_of_a_published_version(exported):
    path = exported.path
    assert exported.version == 1 and path.name == "1"
    for rel in [
        "saved_model.pb",
        "variables/variables.index",
        "assets/labels.txt",
        "assets.extra/model_card.json",
        "assets.extra/tf_serving_warmup_requests",
    ]:
        assert (path / rel).is_file(), rel
    assert (path / "assets" / "labels.txt").read_text() == "blue\ngreen\nred\n"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(TMP_PREFIX)]


def test_model_card_fields(exported):
    card = json.loads((exported.path / "assets.extra" / "model_card.json").read_text())
    assert card["version"] == 1 and card["model_name"] == "shapes"
    assert card["classes"] == ["blue", "green", "red"]
    assert card["backbone"]["name"] == "tiny" and card["backbone"]["feature_dim"] == 32
    assert card["preprocessing"]["version"] == "3"
    assert len(card["data"]["hash"]) == 64
    assert card["metrics"]["validation"]["accuracy"] >= 0.9
    assert {"tensorflow", "keras", "numpy", "python"} <= set(card["versions"])
    assert card["gate"]["max_abs_diff"]["serving_default/scores"] <= 1e-5
    assert card["gate"]["max_abs_diff"]["serving_pixels/scores"] <= 1e-5
    assert card["ood"]["method"] == "mahalanobis_tied_ledoit_wolf"
    assert card["ood"]["fpr"] == 0.01 and card["ood"]["feature_dim"] == 32
    assert card["ood"]["calibrated_on"] == "validation" and card["ood"]["threshold"] > 0
    assert "ood_score" in card["signatures"]["serving_default"]["outputs"]
    assert exported.ood == card["ood"]  # also in xfer-export's JSON
    assert set(card["signatures"]) == {
        "serving_default",
        "serving_pixels",
        "classification",
        "embedding",
    }


def test_warmup_file_parses_as_prediction_logs(exported):
    from tensorflow_serving.apis import prediction_log_pb2

    path = exported.path / "assets.extra" / "tf_serving_warmup_requests"
    logs = [
        prediction_log_pb2.PredictionLog.FromString(r)
        for r in tf.compat.v1.io.tf_record_iterator(str(path))
    ]
    # Every signature, and serving_default and serving_pixels also with xfer-score's output
    # filter: a server builds one callable per (signature, filter), so each is built at load, not
    # on a user's request.
    kinds = [
        (log.WhichOneof("log_type"), getattr(log, log.WhichOneof("log_type")).request)
        for log in logs
    ]
    seen = {
        (kind, r.model_spec.signature_name, tuple(getattr(r, "output_filter", ())))
        for kind, r in kinds
    }
    assert seen == {
        ("predict_log", "serving_default", ()),
        ("predict_log", "serving_default", ("labels", "top_scores")),
        ("predict_log", "serving_pixels", ()),
        ("predict_log", "serving_pixels", ("labels", "top_scores", "preprocessing")),
        # the filters xfer-score sends a model with an OOD detector
        ("predict_log", "serving_default", ("labels", "top_scores", "ood_score", "is_ood")),
        (
            "predict_log",
            "serving_pixels",
            ("labels", "top_scores", "preprocessing", "ood_score", "is_ood"),
        ),
        ("predict_log", "embedding", ()),
        ("classify_log", "classification", ()),
    }
    assert len(logs) == 16  # each for a batch of all warmup images, and for one image
    assert all(r.model_spec.name == "shapes" for _, r in kinds)
    images = tf.make_ndarray(logs[0].predict_log.request.inputs["image_bytes"])
    assert images.shape == (5,) and all(bytes(i)[:2] in (b"\xff\xd8", b"\x89P") for i in images)
    pixels = tf.make_ndarray(logs[2].predict_log.request.inputs["pixels"])
    assert pixels.shape == (5, 32, 32, 3) and pixels.dtype == np.uint8
    examples = logs[7].classify_log.request.input.example_list.examples
    assert len(examples) == 5 and examples[0].features.feature["image/encoded"].bytes_list.value


def test_tf1_style_load_and_every_signature(exported):
    images = [jpeg("red"), jpeg("green"), jpeg("blue")]
    pixels = np.stack([image_pixels(i, 32).numpy() for i in images])
    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[images[0]]))
            }
        )
    )
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(exported.path))
        sigs = meta.signature_def
        assert sigs["serving_default"].method_name == PREDICT_METHOD
        assert sigs["classification"].method_name == CLASSIFY_METHOD
        assert sigs["embedding"].method_name == PREDICT_METHOD

        def run(name, key, feed):
            sig = sigs[name]
            return sess.run(
                {k: v.name for k, v in sig.outputs.items()}, {sig.inputs[key].name: feed}
            )

        out = run("serving_default", "image_bytes", images)
        assert out["scores"].shape == (3, 3) and out["scores"].dtype == np.float32
        np.testing.assert_allclose(out["scores"].sum(axis=1), 1.0, rtol=1e-5)
        assert out["classes"].shape == (3, 3) and out["classes"].dtype == np.int32
        assert [row[0].decode() for row in out["labels"]] == ["red", "green", "blue"]
        np.testing.assert_allclose(out["top_scores"][:, 0], out["scores"].max(axis=1))
        assert out["ood_score"].shape == (3,) and out["ood_score"].dtype == np.float32
        assert out["is_ood"].dtype == bool
        # Noise unlike any training square scores higher than the squares themselves.
        noise = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
        far = run("serving_default", "image_bytes", [encode(Image.fromarray(noise), "PNG")])
        assert far["ood_score"][0] > out["ood_score"].max() and far["is_ood"][0]

        out = run("classification", "inputs", [example.SerializeToString()])
        assert out["classes"].tolist() == [[b"blue", b"green", b"red"]]
        assert out["scores"].shape == (1, 3) and out["scores"][0].argmax() == 2

        out = run("embedding", "image_bytes", images)
        assert out["features"].shape == (3, 32)

        # serving_pixels: the same model on the contract's uint8 pixels, naming the contract.
        assert sigs["serving_pixels"].method_name == PREDICT_METHOD
        by_bytes = run("serving_default", "image_bytes", images)
        out = run("serving_pixels", "pixels", pixels)
        np.testing.assert_allclose(out["scores"], by_bytes["scores"], atol=1e-6)
        np.testing.assert_allclose(out["ood_score"], by_bytes["ood_score"], rtol=1e-5)
        assert out["labels"].tolist() == by_bytes["labels"].tolist()
        assert [json.loads(v) for v in out["preprocessing"]] == [
            {"version": "3", "image_size": 32, "max_pixels": 40_000_000}
        ] * 3


def test_parity_measured_by_the_gate(exported):
    diffs = exported.gate.max_abs_diff
    assert diffs["serving_default/scores"] <= 1e-5
    assert diffs["classification/scores"] <= 1e-5
    assert diffs["serving_pixels/scores"] <= 1e-5
    assert exported.gate.warmup_records == 16


def test_second_export_publishes_version_2_and_version_never_overwrites(
    exported, export_config, trained
):
    second = export_model(export_config, result=trained)
    assert second.version == 2
    assert list_versions(export_config.base_path) == [1, 2]
    import dataclasses

    with pytest.raises(VersionExistsError, match="already exists"):
        export_model(dataclasses.replace(export_config, version=1), result=trained)
    explicit = export_model(dataclasses.replace(export_config, version=7), result=trained)
    assert explicit.version == 7
    card = json.loads((explicit.path / "assets.extra" / "model_card.json").read_text())
    assert card["version"] == 7
    assert list_versions(export_config.base_path) == [1, 2, 7]


def test_gate_refuses_a_broken_model_and_publishes_nothing(exported, tmp_path):
    base = tmp_path / "m"
    images = [jpeg("red")]
    expected = np.array([[0.0, 0.0, 1.0]], np.float32)
    features = np.zeros((1, 32), np.float32)

    def copy_then_break(directory, version):
        import shutil

        shutil.copytree(exported.path, directory, dirs_exist_ok=True)
        (directory / "variables" / "variables.data-00000-of-00001").write_bytes(b"corrupt")

    def gate(directory):
        return run_gate(directory, images, expected, features, top_k=5)

    with pytest.raises(GateError, match="TF1-style load"):
        publish(base, copy_then_break, gate)
    assert list(base.iterdir()) == []

    def copy_intact(directory, version):
        import shutil

        shutil.copytree(exported.path, directory, dirs_exist_ok=True)

    # An intact model whose scores differ from what the "in-memory model" said: parity fails.
    with pytest.raises(GateError, match="parity: serving_default/scores differs"):
        publish(base, copy_intact, gate)
    assert list(base.iterdir()) == []


def test_min_accuracy_gate_exits_1_and_publishes_nothing(shapes_root, tmp_path, capsys):
    from testconfig import TINY

    from export.cli.export import main

    base = tmp_path / "models" / "m"
    args = [
        "--data",
        str(shapes_root),
        "--model-base-path",
        str(base),
        "--epochs",
        "1",
        "--learning-rate",
        "1e-5",
        "--no-progress",
        "--run-dir",
        str(tmp_path / "run"),
        "--backbone",
        TINY["backbone"],
        "--weights",
        TINY["weights"],
    ]
    assert main([*args, "--min-accuracy", "0.99"]) == 1
    assert list_versions(base) == []
    assert not [p for p in base.iterdir() if p.name.startswith(TMP_PREFIX)]


@pytest.mark.slow
def test_kill_9_during_export_leaves_no_integer_directory(shapes_root, tmp_path):
    base = tmp_path / "models" / "m"
    cmd = [
        sys.executable,
        "-m",
        "export.cli.export",
        "--data",
        str(shapes_root),
        "--backbone",
        "tiny",
        "--weights",
        "none",
        "--epochs",
        "3",
        "--no-progress",
        "--model-base-path",
        str(base),
        "--run-dir",
        str(tmp_path / "run"),
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    deadline = time.time() + 300
    # Kill it while the candidate is being written (the temporary directory has content).
    while time.time() < deadline and proc.poll() is None:
        temporaries = list(base.glob(f"{TMP_PREFIX}*")) if base.exists() else []
        if temporaries and any(temporaries[0].iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "export finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list_versions(base) == []
    assert list(base.glob(f"{TMP_PREFIX}*")), "the interrupted candidate should still be hidden"
    # The next export starts by removing temporaries whose process is gone.
    from export.publishing.publish import remove_stale_temporaries

    assert remove_stale_temporaries(base)
    assert list(base.iterdir()) == []


def _make_n(*args) -> list[str]:
    """The xfer-export command line that `make -n` shows, as tokens (nothing is run)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    out = subprocess.run(
        ["make", "-n", "--no-print-directory", *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
        check=True,
        env=env,
    ).stdout
    line = next(x for x in out.replace("\\\n", " ").splitlines() if "xfer-export" in x)
    tokens = line.split()
    start = next(i for i, t in enumerate(tokens) if t.endswith("xfer-export"))
    return tokens[start + 1 :]


def _flags(tokens: list[str]) -> dict[str, str]:
    return dict(zip(tokens[::2], tokens[1::2]))


def test_make_export_variables_reach_the_cli():
    flags = _flags(
        _make_n(
            "export",
            "DATA=imgs",
            "BACKBONE=mobilenet_v2",
            "WEIGHTS=none",
            "EPOCHS=1",
            "MODEL_NAME=m",
            "MODEL_BASE_PATH=models/m",
            "IMAGE_SIZE=96",
        )
    )
    assert flags == {
        "--data": "imgs",
        "--backbone": "mobilenet_v2",
        "--weights": "none",
        "--image-size": "96",
        "--epochs": "1",
        "--model-name": "m",
        "--model-base-path": "models/m",
    }


def test_make_export_from_cached_bottlenecks():
    flags = _flags(_make_n("export", "BOTTLENECKS=out/b", "EPOCHS=3", "MODEL_NAME=m"))
    assert flags == {
        "--bottlenecks": "out/b",
        "--epochs": "3",
        "--model-name": "m",
        "--model-base-path": "models/m",
    }


def test_gate_checks_the_ood_outputs_against_the_detector(exported, tmp_path):
    from export.publishing import ood

    images = [jpeg("red"), jpeg("blue")]
    loaded = tf.saved_model.load(str(exported.path))
    scores = loaded.signatures["serving_default"](image_bytes=tf.constant(images))["scores"]
    features = loaded.signatures["embedding"](image_bytes=tf.constant(images))["features"]
    rng = np.random.default_rng(0)
    other = ood.fit(rng.normal(0, 1, (50, 32)), rng.integers(0, 3, 50), 3)
    with pytest.raises(GateError, match="parity: serving_default/ood_score differs"):
        run_gate(exported.path, images, scores.numpy(), features.numpy(), top_k=5, ood=other)
