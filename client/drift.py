"""`xfer-drift SCORED.jsonl [--baseline BOTTLENECKS_DIR]`: has the traffic drifted away from what
the model was trained on?

Cuts the scored rows into windows of `--window-rows` consecutive rows in the file's order, or with
`--window-by scored_at` (when xfer-score decided the row) or `--window-by mtime` (the image
file's modification time) into windows of `--window-minutes`, aligned on the epoch. Per window:
the OOD rate (rows with `is_ood` true among the rows that carry it; null when none does), the
top-1 class distribution against the reference priors (total-variation distance, and Pearson's
chi-square with its p-value) and the histogram of the top-1 scores. The reference: the training
split's class counts in a bottlenecks directory's metadata.json (`--baseline`), the top-1
distribution of a reference scored file (`--baseline-rows`), or else the first window. Prints the
JSON; `--out DIR` also writes drift.json and drift.png. Exit 4 when a window crosses a threshold
set by `--max-ood-rate`, `--max-tv` or `--min-p-value`, so that a scheduled job can alert.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import tyro

from client.atomicfile import atomic_write
from client.cliargs import parse
from client.drift_stats import (
    Thresholds,
    Window,
    add_row,
    priors_of,
    summarise,
    windows_by_rows,
    windows_by_time,
)
from client.figures import pyplot, save_figure
from client.output import TIME_FIELDS, parse_timestamp, read_rows

log = logging.getLogger(__name__)
PROG = "xfer-drift"
# What the client reads of a bottlenecks directory (beam_jobs/bottleneck_output.py writes them):
# metadata.json's "counts" {split: {label: images}} and "labels" (else labels.txt, one a line).
METADATA_FILE, LABELS_FILE = "metadata.json", "labels.txt"


@dataclass
class DriftConfig:
    """Its fields are xfer-drift's flags."""

    scored: tyro.conf.Positional[str] = field(
        default="", metadata={"help": "scored output of xfer-score (JSONL or CSV)"}
    )
    baseline: str = field(
        default="",
        metadata={"help": "bottlenecks directory: its metadata.json's class counts are the priors"},
    )
    baseline_split: str = field(
        default="train", metadata={"help": "the split of --baseline whose counts are the priors"}
    )
    baseline_rows: str = field(
        default="",
        metadata={"help": "a reference scored file: its top-1 distribution is the priors"},
    )
    window_by: Literal["rows", "scored_at", "mtime"] = field(
        default="rows",
        metadata={
            "help": "rows: --window-rows consecutive rows; scored_at or mtime: windows of "
            "--window-minutes by that field of the rows (when scored; the image file's time)"
        },
    )
    window_rows: int = field(default=1000, metadata={"help": "rows per window, in file order"})
    window_minutes: float = field(
        default=60.0,
        metadata={"help": "minutes per time window (aligned on the epoch: 60 is on the hour, UTC)"},
    )
    bins: int = field(default=10, metadata={"help": "bins of the confidence histogram over [0, 1]"})
    max_ood_rate: float | None = field(
        default=None, metadata={"help": "exit 4 when a window's OOD rate is above this"}
    )
    max_tv: float | None = field(
        default=None, metadata={"help": "exit 4 when a window's TV distance is above this"}
    )
    min_p_value: float | None = field(
        default=None, metadata={"help": "exit 4 when a window's chi-square p-value is below this"}
    )
    out: str = field(default="", metadata={"help": "also write drift.json and drift.png here"})


class InputError(Exception):
    """A file that cannot be read as asked: the message names it (and the line)."""


def numbered_rows(path: str) -> Iterator[tuple[int, dict]]:
    """(line number, row) of a scored file; a line that is not a JSON object is an InputError
    (xfer-score tears at most the last line on a crash: `--resume` repairs it)."""
    if path.lower().endswith(".csv"):
        yield from enumerate(read_rows(path, "csv"), 2)  # line 1 is the header
        return
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise InputError(f"{path}:{number}: not a JSON row ({exc})") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}:{number}: not a JSON object")
            yield number, row


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    except ValueError as exc:
        raise InputError(f"{path}: not JSON ({exc})") from None


