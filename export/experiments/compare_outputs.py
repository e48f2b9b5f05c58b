"""xfer-compare's outputs: comparison.json, .csv, .md (the table also printed) and .png."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from export import fsutil
from export.experiments.compare_entries import BASELINE

COLUMNS = (
    "name",
    "kind",
    "status",
    "accuracy",
    "accuracy_split",
    "test_accuracy",
    "validation_accuracy",
    "train_seconds",
    "total_seconds",
    "feature_dim",
    "param_count",
    "images_per_second",
    "epochs_run",
    "stopped_at_epoch",
    "image_size",
    "data_hash",
    "run_dir",
    "error",
)


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    header = (
        "| entry | accuracy | validation accuracy | train s | total s | feature dim | params "
        "| images/s | epochs | status |"
    )
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for row in rows:
        accuracy = _fmt(row["accuracy"])
        if row["accuracy_split"]:
            accuracy += f" ({row['accuracy_split']})"
        status = row["status"] if row["status"] == "ok" else f"error: {row['error']}"
        cells = [
            row["name"],
            accuracy,
            _fmt(row["validation_accuracy"]),
            _fmt(row["train_seconds"], 1),
            _fmt(row["total_seconds"], 1),
            _fmt(row["feature_dim"]),
            _fmt(row["param_count"]),
            _fmt(row["images_per_second"], 1),
            _fmt(row["epochs_run"]),
            status,
        ]
        cleaned = [" ".join(c.replace("|", "\\|").split()) for c in cells]
        lines.append("| " + " | ".join(cleaned) + " |")
    return "\n".join(lines) + "\n"


def rows_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def comparison_png(rows: list[dict]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ok = [r for r in rows if r["status"] == "ok"]
    names = [r["name"] for r in ok]
    fig = Figure(figsize=(max(8.0, 1.6 * len(ok) + 4), 8))
    FigureCanvasAgg(fig)
    panels = (
        ("accuracy (test; validation without test)", "accuracy", 3),
        ("training time (s): fit, and total incl. features", "train_seconds", 1),
        ("feature dimension (baseline: width before softmax)", "feature_dim", 0),
        ("images/s (forward pass)", "images_per_second", 1),
    )
    x = np.arange(len(ok))
    for i, (title, key, digits) in enumerate(panels, start=1):
        ax = fig.add_subplot(2, 2, i)
        if key == "train_seconds":
            totals = [r["total_seconds"] or 0 for r in ok]
            ax.bar(x, totals, color="#c6dbef", label="total")
            ax.bar(x, [r[key] or 0 for r in ok], color="#2171b5", width=0.5, label="fit")
            if ok:
                ax.legend(fontsize=8)
        else:
            values = [r[key] or 0 for r in ok]
            bars = ax.bar(
                x, values, color=["#fd8d3c" if r["kind"] == BASELINE else "#2171b5" for r in ok]
            )
            ax.bar_label(bars, labels=[_fmt(r[key], digits) for r in ok], fontsize=7)
        if key == "accuracy":
            ax.set_ylim(0, 1.08)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    failed = [r["name"] for r in rows if r["status"] != "ok"]
    if failed:
        fig.suptitle("failed: " + ", ".join(failed), color="#cf222e", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write_outputs(output: Path, rows: list[dict], report: dict) -> str:
    table = markdown_table(rows)
    fsutil.atomic_write_json(output / "comparison.json", {**report, "entries": rows})
    fsutil.atomic_write_text(output / "comparison.csv", rows_csv(rows))
    fsutil.atomic_write_text(output / "comparison.md", table)
    fsutil.atomic_write_bytes(output / "comparison.png", comparison_png(rows))
    return table
