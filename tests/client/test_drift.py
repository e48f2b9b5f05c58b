"""xfer-drift on hand-made scored rows with known distributions (exact TV distance, chi-square,
OOD rate and histograms), the three references (a bottlenecks directory's metadata.json, a
reference scored file, the first window), the thresholds' exit 4 and the input errors' exit 2."""

from __future__ import annotations

import json
import math

import pytest
from pngcheck import png_pixels

from client.drift import main


def row(top1, score, **extra):
    other = "b" if top1 != "b" else "a"
    return {"uri": f"x/{top1}-{score}.png", "labels": [top1, other], "scores": [score, 1 - score],
            "model_version": 1, **extra}  # fmt: skip


# Window 0 (rows 1-4): top-1 a, a, a, b — the priors exactly; two rows carry is_ood, one true.
# Window 1 (rows 5-8): top-1 a, b, b, c — a 1/4, b 1/2, c 1/4; no row carries is_ood.
# Window 2 (row 9): an error row only.
ROWS = [
    row("a", 0.9, ood_score=1.0, is_ood=False),
    row("a", 0.6, ood_score=3.0, is_ood=True),
    row("a", 1.0),
    row("b", 0.3),
    row("a", 0.9),
    row("b", 0.9),
    row("b", 0.9),
    row("c", 0.9),
    {"uri": "x/bad.png", "error": "INVALID_ARGUMENT: not a decodable image"},
]
# Pearson's statistic of window 1 over the classes of prior > 0 (a, b): 3 rows expected 3/4 a,
# 1/4 b; observed 1 a, 2 b. One degree of freedom: p = erfc(sqrt(x / 2)).
CHI2 = (1 - 2.25) ** 2 / 2.25 + (2 - 0.75) ** 2 / 0.75
P_VALUE = math.erfc(math.sqrt(CHI2 / 2))


def write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def bottlenecks(tmp_path):
    """The files of an xfer-bottlenecks directory that xfer-drift reads, in their real format:
    metadata.json's counts {split: {label: images}} and labels (c: a class no training image)."""
    directory = tmp_path / "bottlenecks"
    directory.mkdir()
    metadata = {
        "labels": ["a", "b", "c"],
        "num_classes": 3,
        "counts": {"train": {"a": 30, "b": 10}, "test": {"a": 1, "b": 1, "c": 2}},
        "total": 44,
        "feature_dim": 8,
        "shards": ["features-00000-of-00001.tfrecord.gz"],
    }
    (directory / "metadata.json").write_text(json.dumps(metadata))
    (directory / "labels.txt").write_text("a\nb\nc\n")
    return str(directory)


