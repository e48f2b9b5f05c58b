"""`xfer-compare-versions SCORED.jsonl` (or `A.jsonl B.jsonl`): what changes between two versions on
real traffic.

One file: rows of `xfer-score --shadow-version`, the primary answer (A) against `shadow` (B). Two
files: rows of two scoring runs, matched by image (canonical URI). Compares the pairs where both
answered: top-1 agreement, the flips per class pair (A's top-1 → B's top-1), the score shift (B's
top-1 score minus A's; and B's score of A's top-1 label minus A's top-1 score), the images that
flipped most, accuracy of both when rows carry a `label`, and the OOD rate of both when their
answers carry `is_ood`. Writes the JSON to stdout (and `--out`) and a PNG: the flip matrix and
the score shift histogram.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import tyro

from client.atomicfile import atomic_write
from client.cliargs import parse
from client.figures import pyplot, save_figure
from client.inputs import canonical_uri
from client.output import read_rows

log = logging.getLogger(__name__)
PERCENTILES = (5, 25, 50, 75, 95)


@dataclass
class CompareConfig:
    """Its fields are xfer-compare-versions' flags."""

    scored: tyro.conf.Positional[list[str]] = field(
        default_factory=list,
        metadata={"help": "one file with `shadow` answers, or two scored files (A B)"},
    )
    out: str = field(default="", metadata={"help": "also write the JSON here"})
    png: str = field(
        default="",
        metadata={"help": "the figure (default: --out with .png, else version-comparison.png)"},
    )
    top_flips: int = field(default=20, metadata={"help": "flipped images listed, most first"})


@dataclass(frozen=True)
class Answer:
    labels: list[str]
    scores: list[float]
    version: int | None
    is_ood: bool | None = None  # None: the version has no OOD detector (or an older client)
    ood_score: float | None = None

    def score_of(self, label: str) -> float | None:
        """The score of `label`, None when it is not among the top-k written."""
        return self.scores[self.labels.index(label)] if label in self.labels else None


def _answer(row: dict | None) -> Answer | None:
    if not isinstance(row, dict) or "error" in row or not row.get("labels"):
        return None
    flag, score = row.get("is_ood"), row.get("ood_score")
    return Answer(
        list(row["labels"]),
        [float(s) for s in row["scores"]],
        row.get("model_version"),
        None if flag is None else bool(flag),
        None if score is None else float(score),
    )


Pair = tuple[str, "str | None", "Answer", "Answer"]  # uri, true label, A's answer, B's answer


def pairs_from_shadow(path: str, counts: Counter) -> Iterator[Pair]:
    """(uri, label, A, B) of the rows where the primary and the shadow both answered."""
    for row in read_rows(path):
        counts["rows"] += 1
        a, shadow = _answer(row), row.get("shadow")
        b = _answer(shadow)
        if a is None:
            counts["errors_a"] += 1
        elif shadow is None:
            counts["no_shadow"] += 1
        elif b is None:
            counts["errors_b"] += 1
        else:
            yield row["uri"], row.get("label"), a, b


def pairs_from_two(path_a: str, path_b: str, counts: Counter) -> Iterator[Pair]:
    """(uri, label, A, B) of the images both files answered, matched by canonical URI."""
    cwd = os.getcwd()
    first: dict[str, dict] = {}
    for row in read_rows(path_a):
        counts["rows_a"] += 1
        first[canonical_uri(row["uri"], cwd)] = row
    for row in read_rows(path_b):
        counts["rows_b"] += 1
        match = first.pop(canonical_uri(row["uri"], cwd), None)
        if match is None:
            counts["only_b"] += 1
            continue
        a, b = _answer(match), _answer(row)
        if a is None:
            counts["errors_a"] += 1
        elif b is None:
            counts["errors_b"] += 1
        else:
            yield match["uri"], match.get("label", row.get("label")), a, b
    counts["only_a"] += len(first)


def stats(values: list[float]) -> dict:
    """Mean, min, max and percentiles (numpy's linear interpolation), rounded to 6 digits."""
    import numpy as np

    if not values:
        return {"count": 0}
    x = np.asarray(values, np.float64)
    out = {"count": len(values), "mean": x.mean(), "min": x.min(), "max": x.max()}
    out.update({f"p{q}": np.percentile(x, q) for q in PERCENTILES})
    return {k: v if k == "count" else round(float(v), 6) for k, v in out.items()}


