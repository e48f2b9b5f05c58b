"""The bottleneck job's inputs: a class-folder root or a list file of `uri,label[,split]`, listed
and read into (ImageKey, bytes) elements, a batch ahead on threads.

The list-file format (`LIST_SUFFIXES`, `parse_list_line`) is shared with beam_jobs/predict.py.
"""

from __future__ import annotations

import collections
import csv
import functools
import hashlib
import posixpath
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from beam_jobs.common import NAMESPACE
from beam_jobs.transforms import Chunk, DistinctPerBundle, SortedUnion
from export.data.dataset import SplitConfig, parse_path, split_of

LIST_SUFFIXES = (".csv", ".txt", ".tsv")


# ------------------------------------------------------------------------------- what an input is


class ImageKey(NamedTuple):
    """Travels with an image through RunInference (KeyedModelHandler) to its TFRecord row."""

    uri: str
    label: str
    split: str
    sha256: str
    copy: int = 0  # 0: the image itself; k > 0: its k-th augmented copy (training split only)


def error_row(uri: str, reason: str) -> dict:
    return {"uri": uri, "reason": reason}


def is_list_input(path: str) -> bool:
    return path.lower().endswith(LIST_SUFFIXES)


def parse_list_line(line: str, base_dir: str) -> tuple[str, str, str | None] | None:
    """`uri,label[,split]` (a header row `uri,label` is skipped); relative URIs are resolved
    against the list file's directory."""
    row = next(csv.reader([line]), [])
    row = [c.strip() for c in row]
    if not row or not row[0] or row[0].startswith("#") or row[0].lower() == "uri":
        return None
    uri = row[0]
    if "://" not in uri and not uri.startswith("/"):
        uri = FileSystems.join(base_dir, uri)
    label = row[1] if len(row) > 1 else ""
    split = row[2] if len(row) > 2 and row[2] else None
    return uri, label, split


class ClassFolderPaths:
    """(split folder, class, relative path) of a matched file under a class-folder root."""

    def __init__(self, root: str, explicit: bool):
        self.root = root.rstrip("/")
        self.explicit = explicit

    def parse(self, uri: str):
        under_root = uri[len(self.root) :].lstrip("/") if uri.startswith(self.root) else uri
        return parse_path(under_root, self.explicit)

    def label(self, metadata) -> str | None:
        parsed = self.parse(metadata.path)
        return parsed[1] if parsed else None


# ---------------------------------------------------------------------------------------- reading


def detect_layout(root: str) -> tuple[bool, bool]:
    """(explicit train/test layout, has a validation folder), by the same rule as dataset.scan."""

    def has_files(name: str) -> bool:
        result = FileSystems.match([FileSystems.join(root, name, "**")], limits=[1])[0]
        return bool(result.metadata_list)

    explicit = has_files("train") and has_files("test")
    has_validation = explicit and (has_files("validation") or has_files("val"))
    return explicit, has_validation


def open_uri(uri: str):
    return FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED)


def read_image(open_file, uri: str, label: str, split: str) -> tuple[list, bool]:
    """(the outputs of one dataset file, whether it was read): (ImageKey, bytes), and
    (sha256, (uri, split)) to the 'copies' output for the duplicate report; unreadable ->
    'errors'. Runs on ReadAhead's threads: pure but for the read."""
    try:
        with open_file() as f:
            data = f.read()
    except Exception as exc:  # noqa: BLE001 - any I/O failure becomes an error row
        return [beam.pvalue.TaggedOutput("errors", error_row(uri, f"unreadable: {exc}"))], False
    sha256 = hashlib.sha256(data).hexdigest()
    return [
        (ImageKey(uri, label, split, sha256), data),
        beam.pvalue.TaggedOutput("copies", (sha256, (uri, split))),
    ], True


