"""xfer-evaluate on a hand-written prediction file: the figures are known in advance."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from client.evaluate import main


@pytest.fixture
def predictions(tmp_path, good_images):
    """10 labelled rows: top-1 right 6 times, in the top 5 (here top 3) 8 times; 2 noise rows."""
    cases = [
        ("red", ["red", "blue", "green"]),
        ("red", ["red", "green", "blue"]),
        ("red", ["blue", "red", "green"]),  # wrong, in top-k
        ("red", ["green", "blue", "cat"]),  # wrong, not in top-k
        ("green", ["green", "red", "blue"]),
        ("green", ["green", "blue", "red"]),
        ("green", ["red", "green", "blue"]),  # wrong, in top-k
        ("blue", ["blue", "red", "green"]),
        ("blue", ["blue", "green", "red"]),
        ("blue", ["cat", "dog", "fish"]),  # wrong, not in top-k
    ]
    path = tmp_path / "predictions.jsonl"
    with open(path, "w") as f:
        for i, (label, labels) in enumerate(cases):
            row = {"uri": str(good_images[i]), "label": label, "labels": labels,
                   "scores": [0.7, 0.2, 0.1], "model_version": 3,
                   "ood_score": 10.0 + i, "is_ood": i in (3, 9)}  # fmt: skip
            f.write(json.dumps(row) + "\n")
        f.write(
            json.dumps({"uri": "x.jpg", "label": "red", "error": "INVALID_ARGUMENT: bad"}) + "\n"
        )
        f.write(
            json.dumps({"uri": "y.jpg", "labels": ["red"], "scores": [1.0], "model_version": 3})
        )
        f.write("\n")
    return path


def test_accuracy_topk_report_and_figures(predictions, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main([str(predictions), "--out-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rows"] == 12 and metrics["evaluated"] == 10
    assert metrics["errors"] == 1 and metrics["unlabelled"] == 1
    assert metrics["accuracy"] == pytest.approx(0.6)
    assert metrics["top_k_accuracy"] == pytest.approx(0.8)
    assert metrics["classes"] == ["blue", "cat", "green", "red"]
    # rows: true class, columns: predicted (order of `classes`)
    assert metrics["confusion_matrix"] == [[2, 1, 0, 0], [0, 0, 0, 0], [0, 0, 2, 1], [1, 0, 1, 2]]
    red = metrics["per_class"]["red"]
    assert red["precision"] == pytest.approx(2 / 3) and red["recall"] == pytest.approx(0.5)
    assert red["f1-score"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert "precision" in (out / "report.txt").read_text()
    for name in ("confusion_matrix.png", "misclassified.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width > 100 and image.height > 100
    # the OOD rate over the scored rows that carry is_ood: 2 of 10 (y.jpg has none)
    assert metrics["ood_rows"] == 10 and metrics["ood_rate"] == pytest.approx(0.2)
    assert "accuracy 0.6000, top-5 0.8000; out of distribution 0.2000" in capsys.readouterr().out


def test_no_labelled_rows_is_exit_1(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        json.dumps({"uri": "a", "labels": ["x"], "scores": [1.0], "model_version": 1}) + "\n"
    )
    assert main([str(path), "--out-dir", str(tmp_path / "e")]) == 1
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["accuracy"] is None


def test_score_then_evaluate_in_one_command(target, shapes_root, tmp_path):
    from client.cli import main as score_main

    out = tmp_path / "s.jsonl"
    code = score_main([str(shapes_root / "red"), str(shapes_root / "blue"), "--target", target,
                       "--model-name", "shapes", "--output", str(out), "--labels-from-folders",
                       "--evaluate", "--quiet"])  # fmt: skip
    assert code == 3  # broken.jpg
    metrics = json.loads((tmp_path / "s.jsonl.eval" / "metrics.json").read_text())
    assert metrics["evaluated"] == 80 and metrics["errors"] == 1
    assert metrics["accuracy"] > 0.9
