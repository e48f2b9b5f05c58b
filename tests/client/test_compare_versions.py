"""xfer-compare-versions on hand-made scored rows with known flips (exact figures), in both input
forms: one file of shadow rows, or two scored files matched by image."""

from __future__ import annotations

import json

import pytest
from pngcheck import png_pixels

from client.compare_versions import main


def answer(labels, scores, version):
    return {"labels": labels, "scores": scores, "model_version": version}


# (uri, label, A's answer, B's answer); A is version 1, B version 2.
PAIRS = [
    ("x/a1.jpg", "cat", (["cat", "dog"], [0.9, 0.1]), (["cat", "dog"], [0.8, 0.2])),
    ("x/a2.jpg", "cat", (["cat", "dog"], [0.6, 0.4]), (["dog", "cat"], [0.7, 0.3])),
    ("x/a3.jpg", "dog", (["dog", "fox"], [0.5, 0.3]), (["fox", "cat"], [0.9, 0.1])),
    ("x/a4.jpg", "fox", (["fox", "dog"], [0.7, 0.3]), (["fox", "dog"], [0.75, 0.25])),
]
# The OOD outputs of each answer (A's a4 has none: a version without the detector answered).
OOD_A = {"x/a1.jpg": (False, 1.0), "x/a2.jpg": (True, 5.0), "x/a3.jpg": (False, 2.0)}
OOD_B = {"x/a1.jpg": (True, 4.0), "x/a2.jpg": (True, 6.0), "x/a3.jpg": (False, 1.0),
         "x/a4.jpg": (True, 3.0)}  # fmt: skip


def ood(table: dict, uri: str) -> dict:
    flag, score = table.get(uri.removeprefix("./"), (None, None))
    return {} if flag is None else {"is_ood": flag, "ood_score": score}


def shadow_rows() -> list[dict]:
    rows = [
        {"uri": u, "label": t, **answer(*a, 1), **ood(OOD_A, u),
         "shadow": {**answer(*b, 2), **ood(OOD_B, u)}}
        for u, t, a, b in PAIRS
    ]  # fmt: skip
    rows.append({"uri": "x/a5.jpg", "label": "cat", "error": "INVALID_ARGUMENT: not an image"})
    rows.append(
        {"uri": "x/a6.jpg", **answer(["cat"], [1.0], 1), "shadow": {"error": "NOT_FOUND: no v7"}}
    )
    rows.append({"uri": "x/a7.jpg", **answer(["cat"], [1.0], 1)})  # scored without a shadow
    return rows


def write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def check_figures(report: dict) -> None:
    assert report["compared"] == 4 and report["flipped"] == 2 and report["agreement"] == 0.5
    assert report["model_versions"] == {"a": {"1": 4}, "b": {"2": 4}}
    assert report["accuracy"] == {"labelled": 4, "a": 1.0, "b": 0.5}
    assert report["flips"] == [
        {"a": "cat", "b": "dog", "count": 1},
        {"a": "dog", "b": "fox", "count": 1},
    ]
    assert report["classes"] == ["cat", "dog", "fox"]
    assert report["matrix"] == [[1, 1, 0], [0, 0, 1], [0, 0, 1]]
    top1 = report["score_shift"]["top1"]  # -0.1, +0.1, +0.4, +0.05
    assert (top1["count"], top1["mean"], top1["p50"], top1["min"], top1["max"]) == (
        4, 0.1125, 0.075, -0.1, 0.4)  # fmt: skip
    assert top1["p95"] == 0.355  # numpy's linear interpolation: 0.1 + 0.85 * 0.3
    own = report["score_shift"]["a_label"]  # -0.1, -0.3; a3's "dog" is not in B's top-k
    assert (own["count"], own["mean"], own["outside_b_top_k"]) == (2 + 1, -0.116667, 1)
    flips = report["top_flips"]
    assert [f["uri"] for f in flips] == ["x/a3.jpg", "x/a2.jpg"]
    assert flips[0]["drop"] == 0.4 and flips[0]["drop_is_lower_bound"] is True
    assert flips[1]["b_score_of_a_label"] == 0.3 and flips[1]["drop"] == 0.3
    assert flips[1]["a"] == {"label": "cat", "score": 0.6}
    assert flips[1]["b"] == {"label": "dog", "score": 0.7}
    assert report["ood"] == {
        "a": {"rows": 3, "flagged": 1, "rate": pytest.approx(1 / 3), "mean_score": 2.666667},
        "b": {"rows": 4, "flagged": 3, "rate": 0.75, "mean_score": 3.5},
        # a1-a3 carry both: a2 flagged by both, a1 by B only; B flags one more of the three
        "paired": {"rows": 3, "both": 1, "a_only": 0, "b_only": 1,
                   "rate_difference": pytest.approx(1 / 3)},
    }  # fmt: skip


def test_shadow_rows_give_exact_figures_json_and_png(tmp_path, capsys):
    scored = write(tmp_path / "scored.jsonl", shadow_rows())
    out = tmp_path / "cmp" / "comparison.json"
    assert main([scored, "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    check_figures(report)
    assert report["rows"] == {"rows": 7, "errors_a": 1, "errors_b": 1, "no_shadow": 1}
    assert json.loads(out.read_text()) == report
    assert report["files"]["png"] == str(tmp_path / "cmp" / "comparison.png")
    png_pixels((tmp_path / "cmp" / "comparison.png").read_bytes())


def test_two_files_are_matched_by_image_whatever_the_spelling(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    a = [{"uri": u, "label": t, **answer(*x, 1), **ood(OOD_A, u)} for u, t, x, _ in PAIRS]
    b = [{"uri": f"./{u}", "label": t, **answer(*y, 2), **ood(OOD_B, u)}
         for u, t, _, y in reversed(PAIRS)]  # fmt: skip
    a.append({"uri": "x/only-a.jpg", **answer(["cat"], [1.0], 1)})
    b.append({"uri": "x/only-b.jpg", **answer(["cat"], [1.0], 2)})
    b.append({"uri": str(tmp_path / "x" / "a9.jpg"), "error": "cannot read: gone"})
    a.append({"uri": "x/a9.jpg", **answer(["cat"], [1.0], 1)})
    files = [write(tmp_path / "a.jsonl", a), write(tmp_path / "b.jsonl", b)]
    assert main([*files, "--png", str(tmp_path / "f.png")]) == 0
    report = json.loads(capsys.readouterr().out)
    check_figures(report)
    assert report["rows"] == {"rows_a": 6, "rows_b": 6, "only_a": 1, "only_b": 1, "errors_b": 1}
    png_pixels((tmp_path / "f.png").read_bytes())


@pytest.mark.parametrize("argv, code", [([], 2), (["a", "b", "c"], 2), (["missing.jsonl"], 2)])
def test_usage_errors(argv, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == code


def test_nothing_answered_by_both_is_exit_1(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    scored = write(tmp_path / "s.jsonl", shadow_rows()[4:])
    assert main([scored]) == 1
    assert json.loads(capsys.readouterr().out)["compared"] == 0
    assert (tmp_path / "version-comparison.png").exists()
