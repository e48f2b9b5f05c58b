"""What the bottleneck job leaves in its output directory, and how it gets there atomically:
duplicates found and dropped from the staged shards, the shards published, then the sidecars
(labels.txt, metadata.json, which names the error files) and the staging directory removed."""

from __future__ import annotations

import json
import logging
import posixpath
from collections import Counter

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from beam_jobs.bottleneck_rows import (
    COPIES,
    COUNT,
    DIM,
    ERRORS,
    count_split_images,
    parse_row,
    row_stat,
)
from beam_jobs.common import NAMESPACE
from beam_jobs.tfrecord_sink import GzipTFRecordWriter, read_tfrecords
from export.features.bottleneck_schema import (
    FEATURES_PREFIX,
    LABELS_FILE,
    METADATA_FILE,
    TFRECORD_SUFFIX,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------- pure functions


def duplicate_report(sha256: str, copies) -> dict | None:
    """The report on bytes found at several (uri, split)s: the copy kept (the smallest URI), the
    copies dropped, and whether they span splits (train/test leakage). None if found once."""
    copies = sorted(copies)
    if len(copies) < 2:
        return None
    splits = sorted({split for _, split in copies})
    return {
        "sha256": sha256,
        "kept": copies[0][0],
        "dropped": [uri for uri, _ in copies[1:]],
        "splits": splits,
        "leakage": len(splits) > 1,
    }


def metadata_of(
    shards: list[str],
    error_files: list[str],
    labels: list[str],
    stats: list,
    duplicates: list[dict],
    info: dict,
) -> dict:
    """metadata.json's content: the job's `info`, and what the summed (stat, n) pairs, the
    duplicate reports and the names of the published files say."""
    table: dict[str, dict[str, int]] = {}
    augmented, errors, dims = 0, 0, []
    for stat, n in stats:
        if stat[0] == COUNT and n:
            table.setdefault(stat[1], {})[stat[2]] = n
        elif stat[0] == COPIES:
            augmented = n
        elif stat[0] == ERRORS:
            errors = n
        elif stat[0] == DIM:
            dims.append(stat[1])
    return {
        **info,
        "labels": labels,
        "num_classes": len(labels),
        "counts": table,
        "total": sum(n for split in table.values() for n in split.values()),
        "augmented_copies": augmented,
        "errors": errors,
        "feature_dim": dims[0] if dims else None,
        "duplicates": sorted(duplicates, key=lambda d: d["kept"]),
        "leakage": [d for d in duplicates if d["leakage"]],
        "shards": sorted(posixpath.basename(s) for s in shards),
        "error_files": sorted(posixpath.basename(f) for f in error_files),
    }


# -------------------------------------------------------------------------------- steps and files


class FindCopies(beam.DoFn):
    """Identical bytes seen more than once: keep the copy with the smallest URI, report the rest.

    Works on (sha256, [(uri, split)]) only, so de-duplication never shuffles images or features.
    Copies in different splits are train/test leakage and are reported as such.
    """

    def __init__(self):
        self.dropped = Metrics.counter(NAMESPACE, "duplicates_dropped")

    def process(self, element):
        sha256, copies = element
        report = duplicate_report(sha256, copies)
        if report is not None:
            self.dropped.inc(len(report["dropped"]))
            yield report
            for uri in report["dropped"]:
                yield beam.pvalue.TaggedOutput("dropped", (uri, sha256))


class DropCopiesFromShard(beam.DoFn):
    """A staged shard -> the shard to publish: itself, or a rewrite without the dropped copies.

    Rows are written as they are computed, before the duplicate report exists (it needs every
    image). Datasets without duplicates, the usual case, publish the shards as written; only a
    shard that holds a dropped copy is read back and rewritten. The removed rows' counts go out
    to 'stats' as negative counts.
    """

    def __init__(self, staging: str):
        self.staging = staging

    def process(self, path: str, dropped: dict):
        if not dropped:
            return [path]
        kept, removed = [], []
        for row in read_tfrecords(path):
            key, _ = parse_row(row)
            (removed if key.uri in dropped else kept).append((key, row))
        if not removed:
            return [path]
        rewritten = FileSystems.join(self.staging, "deduplicated", posixpath.basename(path))
        writer = GzipTFRecordWriter(FileSystems.create(rewritten + ".tmp"))
        for _, row in kept:
            writer.write_record(row)
        writer.close()
        FileSystems.rename([rewritten + ".tmp"], [rewritten])
        stats = Counter(row_stat(k) for k, _ in removed)
        count_split_images(stats, -1)
        return [rewritten] + [
            beam.pvalue.TaggedOutput("stats", (stat, -n)) for stat, n in stats.items()
        ]


def publish(_, shards: list[str], output: str) -> list[str]:
    """Move the finished shards into the output directory under their own names; shards of an
    earlier run into the same directory that this run did not write go first. Idempotent."""
    targets = [FileSystems.join(output, posixpath.basename(s)) for s in sorted(shards)]
    pattern = FileSystems.join(output, f"{FEATURES_PREFIX}-*{TFRECORD_SUFFIX}")
    existing = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    stale = sorted(set(existing) - set(targets))
    if stale:
        FileSystems.delete(stale)
    # A retried step finds the shards it already moved in place: move only what is still staged.
    moves = [(s, t) for s, t in zip(sorted(shards), targets) if FileSystems.exists(s)]
    if moves:
        FileSystems.rename([s for s, _ in moves], [t for _, t in moves])
    missing = [t for t in targets if not FileSystems.exists(t)]
    if missing:
        raise OSError(f"shards neither staged nor published: {missing}")
    return targets


def write_atomically(path: str, data: bytes) -> None:
    """Beam filesystems: write a temporary sibling then rename (local), or a single object
    upload (gs://, which is atomic on close)."""
    tmp = path + ".tmp"
    with FileSystems.create(tmp) as f:
        f.write(data)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


def write_sidecars(
    shards: list[str],
    output: str,
    error_files: list[str],
    labels: list[str],
    stats: list,
    duplicates: list[dict],
    info: dict,
    staging: str,
) -> str:
    """labels.txt and metadata.json, once the shards were published and the error files
    written (their names are its side inputs); then the staging directory goes."""
    metadata = metadata_of(shards, error_files, labels, stats, duplicates, info)
    write_atomically(FileSystems.join(output, LABELS_FILE), ("\n".join(labels) + "\n").encode())
    text = json.dumps(metadata, indent=2, sort_keys=True, default=str) + "\n"
    write_atomically(FileSystems.join(output, METADATA_FILE), text.encode())
    remove_staging(staging)
    return FileSystems.join(output, METADATA_FILE)


def remove_staging(staging: str) -> None:
    """The staging directory, recursively (object stores delete a prefix given its slash)."""
    remote = "://" in staging and not staging.startswith("file://")
    try:
        FileSystems.delete([staging.rstrip("/") + "/" if remote else staging])
    except Exception as exc:  # noqa: BLE001 - leftovers are hidden and harmless
        log.warning("could not remove the staging directory %s: %s", staging, exc)
