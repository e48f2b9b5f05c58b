"""xfer-score --shadow-version(-label) against the local server's two versions of the session's
model (stable=1, canary=2), then xfer-compare-versions on what it wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from testconfig import MODEL

from client.cli import main as score
from client.compare_versions import main as compare

PRIMARY_KEYS = {"uri", "label", "labels", "scores", "model_version", "ood_score", "is_ood",
                "scored_at", "mtime"}  # fmt: skip


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_shadow_rows_carry_both_answers_then_compare(
    target, good_images, shapes_root, tmp_path, capsys
):
    out = tmp_path / "shadow.jsonl"
    broken = shapes_root / "blue" / "broken.jpg"
    inputs = [str(p) for p in good_images[:12]] + [str(broken)]
    args = ["--target", target, "--model-name", MODEL, "--output", str(out), "--quiet"]
    args += ["--labels-from-folders", "--batch-size", "5", "--version", "1"]
    assert score([*inputs, *args, "--shadow-version-label", "canary"]) == 3  # broken.jpg
    rows = {Path(r["uri"]).name: r for r in rows_of(out)}
    assert "shadow" not in rows["broken.jpg"] and "error" in rows["broken.jpg"]
    scored = [r for name, r in rows.items() if name != "broken.jpg"]
    assert len(scored) == 12
    for row in scored:
        assert set(row) == PRIMARY_KEYS | {"shadow"} and row["model_version"] == 1
        shadow = row["shadow"]
        assert set(shadow) == {"model_version", "labels", "scores", "ood_score", "is_ood"}
        assert shadow["model_version"] == 2
        # Version 2 is a copy of version 1: the same answer, the same OOD outputs.
        assert shadow["labels"] == row["labels"] and shadow["is_ood"] == row["is_ood"]
        assert max(abs(a - b) for a, b in zip(shadow["scores"], row["scores"])) < 1e-5
        assert shadow["ood_score"] == pytest.approx(row["ood_score"], rel=1e-5)
    capsys.readouterr()

    assert compare([str(out), "--out", str(tmp_path / "cmp.json")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["compared"] == 12 and report["agreement"] == 1.0 and report["flips"] == []
    assert report["model_versions"] == {"a": {"1": 12}, "b": {"2": 12}}
    assert report["rows"] == {"rows": 13, "errors_a": 1}
    assert abs(report["score_shift"]["top1"]["max"]) < 1e-5
    flagged = sum(row["is_ood"] for row in scored)
    assert report["ood"]["a"]["rows"] == report["ood"]["b"]["rows"] == 12
    assert report["ood"]["a"]["flagged"] == report["ood"]["b"]["flagged"] == flagged
    assert report["ood"]["paired"]["rate_difference"] == 0
    assert (tmp_path / "cmp.png").stat().st_size > 0


def test_a_failing_shadow_never_loses_the_primary_row(target, good_images, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    inputs = [str(p) for p in good_images[:4]]
    args = ["--target", target, "--model-name", MODEL, "--output", str(out)]
    assert score([*inputs, *args, "--shadow-version", "7"]) == 0  # no version 7 is served
    rows = rows_of(out)
    assert len(rows) == 4
    for row in rows:
        assert row["model_version"] == 2 and row["labels"]
        assert row["shadow"]["error"].startswith("NOT_FOUND")
    assert "shadow: versions -; top-1 agreement n/a over 0 rows, 4 shadow errors" in (
        capsys.readouterr().err
    )


def test_two_scored_files_compare_by_image(target, good_images, tmp_path, capsys):
    inputs = [str(p) for p in good_images[:6]]
    base = ["--target", target, "--model-name", MODEL, "--quiet"]
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert score([*inputs, *base, "--output", str(a), "--version", "1"]) == 0
    assert score([*reversed(inputs), *base, "--output", str(b), "--version", "2"]) == 0
    capsys.readouterr()
    assert compare([str(a), str(b), "--png", str(tmp_path / "ab.png")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["compared"] == 6 and report["agreement"] == 1.0
    assert report["model_versions"] == {"a": {"1": 6}, "b": {"2": 6}}


def test_shadow_flags_are_checked(tmp_path, capsys):
    base = ["x.jpg", "--target", "h:1", "--model-name", "m"]
    exclusive = ["--shadow-version", "1", "--shadow-version-label", "canary"]
    assert score([*base, "--output", str(tmp_path / "o.jsonl"), *exclusive]) == 2
    assert "exclusive" in capsys.readouterr().err
    assert score([*base, "--output", str(tmp_path / "o.csv"), "--shadow-version", "1"]) == 2
    assert "JSONL only" in capsys.readouterr().err
