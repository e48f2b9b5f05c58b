"""Training says which epoch's weights it kept, and why (issue: early stopping restored epoch 1
while the log showed later epochs at higher accuracy, and nothing said so)."""

from __future__ import annotations

import csv
import json
import logging

from testconfig import FAST_TRAINING, TINY

from export.experiments.report import train_and_report
from export.training.config import TrainConfig
from export.training.stopping import kept_epoch, warn_small_validation


def test_ties_keep_the_earlier_epoch_and_say_so():
    history = {"accuracy": [0.5, 0.8, 0.9, 1.0], "val_accuracy": [1.0, 1.0, 0.5, 1.0]}
    kept = kept_epoch(history, patience=10)
    assert (kept["epoch"], kept["of"], kept["value"]) == (1, 4, 1.0)
    assert "2 later epochs tied it" in kept["reason"] and "earlier" in kept["reason"]


def test_the_best_epoch_is_kept_not_the_last():
    kept = kept_epoch({"val_accuracy": [0.5, 0.9, 0.7]}, patience=3)
    assert (kept["epoch"], kept["of"], kept["monitor"]) == (2, 3, "val_accuracy")
    assert "no later epoch exceeded it" in kept["reason"]
    assert kept_epoch({"val_accuracy": [0.5, 0.9]}, patience=3)["reason"].endswith("last epoch's")


def test_without_early_stopping_the_last_epoch_is_kept():
    no_validation = kept_epoch({"accuracy": [0.1, 0.2, 0.3]}, patience=10)
    assert (no_validation["epoch"], no_validation["reason"]) == (3, "no validation images")
    off = kept_epoch({"accuracy": [0.1, 0.2], "val_accuracy": [0.9, 0.1]}, patience=0)
    assert (off["epoch"], off["reason"]) == (2, "early stopping is off (patience 0)")


def test_small_validation_classes_are_named(caplog):
    with caplog.at_level(logging.WARNING):
        assert warn_small_validation({"a": 4, "b": 5, "c": 0}) == ["a", "c"]
    assert "fewer than 5 images in 2 of 3 classes (a: 4, c: 0)" in caplog.text
    caplog.clear()
    assert warn_small_validation({"a": 5}) == [] and not caplog.text


def test_a_run_records_logs_and_reports_the_kept_epoch(shapes_root, tmp_path, caplog):
    config = TrainConfig(
        data=str(shapes_root),
        run_dir=str(tmp_path),
        **TINY,
        **{**FAST_TRAINING, "epochs": 4, "patience": 3, "report": True},
    )
    with caplog.at_level(logging.INFO):
        train_and_report(config)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    with open(tmp_path / "history.csv") as f:
        val = [float(row["val_accuracy"]) for row in csv.DictReader(f)]
    kept = metrics["kept_epoch"]
    assert kept["epoch"] == val.index(max(val)) + 1 and kept["of"] == len(val)
    assert f"kept epoch {kept['epoch']} of {kept['of']}" in caplog.text
    # 40 images a class, 10% validation: 4 or so per class, below the 5 the warning asks for.
    per_class = metrics["splits"]["validation"]["per_class_count"]
    assert ("fewer than 5 images" in caplog.text) == any(n < 5 for n in per_class.values())
    report = (tmp_path / "report.html").read_text()
    assert f"epoch kept (head)</td><td>{kept['epoch']} of {kept['of']}" in report
