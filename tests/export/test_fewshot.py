import csv
import json

import numpy as np
import pytest
from testconfig import TINY

from export.cli.fewshot import main

SHOTS, REPEATS, SEED = (1, 5, 10), 3, 7
HEAD = ["--epochs", "10", "--learning-rate", "0.01", "--no-progress"]


def _run(out, *source, shots=SHOTS, repeats=REPEATS) -> int:
    args = [*source, "--output", str(out), "--shots", ",".join(map(str, shots))]
    return main([*args, "--repeats", str(repeats), "--seed", str(SEED), *HEAD])


@pytest.fixture(scope="module")
def from_images(shapes_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("fewshot")
    backbone = ["--backbone", TINY["backbone"], "--weights", TINY["weights"]]
    assert _run(out, "--data", str(shapes_root), *backbone) == 0
    return out, json.loads((out / "fewshot.json").read_text())


def test_repeats_per_n_with_valid_accuracies(from_images):
    _, report = from_images
    results = {r["shots"]: r for r in report["results"]}
    assert sorted(results) == list(SHOTS) and report["skipped_shots"] == []
    total = len(report["images"])
    assert total == 120  # the 2 undecodable files are not images of the protocol
    for n, r in results.items():
        assert r["repeats"] == len(r["accuracies"]) == REPEATS
        assert r["seeds"] == [SEED + i for i in range(REPEATS)]
        assert all(0 <= a <= 1 for a in r["accuracies"])
        assert r["mean"] == pytest.approx(np.mean(r["accuracies"]))
        assert r["std"] == pytest.approx(np.std(r["accuracies"], ddof=1))
        assert r["train_images"] == 3 * n and r["test_images"] == [total - 3 * n] * REPEATS
    assert results[10]["mean"] >= results[1]["mean"]
    assert results[10]["mean"] > 0.6  # chance is 1/3


def test_draws_take_n_per_class_and_differ_between_seeds(from_images):
    _, report = from_images
    images = report["images"]
    for r in report["results"]:
        draws = [tuple(d) for d in r["train_indices"]]
        assert len(set(draws)) == REPEATS  # seeds S, S+1, S+2 draw different images
        for draw in draws:
            classes = [images[i].split("/")[-2] for i in draw]
            assert sorted(classes) == sorted(["blue", "green", "red"] * r["shots"])
    one, five = (next(r for r in report["results"] if r["shots"] == n) for n in (1, 5))
    for a, b in zip(one["train_indices"], five["train_indices"]):
        assert set(a) <= set(b)  # a repeat's 5-shot draw contains its 1-shot draw


def test_csv_markdown_and_png(from_images):
    out, report = from_images
    with open(out / "fewshot.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(SHOTS) * REPEATS
    assert {int(r["shots"]) for r in rows} == set(SHOTS)
    table = (out / "fewshot.md").read_text().splitlines()
    assert len(table) == 2 + len(SHOTS)
    first = report["results"][0]
    assert table[2].startswith(f"| 1 | {first['mean']:.4f} ± {first['std']:.4f} | 3 | 117 |")
    png = (out / "fewshot.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_bottlenecks_give_the_same_draws_and_accuracies(from_images, bottlenecks_dir, tmp_path):
    """The Beam job's output for the same images (tests/conftest.py) gives the same protocol."""
    assert _run(tmp_path, "--bottlenecks", str(bottlenecks_dir), shots=(1, 5), repeats=2) == 0
    report = json.loads((tmp_path / "fewshot.json").read_text())
    _, reference = from_images
    assert report["backbone"]["name"] == "tiny" and report["images"] == reference["images"]
    for mine, theirs in zip(report["results"], reference["results"]):
        assert mine["shots"] == theirs["shots"]
        assert mine["train_indices"] == theirs["train_indices"][:2]
        assert mine["accuracies"] == pytest.approx(theirs["accuracies"][:2], abs=0.02)


def test_classes_with_too_few_images_skip_that_n(bottlenecks_dir, tmp_path, caplog):
    source = ["--bottlenecks", str(bottlenecks_dir)]
    assert _run(tmp_path / "a", *source, shots=(1, 40), repeats=1) == 1
    assert "40-shot skipped: these classes have <= 40 images" in caplog.text
    assert "blue (40), green (40), red (40)" in caplog.text
    report = json.loads((tmp_path / "a" / "fewshot.json").read_text())
    assert [r["shots"] for r in report["results"]] == [1]
    assert report["skipped_shots"] == [
        {"shots": 40, "classes": {"blue": 40, "green": 40, "red": 40}}
    ]
    assert "| 40 | skipped" in (tmp_path / "a" / "fewshot.md").read_text()
    assert _run(tmp_path / "b", *source, shots=(50,)) == 2
    assert not (tmp_path / "b").exists()
