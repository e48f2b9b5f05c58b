"""Append-only scored output (JSONL or CSV) that survives `kill -9`, and the resume that reads it.

Each row is one `os.write` of a complete line on an unbuffered file opened for append, so a
crash can tear at most the last line. `--resume` drops a torn last line (everything after the
final newline) and the rows of transient errors an older client wrote (UNAVAILABLE,
DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED: the server did not answer, the image was never judged),
then collects the canonical URIs of the rows left into a set, streaming: those inputs are
skipped. Every input thus ends up exactly once. The file is fsynced every `fsync_s` seconds and
on close, so a power loss costs at most those seconds of rows, which resume re-scores.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import stat
import time
from datetime import datetime, timezone

from client.atomicfile import atomic_file
from client.inputs import canonical_uri
from client.retry import RETRYABLE

log = logging.getLogger(__name__)

# ood_score and is_ood: empty cells for a model without an OOD detector. Columns are only ever
# appended: a CSV file keeps the header it was started with (ResultWriter).
FIELDS = (
    "uri", "label", "labels", "scores", "model_version", "error", "ood_score", "is_ood",
    "scored_at", "mtime",
)  # fmt: skip
TIME_FIELDS = ("scored_at", "mtime")  # UTC ISO-8601: when the row was decided; the file's mtime
LIST_SEPARATOR = "|"  # CSV cells holding the top-k labels and scores


def timestamp(seconds: float) -> str:
    """Seconds since the epoch as the rows write them: UTC ISO-8601 with milliseconds."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")


