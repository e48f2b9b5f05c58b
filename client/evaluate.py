"""`xfer-evaluate PREDICTIONS.jsonl`: how good were the scored predictions?

Reads rows that carry a ground-truth `label` (from `xfer-score --labels-from-folders`, or a list's
label column) and writes to `--out-dir`: `metrics.json` (accuracy, top-5 accuracy, per-class
precision/recall/F1 from scikit-learn's classification_report, counts), `report.txt`,
`confusion_matrix.png` and `misclassified.png` (a grid of wrong images with true and predicted
labels). Rows with an `error` or without a `label` are counted, not scored.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import tyro

from client.atomicfile import atomic_write
from client.cliargs import parse
from client.figures import save_figure
from client.inputs import read_bytes
from client.output import read_rows

log = logging.getLogger(__name__)


@dataclass
class EvaluateConfig:
    """Its fields are xfer-evaluate's flags."""

    predictions: tyro.conf.Positional[str] = field(
        default="", metadata={"help": "scored output of xfer-score (JSONL or CSV)"}
    )
    out_dir: str = field(default="evaluation", metadata={"help": "where the files are written"})
    top_k: int = field(default=5, metadata={"help": "k of the top-k accuracy"})
    max_misclassified: int = field(default=25, metadata={"help": "images in the grid"})


@dataclass
class Report:
    rows: int = 0
    evaluated: int = 0
    errors: int = 0
    unlabelled: int = 0
    accuracy: float | None = None
    top_k: int = 5
    top_k_accuracy: float | None = None
    classes: list[str] = field(default_factory=list)
    per_class: dict = field(default_factory=dict)
    confusion_matrix: list[list[int]] = field(default_factory=list)
    files: dict = field(default_factory=dict)
    ood_rows: int = 0  # scored rows with `is_ood` (a model with an OOD detector)
    ood_rate: float | None = None  # the share of those flagged out of distribution

    def as_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        def pct(x):
            return "n/a" if x is None else f"{x:.4f}"

        return (
            f"evaluated {self.evaluated} of {self.rows} rows ({self.errors} errors, "
            f"{self.unlabelled} without label): accuracy {pct(self.accuracy)}, "
            f"top-{self.top_k} {pct(self.top_k_accuracy)}"
            + (f"; out of distribution {pct(self.ood_rate)}" if self.ood_rows else "")
            + "; written to "
            + ", ".join(sorted(self.files.values()))
        )


def plot_confusion(matrix, classes: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=90)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = matrix.max() if matrix.size else 0
    if len(classes) <= 30:
        for i in range(len(classes)):
            for j in range(len(classes)):
                colour = "white" if matrix[i, j] > peak / 2 else "black"
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=colour)
    ax.set_title("confusion matrix")
    save_figure(fig, path)
    plt.close(fig)


def _load_thumbnail(uri: str):
    """The image for the grid, or None when it cannot be read any more."""
    import io

    import numpy as np
    from PIL import Image

    try:
        with Image.open(io.BytesIO(read_bytes(uri))) as image:
            image = image.convert("RGB")
            image.thumbnail((128, 128))
            return np.asarray(image)
    except Exception as exc:  # noqa: BLE001 - a missing image only blanks its cell
        log.warning("%s: cannot show (%s)", uri, exc)
        return None


def plot_misclassified(rows: list[dict], path: str) -> None:
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(1, min(5, len(rows)))
    lines = max(1, math.ceil(len(rows) / columns))
    fig, axes = plt.subplots(lines, columns, figsize=(2.6 * columns, 2.8 * lines), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        pixels = _load_thumbnail(row["uri"])
        if pixels is not None:
            ax.imshow(pixels)
        else:
            ax.text(0.5, 0.5, "(unreadable)", ha="center", va="center")
        score = row["scores"][0] if row.get("scores") else float("nan")
        ax.set_title(
            f"true: {row['label']}\npred: {row['labels'][0]} ({score:.2f})", fontsize=8, color="red"
        )
    if not rows:
        axes[0, 0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    fig.suptitle("misclassified (true / predicted)")
    save_figure(fig, path)
    plt.close(fig)


def evaluate(config: EvaluateConfig) -> Report:
    import numpy as np
    from sklearn.metrics import classification_report, confusion_matrix

    report = Report(top_k=config.top_k)
    truth: list[str] = []
    predicted: list[str] = []
    top_hits = 0
    wrong: list[dict] = []
    flagged = 0
    for row in read_rows(config.predictions):
        report.rows += 1
        if "error" in row:
            report.errors += 1
            continue
        if "is_ood" in row:
            report.ood_rows += 1
            flagged += bool(row["is_ood"])
        if not row.get("label"):
            report.unlabelled += 1
            continue
        labels = row.get("labels") or []
        truth.append(row["label"])
        predicted.append(labels[0] if labels else "")
        top_hits += row["label"] in labels[: config.top_k]
        if (not labels or labels[0] != row["label"]) and len(wrong) < config.max_misclassified:
            wrong.append(row)
    report.evaluated = len(truth)
    report.ood_rate = flagged / report.ood_rows if report.ood_rows else None
    os.makedirs(config.out_dir, exist_ok=True)
    if truth:
        classes = sorted(set(truth) | set(predicted))
        report.classes = classes
        report.accuracy = float(np.mean([t == p for t, p in zip(truth, predicted)]))
        report.top_k_accuracy = top_hits / len(truth)
        report.per_class = classification_report(
            truth, predicted, labels=classes, output_dict=True, zero_division=0
        )
        text = classification_report(truth, predicted, labels=classes, zero_division=0)
        matrix = confusion_matrix(truth, predicted, labels=classes)
        report.confusion_matrix = matrix.tolist()
        files = {
            "report": os.path.join(config.out_dir, "report.txt"),
            "confusion_matrix": os.path.join(config.out_dir, "confusion_matrix.png"),
            "misclassified": os.path.join(config.out_dir, "misclassified.png"),
        }
        atomic_write(files["report"], text.encode())
        plot_confusion(matrix, classes, files["confusion_matrix"])
        plot_misclassified(wrong, files["misclassified"])
        report.files.update(files)
    else:
        log.warning("%s: no labelled, scored rows to evaluate", config.predictions)
    report.files["metrics"] = os.path.join(config.out_dir, "metrics.json")
    atomic_write(report.files["metrics"], json.dumps(report.as_dict(), indent=2).encode())
    return report


EXIT_CODES = {
    0: "metrics written; a one-line summary is printed on stdout",
    1: "no row could be evaluated (metrics.json still written)",
    2: "usage error (bad flags, no such predictions file)",
}


def main(argv: Sequence[str] | None = None) -> int:
    config = parse(
        EvaluateConfig, argv, prog="xfer-evaluate", description=__doc__, exit_codes=EXIT_CODES
    )
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not config.predictions:
        print("xfer-evaluate: error: PREDICTIONS is required", file=sys.stderr)
        return 2
    if not os.path.exists(config.predictions):
        print(f"xfer-evaluate: error: {config.predictions}: no such file", file=sys.stderr)
        return 2
    report = evaluate(config)
    print(report.format())
    return 0 if report.evaluated else 1


if __name__ == "__main__":
    sys.exit(main())
