"""Champion/challenger: the candidate against the version published now, on the same images.

The champion is the highest version under the model base path (what TF Serving serves when no
version is pinned). Both models are run as SavedModels on the raw bytes of the same split (the
stable split makes it the same images from one export to the next) inside the gate's child
process (gate.py), so both are measured the way a server runs them. Everything here is pure:
the comparison of their scores and the verdict against the thresholds; no TensorFlow.

Labels are matched by name. When the two label sets differ, the figures are of the images whose
true class both models know, and the difference itself is a refusal (`--force` overrides it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.publishing.gate import GateError, GateReport
from export.publishing.versions import list_versions

LABELS_FILE = Path("assets") / "labels.txt"
NO_CHAMPION, NOT_COMPARED = "no champion", "not compared"
PASSED, FORCED, REFUSED = "passed", "forced", "refused"


class ChampionError(GateError):
    """The candidate cannot be compared with the champion (unreadable champion or test images)."""


@dataclass(frozen=True)
class Thresholds:
    max_regression: float  # points of accuracy
    max_class_regression: float  # points of recall, per class


@dataclass(frozen=True)
class Champion:
    version: int
    path: Path
    labels: list[str]
    error: str | None = None  # why its labels cannot be read: it cannot be compared


def find_champion(base: str | Path) -> Champion | None:
    """The highest published version under `base`, or None (the first version)."""
    versions = list_versions(base)
    if not versions:
        return None
    path = Path(base) / str(versions[-1])
    try:
        text = (path / LABELS_FILE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return Champion(versions[-1], path, [], f"cannot read {LABELS_FILE}: {exc}")
    return Champion(versions[-1], path, [line for line in text.splitlines() if line])


def _points(x: float | None) -> float | None:
    return None if x is None else round(100.0 * x, 4)


def _recalls(truth: list[str], predicted: list[str], classes: list[str]) -> dict:
    out = {}
    for name in classes:
        hits = [p == t for t, p in zip(truth, predicted) if t == name]
        out[name] = sum(hits) / len(hits) if hits else None
    return out


def compare(
    truth: list[str],
    candidate_scores: np.ndarray,
    candidate_labels: list[str],
    champion_scores: np.ndarray,
    champion_labels: list[str],
) -> dict:
    """Accuracy, per-class recall and top-1 agreement of both models on the same images.

    `truth[i]` is image i's class name; `*_scores[i]` a model's scores over its own labels.
    Only images whose true class both models know count. Changes are in points (candidate minus
    champion, times 100).
    """
    common = [name for name in candidate_labels if name in set(champion_labels)]
    keep = [i for i, name in enumerate(truth) if name in set(common)]
    kept_truth = [truth[i] for i in keep]
    cand = [candidate_labels[j] for j in np.argmax(candidate_scores, axis=1)[keep]]
    champ = [champion_labels[j] for j in np.argmax(champion_scores, axis=1)[keep]]
    n = len(keep)

    def accuracy(predicted: list[str]) -> float | None:
        return sum(p == t for p, t in zip(predicted, kept_truth)) / n if n else None

    acc_cand, acc_champ = accuracy(cand), accuracy(champ)
    recall_cand = _recalls(kept_truth, cand, common)
    recall_champ = _recalls(kept_truth, champ, common)
    class_recall = {}
    for name in common:
        a, b = recall_cand[name], recall_champ[name]
        change = None if a is None or b is None else _points(a - b)
        class_recall[name] = {"candidate": a, "champion": b, "change_points": change}
    return {
        "images": n,
        "accuracy": {
            "candidate": acc_cand,
            "champion": acc_champ,
            "change_points": None if n == 0 else _points(acc_cand - acc_champ),
        },
        "class_recall": class_recall,
        "agreement": sum(a == b for a, b in zip(cand, champ)) / n if n else None,
        "labels": {
            "same": candidate_labels == champion_labels,
            "common": common,
            "added": [x for x in candidate_labels if x not in set(champion_labels)],
            "removed": [x for x in champion_labels if x not in set(candidate_labels)],
        },
    }


def regressions(comparison: dict, thresholds: Thresholds) -> list[str]:
    """Why the candidate must not replace the champion; empty when it may."""
    reasons = []
    labels = comparison["labels"]
    if labels["added"] or labels["removed"]:
        reasons.append(
            f"labels differ from the champion's (added {labels['added']}, removed "
            f"{labels['removed']}); figures are on the {len(labels['common'])} common classes"
        )
    acc = comparison["accuracy"]
    if acc["change_points"] is not None and -acc["change_points"] > thresholds.max_regression:
        reasons.append(
            f"accuracy {acc['candidate']:.4f} vs the champion's {acc['champion']:.4f} "
            f"({acc['change_points']:+.2f} points; --max-regression {thresholds.max_regression})"
        )
    for name, recall in comparison["class_recall"].items():
        change = recall["change_points"]
        if change is not None and -change > thresholds.max_class_regression:
            reasons.append(
                f"recall of {name!r} {recall['candidate']:.4f} vs the champion's "
                f"{recall['champion']:.4f} ({change:+.2f} points; --max-class-regression "
                f"{thresholds.max_class_regression})"
            )
    return reasons


def summary(section: dict) -> str:
    """One line of the figures, for logs and refusals."""
    if section.get("version") is None:
        return "first version, nothing to compare with"
    acc, agreement = section.get("accuracy"), section.get("agreement")
    if not acc or acc["candidate"] is None:
        return f"version {section['version']} not compared: " + (
            section.get("error") or "no images to compare on"
        )
    return (
        f"version {section['version']} on {section['images']} {section['split']} images: accuracy "
        f"{acc['candidate']:.4f} (champion {acc['champion']:.4f}, {acc['change_points']:+.2f} "
        f"points), top-1 agreement {agreement:.4f}"
    )


def _section(champion: Champion | None, split: str, thresholds: Thresholds) -> dict:
    return {
        "version": champion.version if champion else None,
        "path": str(champion.path) if champion else None,
        "split": split,
        "max_regression": thresholds.max_regression,
        "max_class_regression": thresholds.max_class_regression,
        "regressions": [],
        "forced": False,
    }


def _verdict(section: dict, reasons: list[str], force: bool) -> dict:
    section["regressions"] = reasons
    section["forced"] = bool(reasons) and force
    section["outcome"] = PASSED if not reasons else FORCED if force else REFUSED
    return section


def precheck(
    champion: Champion | None, candidate_labels: list[str], thresholds: Thresholds, force: bool
) -> dict | None:
    """A refusal known before the candidate is written (unreadable champion labels, other
    labels), so a refused export fails at once; None when the comparison must run."""
    if champion is None or force:
        return None
    if champion.error:
        reasons = [f"champion {champion.path} could not be evaluated: {champion.error}"]
    elif set(champion.labels) != set(candidate_labels):
        added = [x for x in candidate_labels if x not in set(champion.labels)]
        removed = [x for x in champion.labels if x not in set(candidate_labels)]
        reasons = [f"labels differ from the champion's (added {added}, removed {removed})"]
    else:
        return None
    return _verdict(_section(champion, "", thresholds), reasons, force)


def judge(
    champion: Champion | None,
    split: str,
    truth: list[str],
    report: GateReport,
    candidate_labels: list[str],
    thresholds: Thresholds,
    force: bool,
) -> dict:
    """The model card's `champion` section: the figures, the regressions and the outcome
    (`no champion`, `not compared`, `passed`, `forced` or `refused`)."""
    section = _section(champion, split, thresholds)
    if champion is None:
        return {**section, "outcome": NO_CHAMPION}
    error = champion.error or report.champion_error
    if error:
        section["error"] = error
        reasons = [f"champion {champion.path} could not be evaluated: {error}"]
    elif not truth:
        return {**section, "outcome": NOT_COMPARED, "images": 0}
    else:
        figures = compare(
            truth,
            report.eval_scores["candidate"],
            candidate_labels,
            report.eval_scores["champion"],
            champion.labels,
        )
        section.update(figures)
        reasons = regressions(figures, thresholds)
    return _verdict(section, reasons, force)
