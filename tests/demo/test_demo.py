"""`make demo`'s steps end to end on a small subset: Beam -> export v1 -> server -> gRPC scoring
and evaluation -> v2 published while scoring continues. The tiny backbone keeps it fast; the
real demo runs the same script on the digits with EfficientNet-Lite0."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.slow
def test_demo_script_end_to_end_with_hot_swap(shapes_root, tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "demo.py"),
            "--out",
            str(out),
            "--data",
            str(shapes_root),
            "--backbone",
            "tiny",
            "--weights",
            "none",
            "--epochs",
            "30",
            "--head-args",
            "--head softmax --learning-rate 0.01 --patience 0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "demo-summary.json").read_text())
    assert summary["swap_failed"] == 0
    seen = {v for r in summary["swap_rounds"] for v in r["versions"]}
    assert seen == {"1", "2"}, summary["swap_rounds"]
    assert summary["test_accuracy_grpc"] >= 0.9
    # The photos mixed into the scored set carry the model's OOD flag (on the digits the real
    # demo flags all of them; the tiny random backbone here only has to answer).
    ood = summary["ood"]
    assert ood["photos"] >= 5 and ood["digits"] > 0, ood
    rows = [
        json.loads(line) for line in (out / "scored-with-photos.jsonl").read_text().splitlines()
    ]
    assert all(isinstance(r["is_ood"], bool) for r in rows if not r.get("error")), rows[:2]
    # Versions 1 and 2 answered the same images (stable and canary) and were compared.
    shadow = [json.loads(line) for line in (out / "scored-shadow.jsonl").read_text().splitlines()]
    answered = [r for r in shadow if not r.get("error")]
    assert answered and all(r["model_version"] == 1 for r in answered), shadow[:2]
    assert all(r["shadow"]["model_version"] == 2 for r in answered), shadow[:2]
    assert summary["shadow"]["compared"] == len(answered)
    assert 0 <= summary["shadow"]["agreement"] <= 1
    for name in [
        "bottlenecks/metadata.json",
        f"models/{shapes_root.name}/1/saved_model.pb",
        f"models/{shapes_root.name}/2/saved_model.pb",
        "scored-v1.jsonl",
        "evaluation/confusion_matrix.png",
        "runs/v1/curves.png",
        "test.csv",
        "compare/compare-versions.json",
        "compare/compare-versions.png",
    ]:
        assert (out / name).exists(), name
    assert "outputs in" in proc.stdout and "hot swap" in proc.stdout
