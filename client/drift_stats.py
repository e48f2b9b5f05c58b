"""The figures of `xfer-drift`, pure functions of counts: windows of scored rows, the OOD rate,
the predicted class distribution against reference priors (total-variation distance and a
chi-square goodness-of-fit test) and the confidence histogram. No I/O, no plotting."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from client.output import timestamp


@dataclass
class Window:
    """What one window of rows holds, as running counts (memory does not grow with its rows);
    `first_line`/`last_line`: its first and last row's line number in the scored file (1-based,
    JSONL) or row number (CSV); `start`/`end`: a time window's bounds, seconds since the epoch."""

    index: int
    bins: int = 10
    first_line: int = 0
    last_line: int = 0
    rows: int = 0
    errors: int = 0
    predicted: Counter = field(default_factory=Counter)  # top-1 label -> rows
    confidence_sum: float = 0.0  # of the top-1 scores
    histogram: list[int] = field(default_factory=list)  # top-1 scores in `bins` bins over [0, 1]
    ood_rows: int = 0  # rows that carry `is_ood`
    ood_flagged: int = 0
    ood_score_sum: float = 0.0
    ood_scores: int = 0  # rows that carry `ood_score`
    start: float | None = None
    end: float | None = None

    def __post_init__(self):
        self.histogram = self.histogram or [0] * self.bins

    @property
    def scored(self) -> int:
        return sum(self.predicted.values())


def _flag(value) -> bool:
    """`is_ood` as JSONL (a bool) or CSV (a string) writes it."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def bin_of(value: float, bins: int) -> int:
    """The bin of `value` among `bins` equal bins over [0, 1]; 1.0 (and anything above) in the
    last, anything below 0 in the first."""
    return min(bins - 1, max(0, int(value * bins)))


def add_row(window: Window, line: int, row: dict) -> None:
    """Counts one scored row into its window: an `error` row only as an error; a row without
    `is_ood` (a model or client from before the OOD outputs) only leaves the OOD rate out."""
    window.first_line = window.first_line or line
    window.last_line = line
    window.rows += 1
    if "error" in row or not row.get("labels"):
        window.errors += 1
        return
    window.predicted[str(row["labels"][0])] += 1
    if row.get("scores"):
        score = float(row["scores"][0])
        window.confidence_sum += score
        window.histogram[bin_of(score, window.bins)] += 1
    if row.get("is_ood") is not None:
        window.ood_rows += 1
        window.ood_flagged += _flag(row["is_ood"])
    if row.get("ood_score") is not None:
        window.ood_score_sum += float(row["ood_score"])
        window.ood_scores += 1


def windows_by_rows(
    rows: Iterable[tuple[int, dict]], size: int, bins: int = 10
) -> Iterator[Window]:
    """Consecutive windows of `size` rows in file order (the last may hold fewer)."""
    window = Window(0, bins)
    for line, row in rows:
        add_row(window, line, row)
        if window.rows == size:
            yield window
            window = Window(window.index + 1, bins)
    if window.rows:
        yield window


def windows_by_time(
    rows: Iterable[tuple[int, float, dict]], seconds: float, bins: int = 10
) -> list[Window]:
    """(line, time, row) into windows of `seconds` aligned on the epoch (60 minutes: on the
    hour, UTC), whatever order the rows come in; the windows that hold rows, earliest first."""
    found: dict[int, Window] = {}
    for line, moment, row in rows:
        key = math.floor(moment / seconds)
        if key not in found:
            found[key] = Window(0, bins, start=key * seconds, end=(key + 1) * seconds)
        add_row(found[key], line, row)
    windows = [found[key] for key in sorted(found)]
    for index, window in enumerate(windows):
        window.index = index
    return windows


def priors_of(counts: dict[str, int | float], labels: Iterable[str] = ()) -> dict[str, float]:
    """Counts per class -> fractions; `labels` adds classes of prior 0 (never seen)."""
    total = sum(counts.values())
    priors = {str(label): 0.0 for label in labels}
    for label, n in counts.items():
        priors[str(label)] = n / total if total else 0.0
    return priors


def total_variation(observed: dict[str, int], priors: dict[str, float]) -> float | None:
    """½ Σ |p_obs − p_ref| over every class of either side; None for an empty window."""
    n = sum(observed.values())
    if not n:
        return None
    classes = set(observed) | set(priors)
    return 0.5 * sum(abs(observed.get(c, 0) / n - priors.get(c, 0.0)) for c in classes)


def chi_square(observed: dict[str, int], priors: dict[str, float]) -> dict:
    """Pearson's goodness-of-fit of the window's top-1 counts to the priors, over the classes
    whose prior is above 0 (the expected count of the others is 0, where the test is undefined:
    their rows are counted in `outside_reference` and already move the TV distance). Degrees of
    freedom: those classes − 1; the p-value is the chi-square survival function (scipy)."""
    classes = sorted(c for c, p in priors.items() if p > 0)
    inside = sum(observed.get(c, 0) for c in classes)
    outside = sum(observed.values()) - inside
    dof = len(classes) - 1
    if not inside or dof < 1:
        return {
            "statistic": None,
            "dof": max(dof, 0),
            "p_value": None,
            "outside_reference": outside,
        }
    mass = sum(priors[c] for c in classes)
    statistic = 0.0
    for c in classes:
        expected = inside * priors[c] / mass
        statistic += (observed.get(c, 0) - expected) ** 2 / expected
    from scipy.stats import chi2

    return {
        "statistic": statistic,
        "dof": dof,
        "p_value": float(chi2.sf(statistic, dof)),
        "outside_reference": outside,
    }


@dataclass(frozen=True)
class Thresholds:
    max_ood_rate: float | None = None
    max_tv: float | None = None
    min_p_value: float | None = None


def crossed(summary: dict, limits: Thresholds) -> list[dict]:
    """The configured thresholds a window's summary crosses (a null figure crosses nothing)."""
    checks = (
        ("max_ood_rate", summary["ood"]["rate"], limits.max_ood_rate, lambda v, t: v > t),
        ("max_tv", summary["tv_distance"], limits.max_tv, lambda v, t: v > t),
        ("min_p_value", summary["chi_square"]["p_value"], limits.min_p_value, lambda v, t: v < t),
    )
    return [
        {"threshold": name, "value": value, "limit": limit}
        for name, value, limit, worse in checks
        if limit is not None and value is not None and worse(value, limit)
    ]


def summarise(window: Window, priors: dict[str, float], limits: Thresholds) -> dict:
    """One window's entry of drift.json (a time window's with its `start` and `end`)."""
    confidences = sum(window.histogram)
    mean = window.confidence_sum / confidences if confidences else None
    ood_mean = window.ood_score_sum / window.ood_scores if window.ood_scores else None
    summary: dict = {"index": window.index}
    if window.start is not None and window.end is not None:
        summary.update(start=timestamp(window.start), end=timestamp(window.end))
    summary.update({
        "first_line": window.first_line,
        "last_line": window.last_line,
        "rows": window.rows,
        "scored": window.scored,
        "errors": window.errors,
        "ood": {
            "rows": window.ood_rows,
            "flagged": window.ood_flagged,
            "rate": window.ood_flagged / window.ood_rows if window.ood_rows else None,
            "mean_score": ood_mean,
        },
        "predicted": dict(sorted(window.predicted.items())),
        "tv_distance": total_variation(window.predicted, priors),
        "chi_square": chi_square(window.predicted, priors),
        "confidence": {"mean": mean, "histogram": list(window.histogram)},
    })  # fmt: skip
    summary["crossed"] = crossed(summary, limits)
    return summary