def parse_timestamp(text: str) -> float:
    """A row's `scored_at` or `mtime` back to seconds since the epoch (no zone: UTC);
    ValueError for text that is not ISO-8601."""
    moment = datetime.fromisoformat(str(text))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def repair_torn_tail(path: str) -> int:
    """Truncate a partial last line (no trailing newline); returns the bytes dropped."""
    if not os.path.exists(path):
        return 0
    with open(path, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return 0
        position = end
        chunk = 65536
        while position > 0:
            start = max(0, position - chunk)
            f.seek(start)
            data = f.read(position - start)
            newline = data.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            position = start
        else:
            keep = 0
        if keep < end:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
            log.warning(
                "%s: dropped a partial last line (%d bytes) before resuming", path, end - keep
            )
        return end - keep


def _csv_row(row: dict) -> dict:
    out = dict(row)
    if isinstance(out.get("labels"), list):
        out["labels"] = LIST_SEPARATOR.join(out["labels"])
    if isinstance(out.get("scores"), list):
        out["scores"] = LIST_SEPARATOR.join(repr(float(s)) for s in out["scores"])
    return out


def read_rows(path: str, fmt: str | None = None):
    """Rows of a scored output file as dicts (CSV cells split back into lists), streaming."""
    fmt = fmt or ("csv" if path.lower().endswith(".csv") else "jsonl")
    with open(path, encoding="utf-8", newline="") as f:
        if fmt == "csv":
            for row in csv.DictReader(f):
                row = {k: v for k, v in row.items() if v not in ("", None)}
                if "labels" in row:
                    row["labels"] = row["labels"].split(LIST_SEPARATOR)
                if "scores" in row:
                    row["scores"] = [float(s) for s in row["scores"].split(LIST_SEPARATOR)]
                if "model_version" in row:
                    row["model_version"] = int(row["model_version"])
                if "ood_score" in row:
                    row["ood_score"] = float(row["ood_score"])
                if "is_ood" in row:
                    row["is_ood"] = row["is_ood"] == "True"
                yield row
            return
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except ValueError:
                log.warning("%s:%d: not a JSON row, ignored", path, number)


def is_transient(row: dict) -> bool:
    """A row of an error the server's availability caused, not the image: not done.

    This client writes none (it retries them, then stops the run); clients before it wrote
    `UNAVAILABLE: ... (after 6 attempts)` and the like once their retries ran out.
    """
    error = row.get("error")
    return isinstance(error, str) and error.partition(":")[0].strip() in RETRYABLE


def done_uris(path: str, fmt: str) -> set[str]:
    """URIs in the output, as written, whose rows are done (scored, or failed for a reason of
    the image's own: undecodable, too large, unreadable)."""
    if not os.path.exists(path):
        return set()
    return {row["uri"] for row in read_rows(path, fmt) if "uri" in row and not is_transient(row)}


def _records(path: str, fmt: str):
    """(the record's exact text as written, its row or None when it is not a row) for each
    record of the file, the CSV header included (as None)."""
    if fmt == "csv":
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                return
            yield _csv_record(header), None
            for cells in reader:
                row = {k: v for k, v in zip(header, cells) if v not in ("", None)}
                yield _csv_record(cells), row
        return
    with open(path, "rb") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            yield line, row if isinstance(row, dict) else None


def _csv_record(cells: list[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue().encode("utf-8")


def _rewrite_without_transient_rows(path: str, fmt: str) -> None:
    """Atomically, keeping the file's mode: every record but the transient-error rows."""
    with atomic_file(path, stat.S_IMODE(os.stat(path).st_mode)) as out:
        for record, row in _records(path, fmt):
            if row is None or not is_transient(row):
                out.write(record)


def prepare_resume(path: str, fmt: str) -> set[str]:
    """`--resume`: repair a torn last line, remove the rows of transient errors (rewriting the
    file, only when there are some), and return the canonical URIs
    (`client.inputs.canonical_uri`; relative ones resolved against the current directory) of the
    rows left: the inputs to skip."""
    if not os.path.exists(path):
        return set()
    repair_torn_tail(path)
    cwd = os.getcwd()
    done: set[str] = set()
    transient = 0
    for _, row in _records(path, fmt):
        if row is None or "uri" not in row:
            continue
        if is_transient(row):
            transient += 1
        else:
            done.add(canonical_uri(row["uri"], cwd))
    if transient:
        _rewrite_without_transient_rows(path, fmt)
        log.warning(
            "%s: removed %d rows of transient errors (%s) left by an earlier run; "
            "their images are scored again",
            path,
            transient,
            ", ".join(sorted(RETRYABLE)),
        )
    log.info("resume: %d images already in %s", len(done), path)
    return done


def csv_header(path: str) -> list[str] | None:
    """The column names of an existing CSV file, None for a missing or empty one."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return None
    with open(path, encoding="utf-8", newline="") as f:
        return next(csv.reader(f), None)


class ResultWriter:
    """One complete line per `write()`, appended; the header once for a new CSV file.

    Appending to a CSV file started by an older client keeps that file's header: the columns
    added since (e.g. `scored_at`) are left out of its rows rather than shifting its columns."""

    def __init__(self, path: str, fmt: str = "jsonl", fsync_s: float = 2.0):
        self.path = path
        self.fmt = fmt
        self.fsync_s = fsync_s
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        self.columns = list(FIELDS)
        header = csv_header(path) if fmt == "csv" else None
        if header:
            self.columns = header
            missing = [f for f in FIELDS if f not in header]
            if missing:
                log.warning("%s: its header has no %s column: not written", path, missing)
        # buffering=0: every write() below is a single os.write of a whole line.
        self._file = open(path, "ab", buffering=0)  # noqa: SIM115 - closed in close()
        self._last_sync = time.monotonic()
        if fmt == "csv" and self._file.tell() == 0:
            self._write(self._csv_line({f: f for f in FIELDS}))

    def _csv_line(self, row: dict) -> bytes:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, self.columns, lineterminator="\n", extrasaction="ignore")
        writer.writerow(row)
        return buffer.getvalue().encode("utf-8")

    def _write(self, line: bytes) -> None:
        self._file.write(line)
        now = time.monotonic()
        if now - self._last_sync >= self.fsync_s:
            os.fsync(self._file.fileno())
            self._last_sync = now

    def write(self, row: dict) -> None:
        if self.fmt == "csv":
            line = self._csv_line(_csv_row(row))
        else:
            line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        self._write(line)

    def close(self) -> None:
        if not self._file.closed:
            os.fsync(self._file.fileno())
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