def priors_from_bottlenecks(directory: str, split: str) -> tuple[dict[str, float], dict]:
    """The split's class fractions from metadata.json's `counts`; classes listed in `labels`
    (or labels.txt) but absent from the split get prior 0."""
    path = os.path.join(directory, METADATA_FILE)
    metadata = _read_json(path)
    counts = metadata.get("counts") if isinstance(metadata, dict) else None
    if not isinstance(counts, dict) or not isinstance(counts.get(split), dict):
        found = sorted(counts) if isinstance(counts, dict) else []
        raise InputError(f"{path}: no class counts of split {split!r} (splits: {found})")
    labels = metadata.get("labels")
    labels_path = os.path.join(directory, LABELS_FILE)
    if not labels and os.path.isfile(labels_path):
        with open(labels_path, encoding="utf-8") as f:
            labels = [line.strip() for line in f if line.strip()]
    priors = priors_of(counts[split], labels or ())
    return priors, {"kind": "bottlenecks", "source": path, "split": split,
                    "rows": sum(counts[split].values())}  # fmt: skip


def priors_from_rows(path: str) -> tuple[dict[str, float], dict]:
    """The top-1 distribution of a reference scored file (e.g. the test split, scored)."""
    window = Window(0)
    for row in numbered_rows(path):
        add_row(window, *row)
    if not window.scored:
        raise InputError(f"{path}: no scored rows to take the priors from")
    return priors_of(window.predicted), {"kind": "rows", "source": path, "rows": window.scored}


def timed_rows(path: str, key: str, counts: dict) -> Iterator[tuple[int, float, dict]]:
    """(line, `key`'s time, row) of the rows that carry `key`; the others are counted in
    `counts["untimed"]` (e.g. unreadable files have no mtime). No row with it is an InputError:
    a file scored before rows carried times."""
    timed = 0
    for line, row in numbered_rows(path):
        value = row.get(key)
        if value in (None, ""):
            counts["untimed"] += 1
            counts.setdefault("first_untimed_line", line)
            continue
        try:
            moment = parse_timestamp(value)
        except (TypeError, ValueError):
            raise InputError(f"{path}:{line}: {key} {value!r} is not an ISO-8601 time") from None
        timed += 1
        yield line, moment, row
    if not timed and counts["untimed"]:
        raise InputError(
            f"{path}: no row has the field {key!r} that --window-by {key} needs (written by "
            f"xfer-score since rows carry {' and '.join(TIME_FIELDS)}; mtime only for local "
            "files): score again, or use --window-by rows"
        )


def windows(config: DriftConfig) -> tuple[Iterator[Window] | list[Window], dict]:
    """The windows of the scored file, and the report's `window` section."""
    if config.window_by == "rows":
        found = windows_by_rows(numbered_rows(config.scored), config.window_rows, config.bins)
        return found, {"by": "rows", "rows": config.window_rows}
    section = {"by": config.window_by, "minutes": config.window_minutes, "untimed": 0}
    rows = timed_rows(config.scored, config.window_by, section)
    found = windows_by_time(rows, config.window_minutes * 60, config.bins)
    if section["untimed"]:
        log.warning(
            "%s: %d row(s) without %s (the first on line %d) are in no window",
            config.scored,
            section["untimed"],
            config.window_by,
            section["first_untimed_line"],
        )
    return found, section


def drift(config: DriftConfig) -> dict:
    """The report: the reference, every window's summary and the thresholds crossed."""
    limits = Thresholds(config.max_ood_rate, config.max_tv, config.min_p_value)
    if config.baseline:
        priors, reference = priors_from_bottlenecks(config.baseline, config.baseline_split)
    elif config.baseline_rows:
        priors, reference = priors_from_rows(config.baseline_rows)
    else:
        priors, reference = None, {"kind": "first_window", "source": config.scored}
    summaries = []
    found, section = windows(config)
    for window in found:
        if priors is None:
            if not window.scored:
                raise InputError(f"{config.scored}: the first window has no scored row")
            priors = priors_of(window.predicted)
            reference["rows"] = window.scored
        summaries.append(summarise(window, priors, limits))
    alerts = [{"window": s["index"], **c} for s in summaries for c in s["crossed"]]
    return {
        "input": config.scored,
        "window": section,
        "reference": {**reference, "priors": dict(sorted((priors or {}).items()))},
        "thresholds": asdict(limits),
        "bins": [i / config.bins for i in range(config.bins + 1)],
        "rows": sum(s["rows"] for s in summaries),
        "windows": summaries,
        "alerts": alerts,
    }