class ReadAhead(beam.DoFn):
    """Reads the dataset's files on a thread pool, `ahead` files in front of what it emits.

    The DoFn runs fused with RunInference on one thread: read inline, a file's latency (a few
    hundred microseconds locally, tens of milliseconds on gs://) would add to every image's time.
    Read ahead, the reads of the next batch overlap the backbone's call on this one, as the
    in-process path does. Outputs keep the input order; counters are counted on the bundle's own
    thread (Beam's metrics are thread-local).
    """

    def __init__(self, ahead: int = 64, threads: int = 8):
        self.ahead = ahead
        self.threads = threads
        self.read = Metrics.counter(NAMESPACE, "images_read")
        self.failed = Metrics.counter(NAMESPACE, "images_failed")
        self._pool = None
        self._pending: collections.deque = collections.deque()

    def entry(self, element) -> tuple | list:
        """(a function opening the file, uri, label, split) of an input element, or the outputs
        to emit instead of reading it."""
        raise NotImplementedError

    def setup(self):
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="ReadAhead")

    def teardown(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def start_bundle(self):
        self._pending = collections.deque()

    def process(self, element):
        entry = self.entry(element)
        if isinstance(entry, list):
            yield from entry
            return
        self._pending.append(self._pool.submit(read_image, *entry))
        while len(self._pending) > self.ahead:
            yield from self._done(self._pending.popleft())

    def finish_bundle(self):
        while self._pending:
            for output in self._done(self._pending.popleft()):
                if isinstance(output, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(
                        output.tag, GlobalWindows.windowed_value(output.value)
                    )
                else:
                    yield GlobalWindows.windowed_value(output)

    def _done(self, future) -> list:
        outputs, read = future.result()
        (self.read if read else self.failed).inc()
        return outputs


class ReadClassFolderFile(ReadAhead):
    """A ReadableFile (fileio.ReadMatches) under a class-folder root -> read_image's outputs."""

    def __init__(self, paths: ClassFolderPaths, has_validation: bool, split: SplitConfig, **ahead):
        super().__init__(**ahead)
        self.paths = paths
        self.has_validation = has_validation
        self.split = split

    def entry(self, readable: fileio.ReadableFile):
        uri = readable.metadata.path
        parsed = self.paths.parse(uri)
        if parsed is None:
            return []  # hidden file, or not inside a class folder: not part of the dataset
        split_dir, label, relative = parsed
        split = split_of(relative, split_dir, self.split, self.has_validation)
        return readable.open, uri, label, split


class ReadListedFile(ReadAhead):
    """(uri, label, split) from a list file -> read_image's outputs; no label -> 'errors'."""

    def __init__(self, split: SplitConfig, **ahead):
        super().__init__(**ahead)
        self.split = split

    def entry(self, entry: tuple[str, str, str | None]):
        uri, label, split = entry
        if not label:
            self.failed.inc()
            return [beam.pvalue.TaggedOutput("errors", error_row(uri, "no label in the list"))]
        split = split or split_of(posixpath.basename(uri), None, self.split)
        return functools.partial(open_uri, uri), uri, label, split


def read_dataset(p: beam.Pipeline, source: str, split: SplitConfig, ahead: int):
    """The dataset's files under `source` (a class-folder root or a list file), read `ahead`
    files in front: outputs .images (ImageKey, bytes), .copies, .errors; and the sorted class
    names, known from the listing before any image is read."""
    if is_list_input(source):
        base_dir = posixpath.dirname(source)
        entries = (
            p
            | "ReadList" >> beam.io.ReadFromText(source)
            | "ParseList"
            >> beam.FlatMap(lambda line: filter(None, [parse_list_line(line, base_dir)]))
        )
        labels = entries | "Labels" >> beam.ParDo(DistinctPerBundle(lambda entry: entry[1]))
        reader = ReadListedFile(split, ahead=ahead)
    else:
        root = source.rstrip("/")
        explicit, has_validation = detect_layout(root)
        paths = ClassFolderPaths(root, explicit)
        matched = p | "MatchFiles" >> fileio.MatchFiles(FileSystems.join(root, "**"))
        labels = matched | "Labels" >> beam.ParDo(DistinctPerBundle(paths.label))
        entries = (
            matched
            # One match element fans out to every file: without the reshuffle, the worker that
            # listed them would read them all. Chunks: reshuffling is costly per element.
            | "Chunk" >> beam.ParDo(Chunk(256))
            | "SpreadFiles" >> beam.Reshuffle()
            | "Unchunk" >> beam.FlatMap(lambda chunk: chunk)
            | "ReadMatches"
            >> fileio.ReadMatches(compression=CompressionTypes.UNCOMPRESSED, skip_directories=True)
        )
        reader = ReadClassFolderFile(paths, has_validation, split, ahead=ahead)
    read = entries | "ReadFiles" >> beam.ParDo(reader).with_outputs(
        "copies", "errors", main="images"
    )
    return read, labels | "AllLabels" >> beam.CombineGlobally(SortedUnion())
