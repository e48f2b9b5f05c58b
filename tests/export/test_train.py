import csv
import json

import pytest
from testconfig import FAST_TRAINING, TINY

from export.cli.train import main as train_main


def test_head_reaches_90_percent_validation_accuracy(trained):
    splits = trained.metrics["splits"]
    assert splits["validation"]["count"] >= 5
    assert splits["validation"]["accuracy"] >= 0.9
    assert splits["test"]["accuracy"] >= 0.9


def test_run_directory_contents(trained):
    run = trained.run_dir
    config = json.loads((run / "config.json").read_text())
    assert config["backbone"] == "tiny" and config["epochs"] == 60
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["splits"]) == {"train", "validation", "test"}
    assert sum(m["count"] for m in metrics["splits"].values()) == metrics["images_used"] == 120
    for split in metrics["splits"].values():
        assert {"accuracy", "loss", "count"} <= set(split)
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 60 and {"accuracy", "loss", "val_accuracy", "val_loss"} <= set(rows[0])
    png = (run / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert (run / "labels.txt").read_text().split() == ["blue", "green", "red"]


def test_skipped_files_are_counted_and_listed_never_fatal(trained, shapes_root):
    metrics = trained.metrics
    assert metrics["skipped_count"] == 2
    reasons = {item["path"]: item["reason"] for item in metrics["skipped"]}
    assert reasons[str(shapes_root / "red" / "notes.txt")] == (
        "not a decodable image: unknown format (expected JPEG, PNG, GIF or BMP)"
    )
    assert "Invalid JPEG data" in reasons[str(shapes_root / "blue" / "broken.jpg")]


def _cli_args(data, run_dir, **extra):
    args = ["--data", str(data), "--run-dir", str(run_dir)]
    for key, value in {**TINY, **FAST_TRAINING, **extra}.items():
        flag = f"--{key.replace('_', '-')}"
        if isinstance(value, bool):  # switches: --report / --no-report
            args.append(flag if value else f"--no-{flag[2:]}")
        else:
            args += [flag, str(value)]
    return args


def test_cli_min_accuracy_exit_code(shapes_root, tmp_path):
    # One epoch at a tiny learning rate cannot reach 99%: exit 1, but the run is still written.
    args = _cli_args(shapes_root, tmp_path / "low", epochs=1, learning_rate=1e-5)
    assert train_main([*args, "--min-accuracy", "0.99"]) == 1
    assert (tmp_path / "low" / "metrics.json").exists()
    assert train_main([*args, "--min_accuracy", "0.0"]) == 0


def test_cli_bad_dataset_exits_2_naming_the_folder(tmp_path, caplog):
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "a.jpg").write_bytes(b"x")
    assert train_main(["--data", str(tmp_path), "--backbone", "tiny", "--weights", "none"]) == 2
    assert f"{tmp_path}: need at least 2 class folders" in caplog.text


def test_unknown_backbone_on_the_cli(tmp_path, shapes_root, caplog):
    assert train_main(_cli_args(shapes_root, tmp_path, backbone="resnet9000")) == 2
    assert "valid names:" in caplog.text


def test_class_without_any_decodable_image_is_an_error(tmp_path):
    from imagegen import encode, square_image

    (tmp_path / "good").mkdir()
    for i in range(6):
        (tmp_path / "good" / f"{i}.png").write_bytes(encode(square_image((255, 0, 0)), "PNG"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"nope")
    from export.data.dataset import DatasetError
    from export.training.config import TrainConfig
    from export.training.train import train

    with pytest.raises(DatasetError, match=f"{tmp_path / 'bad'}: no decodable training image"):
        train(
            TrainConfig(data=str(tmp_path), run_dir=str(tmp_path / "run"), **TINY, **FAST_TRAINING)
        )