class OodTally:
    """The OOD flags of both answers: each side's rate over its rows that carry `is_ood`, and the
    images where both do, crossed (flagged by A only, by B only, by both)."""

    def __init__(self):
        self.sides = {side: Counter() for side in "ab"}
        self.scores: dict[str, list[float]] = {"a": [], "b": []}
        self.paired: Counter = Counter()

    def add(self, a: Answer, b: Answer) -> None:
        for side, answer in (("a", a), ("b", b)):
            if answer.is_ood is not None:
                self.sides[side]["rows"] += 1
                self.sides[side]["flagged"] += answer.is_ood
            if answer.ood_score is not None:
                self.scores[side].append(answer.ood_score)
        if a.is_ood is not None and b.is_ood is not None:
            self.paired["rows"] += 1
            self.paired["a_flagged"] += a.is_ood
            self.paired["b_flagged"] += b.is_ood
            self.paired["both"] += a.is_ood and b.is_ood
            self.paired["a_only"] += a.is_ood and not b.is_ood
            self.paired["b_only"] += b.is_ood and not a.is_ood

    def as_dict(self) -> dict:
        def side(name: str) -> dict:
            rows, flagged = self.sides[name]["rows"], self.sides[name]["flagged"]
            scores = self.scores[name]
            return {
                "rows": rows,
                "flagged": flagged,
                "rate": flagged / rows if rows else None,
                "mean_score": round(sum(scores) / len(scores), 6) if scores else None,
            }

        n = self.paired["rows"]
        difference = (self.paired["b_flagged"] - self.paired["a_flagged"]) / n if n else None
        paired = {k: self.paired[k] for k in ("rows", "both", "a_only", "b_only")}
        return {"a": side("a"), "b": side("b"), "paired": {**paired, "rate_difference": difference}}


def compare(pairs: Iterable[Pair], top_flips: int = 20) -> dict:
    """The comparison of (uri, label, A, B) pairs."""
    compared = agreed = 0
    transitions: Counter = Counter()
    versions_a: Counter = Counter()
    versions_b: Counter = Counter()
    top1_shift, label_shift, flipped = [], [], []
    hits_a = hits_b = labelled = outside = 0
    ood = OodTally()
    for uri, label, a, b in pairs:
        compared += 1
        ood.add(a, b)
        versions_a[str(a.version)] += 1
        versions_b[str(b.version)] += 1
        transitions[(a.labels[0], b.labels[0])] += 1
        top1_shift.append(b.scores[0] - a.scores[0])
        b_score = b.score_of(a.labels[0])
        if b_score is None:
            outside += 1
        else:
            label_shift.append(b_score - a.scores[0])
        if label:
            labelled += 1
            hits_a += a.labels[0] == label
            hits_b += b.labels[0] == label
        if a.labels[0] == b.labels[0]:
            agreed += 1
            continue
        # B's score of A's label, or at most B's lowest top-k score when it is not in B's top-k.
        bound = b_score if b_score is not None else b.scores[-1]
        flipped.append(
            {
                "uri": uri,
                "label": label,
                "a": {"label": a.labels[0], "score": a.scores[0]},
                "b": {"label": b.labels[0], "score": b.scores[0]},
                "b_score_of_a_label": b_score,
                "drop": round(a.scores[0] - bound, 6),
                "drop_is_lower_bound": b_score is None,
            }
        )
    classes = sorted({c for pair in transitions for c in pair})
    index = {c: i for i, c in enumerate(classes)}
    matrix = [[0] * len(classes) for _ in classes]
    for (x, y), n in transitions.items():
        matrix[index[x]][index[y]] = n
    flips = [
        {"a": x, "b": y, "count": n}
        for (x, y), n in sorted(transitions.items(), key=lambda kv: (-kv[1], kv[0]))
        if x != y
    ]
    flipped.sort(key=lambda f: (-f["drop"], f["uri"]))
    return {
        "compared": compared,
        "agreement": agreed / compared if compared else None,
        "flipped": compared - agreed,
        "model_versions": {"a": dict(versions_a), "b": dict(versions_b)},
        "accuracy": {
            "labelled": labelled,
            "a": hits_a / labelled if labelled else None,
            "b": hits_b / labelled if labelled else None,
        },
        "flips": flips,
        "classes": classes,
        "matrix": matrix,
        "score_shift": {
            "top1": stats(top1_shift),
            "a_label": {**stats(label_shift), "outside_b_top_k": outside},
        },
        "top_flips": flipped[:top_flips],
        "ood": ood.as_dict(),
    }


