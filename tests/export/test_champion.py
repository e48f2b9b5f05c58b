"""Champion/challenger: xfer-export compares the candidate with the version published now, on the
same test images, and refuses a worse one unless --force (docs/export.md, "The champion")."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from servertools import copy_version
from testconfig import FAST_TRAINING, TINY

from export.publishing.champion import (
    FORCED,
    NO_CHAMPION,
    PASSED,
    REFUSED,
    Champion,
    Thresholds,
    compare,
    judge,
    precheck,
    regressions,
)
from export.publishing.gate import GateError, GateReport
from export.publishing.publish import TMP_PREFIX
from export.publishing.versions import list_versions

LABELS = ["a", "b", "c"]


def one_hot(names: list[str], labels: list[str]) -> np.ndarray:
    scores = np.full((len(names), len(labels)), 0.1, np.float32)
    for i, name in enumerate(names):
        scores[i, labels.index(name)] = 0.8
    return scores


def test_figures_are_exact_on_hand_made_scores():
    truth = ["a", "a", "a", "a", "b", "b", "c", "c", "c", "c"]
    champion = ["a", "a", "a", "a", "b", "b", "c", "c", "c", "a"]  # 9/10
    candidate = ["a", "a", "a", "b", "b", "b", "c", "c", "c", "c"]  # 9/10, another mistake
    figures = compare(truth, one_hot(candidate, LABELS), LABELS, one_hot(champion, LABELS), LABELS)
    assert figures["images"] == 10
    assert figures["accuracy"] == {"candidate": 0.9, "champion": 0.9, "change_points": 0.0}
    assert figures["agreement"] == 0.8
    assert figures["class_recall"]["a"] == {
        "candidate": 0.75,
        "champion": 1.0,
        "change_points": -25.0,
    }
    assert figures["class_recall"]["c"]["change_points"] == 25.0
    reasons = regressions(figures, Thresholds(0.5, 5.0))
    assert len(reasons) == 1 and "recall of 'a' 0.7500" in reasons[0]
    assert regressions(figures, Thresholds(0.5, 25.0)) == []


def test_accuracy_threshold_and_labels_matched_by_name():
    truth = ["a"] * 10 + ["b"] * 10
    champion_labels = ["b", "a"]  # another order: compared by name
    champion = compare(truth, one_hot(truth, LABELS), LABELS, one_hot(truth, champion_labels),
                       champion_labels)  # fmt: skip
    assert champion["agreement"] == 1.0
    assert champion["labels"]["added"] == ["c"] and champion["labels"]["removed"] == []
    worse = ["a"] * 10 + ["b"] * 9 + ["a"]  # 19/20: -5 points of accuracy, -10 of b's recall
    figures = compare(truth, one_hot(worse, LABELS), LABELS, one_hot(truth, LABELS), LABELS)
    assert figures["accuracy"]["change_points"] == -5.0
    assert [r.split()[0] for r in regressions(figures, Thresholds(4.9, 10.0))] == ["accuracy"]
    assert regressions(figures, Thresholds(5.0, 10.0)) == []


def test_judge_outcomes():
    report = GateReport(["serving_default"], 0, {})
    assert judge(None, "test", [], report, LABELS, Thresholds(0.5, 5), False)["outcome"] == (
        NO_CHAMPION
    )
    broken = Champion(3, Path("m/3"), [], "cannot read assets/labels.txt")
    refused = judge(broken, "test", ["a"], report, LABELS, Thresholds(0.5, 5), False)
    assert refused["outcome"] == REFUSED and "could not be evaluated" in refused["regressions"][0]
    forced = judge(broken, "test", ["a"], report, LABELS, Thresholds(0.5, 5), True)
    assert forced["outcome"] == FORCED and forced["forced"] is True
    other = Champion(3, broken.path, ["a", "b", "d"])
    early = precheck(other, LABELS, Thresholds(0.5, 5), False)
    assert early["outcome"] == REFUSED
    assert early["regressions"] == [
        "labels differ from the champion's (added ['c'], removed ['d'])"
    ]
    assert precheck(other, LABELS, Thresholds(0.5, 5), True) is None  # --force: compare anyway
    assert (
        precheck(Champion(3, broken.path, ["c", "b", "a"]), LABELS, Thresholds(0.5, 5), False)
        is None
    )


# ---------------------------------------------------------------- real exports, tiny backbone


@pytest.fixture
def base_with_champion(exported, tmp_path):
    """A model base path whose version 1 is the session's exported `shapes` model."""
    base = tmp_path / "models" / "shapes"
    copy_version(exported.path, base, 1)
    return base