def run(capsys, *argv) -> tuple[int, dict | None, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def test_exact_figures_against_the_training_priors(tmp_path, capsys, bottlenecks):
    scored = write(tmp_path / "scored.jsonl", ROWS)
    out = tmp_path / "drift"
    argv = [scored, "--baseline", bottlenecks, "--window-rows", "4", "--bins", "4"]
    code, report, _ = run(capsys, *argv, "--out", str(out))
    assert code == 0 and report["alerts"] == []
    assert report["reference"] == {
        "kind": "bottlenecks",
        "source": f"{bottlenecks}/metadata.json",
        "split": "train",
        "rows": 40,
        "priors": {"a": 0.75, "b": 0.25, "c": 0.0},
    }
    first, second, third = report["windows"]
    assert (first["first_line"], first["last_line"], third["first_line"]) == (1, 4, 9)
    assert first["ood"] == {"rows": 2, "flagged": 1, "rate": 0.5, "mean_score": 2.0}
    assert first["tv_distance"] == 0
    assert first["chi_square"] == {
        "statistic": 0.0, "dof": 1, "p_value": 1.0, "outside_reference": 0
    }  # fmt: skip
    assert first["confidence"]["histogram"] == [0, 1, 1, 2]  # 0.3 | 0.6 | 0.9, 1.0
    assert second["predicted"] == {"a": 1, "b": 2, "c": 1}
    assert second["ood"]["rate"] is None
    assert second["tv_distance"] == pytest.approx(0.5)  # ½(|¼−¾| + |½−¼| + |¼−0|)
    chi = second["chi_square"]
    assert chi["statistic"] == pytest.approx(CHI2) and chi["dof"] == 1
    assert chi["p_value"] == pytest.approx(P_VALUE) and chi["outside_reference"] == 1
    assert (third["rows"], third["scored"], third["errors"]) == (1, 0, 1)
    assert third["tv_distance"] is None and third["chi_square"]["p_value"] is None
    assert json.loads((out / "drift.json").read_text())["windows"] == report["windows"]
    png_pixels((out / "drift.png").read_bytes())
    # The test split as the reference: a 1/4, b 1/4, c 1/2.
    _, report, _ = run(capsys, *argv, "--baseline-split", "test")
    assert report["windows"][1]["tv_distance"] == pytest.approx(0.25)


@pytest.mark.parametrize(
    "flags, crossed",
    [
        (["--max-tv", "0.4"], [(1, "max_tv", 0.5)]),
        (["--max-tv", "0.5"], []),  # not above
        (["--max-ood-rate", "0.4"], [(0, "max_ood_rate", 0.5)]),  # window 1: no OOD figure
        (["--min-p-value", "0.05"], []),
        (["--min-p-value", "0.1"], [(1, "min_p_value", P_VALUE)]),
        (
            ["--max_tv", "0.4", "--max_ood_rate", "0.4"],
            [(0, "max_ood_rate", 0.5), (1, "max_tv", 0.5)],
        ),
    ],
)
def test_a_crossed_threshold_exits_4(tmp_path, capsys, bottlenecks, flags, crossed):
    scored = write(tmp_path / "scored.jsonl", ROWS)
    code, report, _ = run(capsys, scored, "--baseline", bottlenecks, "--window-rows", "4", *flags)
    assert code == (4 if crossed else 0)
    found = [(a["window"], a["threshold"], a["value"]) for a in report["alerts"]]
    assert found == [(w, t, pytest.approx(v)) for w, t, v in crossed]


def test_reference_rows_and_the_first_window(tmp_path, capsys):
    scored = write(tmp_path / "scored.jsonl", ROWS)
    reference = write(tmp_path / "ref.jsonl", ROWS[:4])  # top-1 a, a, a, b
    for argv in (["--baseline-rows", reference], []):
        code, report, _ = run(capsys, scored, "--window-rows", "4", "--max-tv", "0.4", *argv)
        assert code == 4
        assert report["reference"]["priors"] == {"a": 0.75, "b": 0.25}
        assert report["reference"]["rows"] == 4
        assert [w["tv_distance"] for w in report["windows"]] == [0, pytest.approx(0.5), None]
        assert report["windows"][1]["chi_square"]["statistic"] == pytest.approx(CHI2)
    assert report["reference"]["kind"] == "first_window"


def test_input_errors_exit_2_naming_the_file_and_line(tmp_path, capsys, bottlenecks):
    torn = tmp_path / "torn.jsonl"
    torn.write_text(json.dumps(ROWS[0]) + "\n\n" + '{"uri": "x/half.png", "lab\n')
    code, _, err = run(capsys, str(torn))
    assert code == 2 and f"{torn}:3: not a JSON row" in err
    listed = write(tmp_path / "list.jsonl", [ROWS[0], [1, 2]])
    code, _, err = run(capsys, listed)
    assert code == 2 and f"{listed}:2: not a JSON object" in err
    scored = write(tmp_path / "scored.jsonl", ROWS)
    code, _, err = run(capsys, scored, "--baseline", bottlenecks, "--baseline-split", "dev")
    assert code == 2 and f"{bottlenecks}/metadata.json: no class counts of split 'dev'" in err
    code, _, err = run(capsys, str(tmp_path / "missing.jsonl"))
    assert code == 2 and "missing.jsonl: no such file" in err


def test_no_rows_exits_1(tmp_path, capsys):
    code, report, _ = run(capsys, write(tmp_path / "empty.jsonl", []))
    assert code == 1 and report["windows"] == [] and report["rows"] == 0


def timed(rows, times, key="scored_at"):
    return [{**r, key: t} for r, t in zip(rows, times)]


def test_time_windows_by_scored_at_and_mtime(tmp_path, capsys, caplog):
    # Out of file order, across three 10-minute windows (12:00, 12:10 empty, 12:20, 12:30);
    # the same instants written with "Z", "+00:00", another zone and no zone (UTC).
    times = [
        "2025-03-01T12:01:00.000+00:00",  # a 0.9 ood
        "2025-03-01T12:25:00Z",  # a 0.6
        "2025-03-01T13:09:59.999+01:00",  # 12:09:59.999 UTC: a 1.0
        "2025-03-01T12:31:00",  # b 0.3
        "2025-03-01T12:20:00.000+00:00",  # a 0.9: on a window's start
    ]
    rows = timed(ROWS[:5], times)
    scored = write(tmp_path / "scored.jsonl", rows)
    code, report, _ = run(capsys, scored, "--window-by", "scored_at", "--window-minutes", "10")
    assert code == 0
    assert report["window"] == {"by": "scored_at", "minutes": 10.0, "untimed": 0}
    spans = [(w["start"], w["end"], w["rows"], w["first_line"], w["last_line"])
             for w in report["windows"]]  # fmt: skip
    assert spans == [
        ("2025-03-01T12:00:00.000+00:00", "2025-03-01T12:10:00.000+00:00", 2, 1, 3),
        ("2025-03-01T12:20:00.000+00:00", "2025-03-01T12:30:00.000+00:00", 2, 2, 5),
        ("2025-03-01T12:30:00.000+00:00", "2025-03-01T12:40:00.000+00:00", 1, 4, 4),
    ]
    assert [w["index"] for w in report["windows"]] == [0, 1, 2]
    assert report["windows"][0]["ood"] == {"rows": 1, "flagged": 0, "rate": 0.0, "mean_score": 1.0}
    assert report["windows"][2]["tv_distance"] == 1.0  # all b against the first window's all a

    # mtime; one row without it (an unreadable file has none): counted, in no window.
    rows = timed(ROWS[:5], times, "mtime")
    del rows[3]["mtime"]
    scored = write(tmp_path / "mtime.jsonl", rows)
    out = tmp_path / "drift"
    code, report, _ = run(capsys, scored, "--window-by", "mtime", "--window-minutes", "60",
                          "--out", str(out))  # fmt: skip
    assert code == 0 and [w["rows"] for w in report["windows"]] == [4]
    assert report["window"]["untimed"] == 1 and report["window"]["first_untimed_line"] == 4
    assert "1 row(s) without mtime (the first on line 4)" in caplog.text
    png_pixels((out / "drift.png").read_bytes())


def test_time_windows_need_the_field(tmp_path, capsys):
    old = write(tmp_path / "old.jsonl", ROWS)  # scored before rows carried a time
    code, _, err = run(capsys, old, "--window-by", "scored_at")
    assert code == 2
    assert f"{old}: no row has the field 'scored_at' that --window-by scored_at needs" in err
    bad = write(tmp_path / "bad.jsonl", timed(ROWS[:2], ["2025-03-01T12:00:00Z", "noon"]))
    code, _, err = run(capsys, bad, "--window-by", "scored_at")
    assert code == 2 and f"{bad}:2: scored_at 'noon' is not an ISO-8601 time" in err
    code, _, err = run(capsys, bad, "--window-by", "mtime", "--window-minutes", "0")
    assert code == 2 and "--window-minutes must be above 0" in err