def plot(report: dict, path: str) -> None:
    """OOD rate and TV distance per window (thresholds dashed), and the confidence histograms of
    the first and the last window."""
    plt = pyplot()
    windows = report["windows"]
    by_time = report["window"]["by"] != "rows"
    index = [w["index"] for w in windows]
    if by_time:  # the windows' start times: a gap between windows shows as one
        from datetime import datetime

        index = [datetime.fromisoformat(w["start"]) for w in windows]
    nan = float("nan")
    fig, (ood, tv, conf) = plt.subplots(1, 3, figsize=(15, 4))
    for ax, values, limit, title in (
        (ood, [w["ood"]["rate"] for w in windows], "max_ood_rate", "OOD rate"),
        (tv, [w["tv_distance"] for w in windows], "max_tv", "TV distance to the reference"),
    ):
        ax.plot(index, [nan if v is None else v for v in values], marker="o")
        if report["thresholds"][limit] is not None:
            ax.axhline(report["thresholds"][limit], color="red", linestyle="--", label=limit)
            ax.legend()
        if by_time:
            ax.set_xlabel(f"window start ({report['window']['by']}, UTC)")
            ax.tick_params(axis="x", labelrotation=30)
        else:
            ax.set_xlabel("window")
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(title if any(v is not None for v in values) else f"{title}: no data")
        ax.set_ylim(bottom=0)
    edges = report["bins"]
    for w, colour in ((windows[0], "tab:blue"), (windows[-1], "tab:orange")):
        total = sum(w["confidence"]["histogram"]) or 1
        shares = [n / total for n in w["confidence"]["histogram"]]
        conf.stairs(shares, edges, color=colour, label=f"window {w['index']}")
    conf.set_xlabel("top-1 score")
    conf.set_ylabel("share of the window's rows")
    conf.set_title("confidence: first vs last window")
    conf.legend()
    save_figure(fig, path)


EXIT_CODES = {
    0: "no window crossed a threshold; the JSON is printed on stdout",
    1: "the scored file holds no rows",
    2: "usage or input error (bad flags, no such file, a line that is not JSON: named)",
    4: "a window crossed a threshold (--max-ood-rate, --max-tv, --min-p-value)",
}


def main(argv: Sequence[str] | None = None) -> int:
    config = parse(DriftConfig, argv, prog=PROG, description=__doc__, exit_codes=EXIT_CODES)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def usage(message: str) -> int:
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2

    if not config.scored:
        return usage("SCORED is required")
    if config.baseline and config.baseline_rows:
        return usage("give --baseline or --baseline-rows, not both")
    if config.window_rows < 1 or config.bins < 1:
        return usage("--window-rows and --bins must be at least 1")
    if not config.window_minutes > 0:
        return usage(f"--window-minutes must be above 0 (got {config.window_minutes})")
    for path in (config.scored, config.baseline_rows):
        if path and not os.path.isfile(path):
            return usage(f"{path}: no such file")
    if config.baseline and not os.path.isdir(config.baseline):
        return usage(f"{config.baseline}: no such directory")
    try:
        report = drift(config)
    except InputError as exc:
        return usage(str(exc))
    if not report["windows"]:
        print(json.dumps(report, indent=2))
        log.warning("%s: no rows", config.scored)
        return 1
    if config.out:
        report["files"] = {
            "json": os.path.join(config.out, "drift.json"),
            "png": os.path.join(config.out, "drift.png"),
        }
        plot(report, report["files"]["png"])
        atomic_write(report["files"]["json"], (json.dumps(report, indent=2) + "\n").encode())
    print(json.dumps(report, indent=2))
    return 4 if report["alerts"] else 0


if __name__ == "__main__":
    sys.exit(main())
