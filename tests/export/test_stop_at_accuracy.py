import csv
import json

import pytest
from testconfig import FAST_TRAINING, TINY

from export.cli.train import main as train_main
from export.training.config import TrainConfig
from export.training.train import train


def _train(data, run_dir, **extra):
    settings = {**TINY, **FAST_TRAINING, **extra}
    return train(TrainConfig(data=str(data), run_dir=str(run_dir), **settings))


def _epochs_in_history(run_dir) -> int:
    with open(run_dir / "history.csv") as f:
        return len(list(csv.DictReader(f)))


def test_low_target_stops_early_on_validation_accuracy(shapes_root, tmp_path):
    _train(shapes_root, tmp_path, stop_at_accuracy=0.6)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    record = metrics["stopped_at_accuracy"]
    assert record["monitor"] == "val_accuracy" and record["target"] == 0.6
    assert 1 <= record["epoch"] == metrics["epochs_run"] < FAST_TRAINING["epochs"]
    assert record["accuracy"] >= 0.6
    assert _epochs_in_history(tmp_path) == metrics["epochs_run"]
    # Stopped at the first epoch that reached the target, not later.
    assert all(v < 0.6 for v in _val_accuracies(tmp_path)[:-1])


def _val_accuracies(run_dir) -> list[float]:
    with open(run_dir / "history.csv") as f:
        return [float(row["val_accuracy"]) for row in csv.DictReader(f)]


def test_unreachable_target_runs_every_epoch(shapes_root, tmp_path):
    _train(shapes_root, tmp_path, stop_at_accuracy=0.99, epochs=3, learning_rate=1e-5)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["epochs_run"] == 3 == _epochs_in_history(tmp_path)
    assert metrics["stopped_at_accuracy"] == {
        "target": 0.99,
        "monitor": "val_accuracy",
        "epoch": None,
        "accuracy": None,
    }


def test_without_validation_it_watches_train_accuracy(shapes_root, tmp_path):
    _train(shapes_root, tmp_path, stop_at_accuracy=0.8, validation_percent=0.0)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["splits"]["validation"]["count"] == 0
    record = metrics["stopped_at_accuracy"]
    assert record["monitor"] == "accuracy"
    assert record["epoch"] == metrics["epochs_run"] < FAST_TRAINING["epochs"]


def test_cli_flag_and_out_of_range_target(shapes_root, tmp_path, caplog):
    base = ["--data", str(shapes_root), "--backbone", "tiny", "--weights", "none", "--no-progress"]
    assert train_main([*base, "--run-dir", str(tmp_path / "bad"), "--stop-at-accuracy", "1.5"]) == 2
    assert "stop_at_accuracy must be in (0, 1]" in caplog.text
    assert not (tmp_path / "bad").exists()  # refused before any work
    with pytest.raises(ValueError, match="stop_at_accuracy"):
        _train(shapes_root, tmp_path / "zero", stop_at_accuracy=0.0)
