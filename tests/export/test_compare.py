import csv
import json
from pathlib import Path

import pytest
from testconfig import TINY

from export.cli.compare import main
from export.experiments.compare import entry_config
from export.experiments.compare_entries import EntrySyntaxError, parse_entries
from export.training.config import TrainConfig

SECOND = "tiny@image_size=48,learning_rate=0.003"
ENTRIES = f"tiny,{SECOND},resnet9000"


@pytest.fixture(scope="module")
def compared(shapes_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    args = ["--data", str(shapes_root), "--output", str(out), "--backbones", ENTRIES]
    args += ["--weights", TINY["weights"], "--epochs", "20", "--patience", "0"]
    args += ["--learning-rate", "0.01", "--stop-at-accuracy", "0.9", "--no-progress"]
    args += ["--no-report", "--baseline-epochs", "2", "--throughput-images", "40"]
    code = main(args)
    return code, out, json.loads((out / "comparison.json").read_text())


def test_one_row_per_entry_and_a_failing_backbone_gives_exit_1(compared):
    code, _, report = compared
    assert code == 1
    rows = {row["name"]: row for row in report["entries"]}
    assert list(rows) == ["tiny", SECOND, "resnet9000", "baseline"]
    failed = rows["resnet9000"]
    assert failed["status"] == "error" and "unknown backbone 'resnet9000'" in failed["error"]
    assert failed["accuracy"] is None and failed["run_dir"] is None
    for name in ("tiny", SECOND, "baseline"):
        row = rows[name]
        assert row["status"] == "ok" and row["error"] is None
        assert 0 <= row["accuracy"] <= 1 and row["accuracy_split"] == "test"
        assert 0 <= row["validation_accuracy"] <= 1
        assert row["train_seconds"] > 0 and row["total_seconds"] >= row["train_seconds"]
        assert row["images_per_second"] > 0 and row["param_count"] > 0
        assert row["stopped_at_epoch"] in (None, row["epochs_run"])
    assert rows["tiny"]["accuracy"] > 0.5  # chance is 1/3; stopping at 90% on 6 images is early
    assert rows["tiny"]["feature_dim"] == 32 and rows["tiny"]["image_size"] == 32
    # --stop-at-accuracy reaches the head trainer through xfer-compare.
    assert rows["tiny"]["stopped_at_epoch"] == rows["tiny"]["epochs_run"] < 20
    baseline = rows["baseline"]
    assert baseline["kind"] == "baseline" and baseline["feature_dim"] == 128
    assert baseline["image_size"] == 32  # the first backbone's input
    assert baseline["epochs_run"] <= 2


def test_every_entry_sees_the_same_images_in_the_same_split(compared):
    _, _, report = compared
    ok = [row for row in report["entries"] if row["status"] == "ok"]
    hashes = {row["data_hash"] for row in ok if row["kind"] == "backbone"}
    assert len(hashes) == 1 and None not in hashes
    counts = []
    for row in ok:
        metrics = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())
        counts.append({split: m["count"] for split, m in metrics["splits"].items()})
    assert counts[0]["validation"] > 0 and counts[0]["test"] > 0
    assert all(c == counts[0] for c in counts)  # the baseline included


def test_per_entry_options_reach_the_run(compared):
    _, out, report = compared
    row = next(r for r in report["entries"] if r["name"].startswith("tiny@"))
    run_dir = out / "runs" / "02-tiny_image_size=48_learning_rate=0.003"
    assert row["run_dir"] == str(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["image_size"] == 48 and config["learning_rate"] == 0.003
    assert config["epochs"] == 20 and config["backbone"] == "tiny"
    assert row["image_size"] == 48


def test_csv_markdown_and_png(compared, capsys):
    _, out, report = compared
    with open(out / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == [r["name"] for r in report["entries"]]
    assert rows[2]["status"] == "error"
    table = (out / "comparison.md").read_text().splitlines()
    assert table[0].startswith("| entry | accuracy |") and len(table) == 2 + 4
    assert "error: ValueError: unknown backbone 'resnet9000'" in table[4]
    png = (out / "comparison.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000


def test_entry_syntax():
    mobilenet = "mobilenet_v2@alpha=0.35,image_size=96"
    entries = parse_entries([f"tiny,{mobilenet}", "resnet50@weights=none"])
    assert [(e.name, e.backbone, e.options) for e in entries] == [
        ("tiny", "tiny", {}),
        (mobilenet, "mobilenet_v2", {"alpha": 0.35, "image_size": 96}),
        ("resnet50@weights=none", "resnet50", {"weights": "none"}),
    ]
    assert parse_entries(["a@feature_layer=none,report=no"])[0].options == {
        "feature_layer": "none",
        "report": False,
    }
    assert parse_entries(["a@image_size=none"])[0].options == {"image_size": None}
    for bad, message in [
        ("tiny,image_size=96", "follows no NAME@key=value"),
        ("tiny@test_percent=50", "unknown per-backbone option 'test_percent'"),
        ("tiny@colour=red", "unknown per-backbone option 'colour'"),
        ("tiny@image_size=big", "expected int"),
        ("tiny@head=forest", "choose from softmax, mlp"),
        ("@alpha=1", "write NAME@key=value"),
        (",", "names no backbone"),
    ]:
        with pytest.raises(EntrySyntaxError, match=message):
            parse_entries([bad])


def test_global_alpha_applies_only_where_there_is_a_width_multiplier(tmp_path):
    base = TrainConfig(alpha=0.35, image_size=96, weights="none")
    mobilenet, tiny, custom = parse_entries(["mobilenet_v2,tiny,tiny@image_size=40"])
    assert entry_config(base, mobilenet, tmp_path).alpha == 0.35
    assert entry_config(base, tiny, tmp_path).alpha == 1.0
    assert entry_config(base, tiny, tmp_path).image_size == 96  # global --image-size
    assert entry_config(base, custom, tmp_path).image_size == 40  # the entry's own wins


def test_bad_entry_syntax_exits_2_before_training(shapes_root, tmp_path, caplog):
    args = ["--data", str(shapes_root), "--output", str(tmp_path / "out")]
    assert main([*args, "--backbones", "tiny,image_size=96"]) == 2
    assert "follows no NAME@key=value" in caplog.text
    assert not (tmp_path / "out").exists()


def test_saved_baseline_reloads_without_augmentation_and_reproduces_its_accuracy(
    compared, shapes_root
):
    import keras
    import numpy as np

    from export.data.dataset import scan
    from export.model.backbones import BackboneConfig
    from export.model.preprocessing import EagerPreprocessor, Preprocessor

    _, out, report = compared
    row = next(r for r in report["entries"] if r["name"] == "baseline")
    model = keras.models.load_model(Path(row["run_dir"]) / "baseline.keras")
    assert "augmentation" not in [layer.name for layer in model.layers]
    preprocess = EagerPreprocessor(Preprocessor(BackboneConfig("tiny", weights="none")))
    images, labels = [], []
    for example in scan(str(shapes_root)).examples:
        pixels, reason = preprocess(Path(example.path).read_bytes())
        if example.split == "test" and reason is None:
            images.append(pixels)
            labels.append(example.label_id)
    predicted = np.asarray(model(np.stack(images), training=False)).argmax(axis=1)
    assert np.mean(predicted == np.array(labels)) == pytest.approx(row["test_accuracy"])