def plot(report: dict, top1_shift: list[float], path: str) -> None:
    """The flip matrix (A's top-1 rows, B's top-1 columns; the diagonal is agreement, grey) and
    the histogram of the top-1 score shift."""
    import numpy as np

    plt = pyplot()
    classes = report["classes"]
    matrix = np.asarray(report["matrix"], dtype=float).reshape(len(classes), len(classes))
    size = max(4.0, 0.5 * len(classes) + 2)
    fig, (left, right) = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    flips = matrix.copy()
    np.fill_diagonal(flips, 0)
    left.imshow(flips if flips.size else np.zeros((1, 1)), cmap="Reds", vmin=0)
    left.set_xticks(range(len(classes)), classes, rotation=90)
    left.set_yticks(range(len(classes)), classes)
    left.set_xlabel("B: top-1")
    left.set_ylabel("A: top-1")
    peak = flips.max() if flips.size else 0
    if len(classes) <= 30:
        for i in range(len(classes)):
            for j in range(len(classes)):
                colour = "grey" if i == j else "white" if flips[i, j] > peak / 2 else "black"
                left.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", color=colour)
    agreement = report["agreement"]
    shown = "n/a" if agreement is None else f"{agreement:.4f}"
    left.set_title(f"flips A → B ({report['flipped']} of {report['compared']}; agree {shown})")
    right.hist(top1_shift, bins=30, color="tab:blue")
    right.axvline(0, color="black", linewidth=0.8)
    right.set_xlabel("B's top-1 score − A's top-1 score")
    right.set_ylabel("images")
    rates = {side: report["ood"][side]["rate"] for side in "ab"}
    if any(rate is not None for rate in rates.values()):
        shown = {k: "n/a" if v is None else f"{v:.2%}" for k, v in rates.items()}
        right.set_title(f"score shift (OOD rate A {shown['a']}, B {shown['b']})")
    else:
        right.set_title("score shift")
    save_figure(fig, path)


EXIT_CODES = {
    0: "compared; the JSON is printed on stdout",
    1: "no image was answered by both versions (the JSON is still written)",
    2: "usage error (bad flags, no such file, not one or two files)",
}


def main(argv: Sequence[str] | None = None) -> int:
    config = parse(
        CompareConfig,
        argv,
        prog="xfer-compare-versions",
        description=__doc__,
        exit_codes=EXIT_CODES,
    )
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if len(config.scored) not in (1, 2):
        print("xfer-compare-versions: error: give one or two scored files", file=sys.stderr)
        return 2
    for path in config.scored:
        if not os.path.isfile(path):
            print(f"xfer-compare-versions: error: {path}: no such file", file=sys.stderr)
            return 2
    counts: Counter = Counter()
    if len(config.scored) == 1:
        pairs = list(pairs_from_shadow(config.scored[0], counts))
    else:
        pairs = list(pairs_from_two(*config.scored, counts))
    report = {"inputs": config.scored, **compare(pairs, config.top_flips), "rows": dict(counts)}
    png = config.png or (
        os.path.splitext(config.out)[0] + ".png" if config.out else "version-comparison.png"
    )
    plot(report, [b.scores[0] - a.scores[0] for _, _, a, b in pairs], png)
    report["files"] = {"png": png, **({"json": config.out} if config.out else {})}
    text = json.dumps(report, indent=2)
    if config.out:
        atomic_write(config.out, (text + "\n").encode())
    print(text)
    return 0 if report["compared"] else 1


if __name__ == "__main__":
    sys.exit(main())