@pytest.fixture(scope="module")
def worse(shapes_root, tmp_path_factory):
    """The same data, one epoch at a learning rate that barely moves the head: deterministic
    (seeded) and far below the session's model."""
    from export.experiments.report import train_and_report
    from export.training.config import TrainConfig

    config = TrainConfig(
        data=str(shapes_root),
        run_dir=str(tmp_path_factory.mktemp("worse-run")),
        **TINY,
        **{**FAST_TRAINING, "epochs": 1, "learning_rate": 1e-6},
    )
    return train_and_report(config)


def card(path) -> dict:
    return json.loads((path / "assets.extra" / "model_card.json").read_text())


def test_first_version_records_no_champion(exported):
    assert card(exported.path)["champion"]["outcome"] == NO_CHAMPION


def test_worse_candidate_is_refused_with_exit_1_and_nothing_written(
    base_with_champion, shapes_root, tmp_path, caplog
):
    from export.cli.export import main

    before = sorted(p.name for p in base_with_champion.iterdir())
    run_dir = tmp_path / "run"
    args = ["--data", str(shapes_root), "--model-base-path", str(base_with_champion)]
    args += ["--epochs", "1", "--learning-rate", "1e-6", "--no-progress", "--run-dir", str(run_dir)]
    args += ["--backbone", TINY["backbone"], "--weights", TINY["weights"]]
    assert main(args) == 1
    assert sorted(p.name for p in base_with_champion.iterdir()) == before
    message = " ".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert "the champion, version 1, stays" in message
    assert "--max-regression 0.5" in message and "points" in message
    # The run keeps the comparison: metrics.json and the report.
    section = json.loads((run_dir / "metrics.json").read_text())["champion"]
    assert section["outcome"] == REFUSED and section["accuracy"]["change_points"] < -0.5
    assert "Against the champion (xfer-export): refused" in (run_dir / "report.html").read_text()


def test_equal_candidate_is_published_with_the_comparison(
    base_with_champion, export_config, trained
):
    from export.publishing.exporter import export_model

    config = dataclasses.replace(export_config, model_base_path=str(base_with_champion))
    result = export_model(config, result=trained)
    assert result.version == 2
    section = card(result.path)["champion"]
    assert section["outcome"] == PASSED and section["version"] == 1
    assert section["split"] == "test" and section["images"] > 0
    assert section["accuracy"]["change_points"] == 0.0 and section["agreement"] == 1.0
    assert set(section["class_recall"]) == set(trained.labels)
    assert section["regressions"] == [] and section["forced"] is False


def test_force_publishes_a_worse_candidate_and_says_so(base_with_champion, export_config, worse):
    from export.publishing.exporter import export_model

    config = dataclasses.replace(export_config, model_base_path=str(base_with_champion), force=True)
    result = export_model(config, result=worse)
    section = card(result.path)["champion"]
    assert result.version == 2 and section["outcome"] == FORCED and section["forced"] is True
    assert section["accuracy"]["candidate"] < section["accuracy"]["champion"]
    assert section["regressions"]


def test_champion_with_other_labels_or_unloadable_is_refused(
    base_with_champion, export_config, trained
):
    from export.publishing.exporter import export_model

    labels = base_with_champion / "1" / "assets" / "labels.txt"
    names = labels.read_text().splitlines()
    labels.write_text("\n".join(["crimson", *names[1:]]) + "\n")
    config = dataclasses.replace(export_config, model_base_path=str(base_with_champion))
    # Known before the candidate is built: refused at once.
    with pytest.raises(GateError, match=r"labels differ .*added \['" + names[0]):
        export_model(config, result=trained)
    labels.write_text("\n".join(names) + "\n")
    (base_with_champion / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
    with pytest.raises(GateError, match="champion .*/1 could not be evaluated"):
        export_model(config, result=trained)
    assert list_versions(base_with_champion) == [1]
    assert not [p for p in base_with_champion.iterdir() if p.name.startswith(TMP_PREFIX)]
