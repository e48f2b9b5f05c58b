"""Bottleneck features at scale: images -> backbone features -> sharded gzip TFRecords.

    python -m beam_jobs.bottlenecks --input IMAGES --output OUT --backbone mobilenet_v2 [beam flags]

Our flags are parsed here; every other flag goes to Beam's PipelineOptions unchanged, so the same
command runs on the DirectRunner or on Dataflow (`--runner DataflowRunner --setup_file ./setup.py`).

Output directory OUT (local or any Beam filesystem, e.g. gs://):
  features-SSSSS-of-NNNNN.tfrecord.gz   one tf.Example per image
                                        (export/features/bottleneck_schema.py)
  labels.txt                            class names, line i = label_id i
  errors-SSSSS-of-NNNNN.jsonl           {"uri", "reason"} for each image that could not be used
  metadata.json                         counts, backbone, duplicates/leakage, options (written last)
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import hashlib
import json
import logging
import posixpath
import sys
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.transforms.window import GlobalWindows

from beam_jobs.common import NAMESPACE, failed_batch_rows, run_pipeline, setup_logging
from beam_jobs.flags import parse_bottleneck_flags
from beam_jobs.tfrecord_sink import GzipTFRecordSink, GzipTFRecordWriter, read_tfrecords
from export.data.dataset import TRAIN, SplitConfig, parse_path, split_of
from export.features.bottleneck_schema import (
    ERRORS_PREFIX,
    FEATURES_PREFIX,
    LABELS_FILE,
    METADATA_FILE,
    TFRECORD_SUFFIX,
    encode_example,
)
from export.features.extraction import FeatureModel, ImageError
from export.model.backbones import BackboneConfig
from export.model.preprocessing import DEFAULT_MAX_PIXELS, PREPROCESSING_VERSION
from export.training.augment import AugmentConfig

log = logging.getLogger(__name__)
LIST_SUFFIXES = (".csv", ".txt", ".tsv")


# ------------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class BottleneckConfig:
    input: str
    output: str
    backbone: str = "mobilenet_v2"
    weights: str = "imagenet"
    image_size: int | None = None
    feature_layer: str | None = None
    alpha: float = 1.0
    num_shards: int = 0  # 0: let the runner decide
    validation_percent: float = 10.0
    test_percent: float = 10.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_batch_size: int = 8
    max_batch_size: int = 64
    augment_copies: int = 0  # augmented feature copies per training image (never other splits)
    augment_rotation: float = AugmentConfig.rotation
    augment_shift: float = AugmentConfig.shift
    augment_shear: float = AugmentConfig.shear
    augment_zoom: float = AugmentConfig.zoom
    augment_flip: bool = AugmentConfig.flip

    def __post_init__(self):
        if self.augment_copies < 0:
            raise ValueError(f"--augment_copies must be >= 0; received {self.augment_copies}")
        if self.augment_copies:
            self.augment_config()  # refuse bad ranges before the job starts

    def backbone_config(self) -> BackboneConfig:
        return BackboneConfig.of(self)

    def augment_config(self) -> AugmentConfig:
        return AugmentConfig.of(self)

    def split_config(self) -> SplitConfig:
        return SplitConfig(self.validation_percent, self.test_percent)


def parse_args(argv: Sequence[str] | None) -> tuple[BottleneckConfig, list[str]]:
    """Our flags (beam_jobs/flags.py) and the pipeline's."""
    flags, rest = parse_bottleneck_flags(argv, __doc__)
    return BottleneckConfig(**dataclasses.asdict(flags)), rest


# ------------------------------------------------------------------------------------ elements


class ImageKey(NamedTuple):
    """Travels with an image through RunInference (KeyedModelHandler) to its TFRecord row."""

    uri: str
    label: str
    split: str
    sha256: str
    copy: int = 0  # 0: the image itself; k > 0: its k-th augmented copy (training split only)


def error_row(uri: str, reason: str) -> dict:
    return {"uri": uri, "reason": reason}


# Keys of the per-bundle statistics that metadata.json is built from (summed over the job).
COUNT = "count"  # (COUNT, split, label): images written
COPIES = "copies"  # (COPIES,): augmented copies written
DIM = "dim"  # (DIM, feature dim): one key per dimension seen
ERRORS = "errors"  # (ERRORS,): error rows


def row_stat(key: ImageKey) -> tuple:
    """The statistic a written row counts towards: its split and class, or the copies."""
    return (COPIES,) if key.copy else (COUNT, key.split, key.label)


def count_split_images(stats: Counter, sign: int) -> None:
    """The images_<split> counters, from a bundle's statistics (sign -1: rows removed)."""
    for stat, n in stats.items():
        if stat[0] == COUNT:
            Metrics.counter(NAMESPACE, f"images_{stat[1]}").inc(sign * n)


# ------------------------------------------------------------------------------------- reading


def is_list_input(path: str) -> bool:
    return path.lower().endswith(LIST_SUFFIXES)


def detect_layout(root: str) -> tuple[bool, bool]:
    """(explicit train/test layout, has a validation folder), by the same rule as dataset.scan."""

    def has_files(name: str) -> bool:
        result = FileSystems.match([FileSystems.join(root, name, "**")], limits=[1])[0]
        return bool(result.metadata_list)

    explicit = has_files("train") and has_files("test")
    has_validation = explicit and (has_files("validation") or has_files("val"))
    return explicit, has_validation


class DistinctPerBundle(beam.DoFn):
    """The distinct non-empty values of fn(element), once per bundle: a class name per class and
    bundle rather than per file, where a per-element Distinct would cost a step per file."""

    def __init__(self, fn):
        self.fn = fn
        self._seen: set = set()

    def start_bundle(self):
        self._seen = set()

    def process(self, element):
        value = self.fn(element)
        if value:
            self._seen.add(value)

    def finish_bundle(self):
        for value in sorted(self._seen):
            yield GlobalWindows.windowed_value(value)


class SortedUnion(beam.CombineFn):
    """The sorted distinct values of all inputs: the class names, as one element."""

    def create_accumulator(self):
        return set()

    def add_input(self, accumulator, value):
        accumulator.add(value)
        return accumulator

    def merge_accumulators(self, accumulators):
        return set().union(*accumulators)

    def extract_output(self, accumulator):
        return sorted(accumulator)


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


class Chunk(beam.DoFn):
    """Elements -> lists of up to `size` of them (per bundle). Reshuffling file names one by one
    cost ~40 us a file on the DirectRunner, as much as a small backbone's batch share."""

    def __init__(self, size: int):
        self.size = size
        self._chunk: list = []

    def start_bundle(self):
        self._chunk = []

    def process(self, element):
        self._chunk.append(element)
        if len(self._chunk) >= self.size:
            chunk, self._chunk = self._chunk, []
            yield chunk

    def finish_bundle(self):
        if self._chunk:
            yield GlobalWindows.windowed_value(self._chunk)


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


# ---------------------------------------------------------------------------------- features


class BackboneModelHandler(ModelHandler[bytes, Any, FeatureModel]):
    """Beam ModelHandler for a registry backbone: encoded images in, loaded once per worker
    process, batched; a refused image comes out as an ImageError, never as a failed batch."""

    def __init__(
        self,
        backbone: BackboneConfig,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        *,
        min_batch_size: int = 8,
        max_batch_size: int = 64,
        pixels: bool = False,
    ):
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self.backbone = backbone
        self.max_pixels = max_pixels
        self.pixels = pixels  # inputs are preprocessed images (augmented copies), not bytes
        self._batches = Metrics.counter(NAMESPACE, "batches")
        self._redone = Metrics.counter(NAMESPACE, "batches_redone_per_image")

    def load_model(self) -> FeatureModel:
        from export.model.backbones import build_feature_extractor
        from export.model.preprocessing import Preprocessor

        return FeatureModel(
            build_feature_extractor(self.backbone), Preprocessor(self.backbone, self.max_pixels)
        )

    def run_inference(self, batch: Sequence[bytes], model: FeatureModel, inference_args=None):
        from apache_beam.ml.inference.base import PredictionResult

        self._batches.inc()
        if self.pixels:
            features = model.features_of_pixels(np.stack(batch))
            return [PredictionResult(x, y) for x, y in zip(batch, features)]
        outputs, redone = model.features(batch)
        if redone:
            self._redone.inc()
        return [PredictionResult(x, y) for x, y in zip(batch, outputs)]

    def get_num_bytes(self, batch: Sequence) -> int:
        return sum(x.nbytes if self.pixels else len(x) for x in batch)

    def get_metrics_namespace(self) -> str:
        return f"{NAMESPACE}_backbone"


class AugmentCopies(beam.DoFn):
    """A training image -> K augmented model inputs, keyed as copies 1..K of it.

    Copy k is a pure function of the image's bytes (its sha256) and k, so a retried bundle or a
    re-run job writes the same copies. An image the contract refuses yields nothing here: the
    image's own path already reports it.
    """

    def __init__(self, backbone: BackboneConfig, max_pixels: int, augment, copies: int):
        self.backbone = backbone
        self.max_pixels = max_pixels
        self.augment = augment
        self.copies = copies
        self.written = Metrics.counter(NAMESPACE, "augmented_copies")
        self._preprocess = None

    def setup(self):
        from export.model.preprocessing import EagerPreprocessor, Preprocessor

        self._preprocess = EagerPreprocessor(Preprocessor(self.backbone, self.max_pixels))

    def process(self, image: tuple[ImageKey, bytes]):
        from export.training.augment import augment_copies

        key, data = image
        pixels, reason = self._preprocess(data)
        if reason is not None:
            return
        images = augment_copies(pixels, self.augment, key.sha256, self.copies)
        self.written.inc(len(images))
        for k, pixels in enumerate(images, start=1):
            yield key._replace(copy=k), pixels


# --------------------------------------------------------------------------------- writing


class EncodeRows(beam.DoFn):
    """(ImageKey, PredictionResult) -> its final tf.Example row, label id included; a refused
    image -> 'errors'. Counts per split and class go out once per bundle to 'stats'.

    One step per image from the model to the sink: every per-element Beam step costs as much as
    a fifth of a small backbone's per-image time.
    """

    def __init__(self, backbone: str):
        self.backbone = backbone
        self.failed = Metrics.counter(NAMESPACE, "images_failed")
        self._stats: Counter = Counter()
        self._ids: tuple[int, dict[str, int]] = (0, {})

    def start_bundle(self):
        self._stats = Counter()

    def label_ids(self, labels: list[str]) -> dict[str, int]:
        if self._ids[0] != id(labels):
            self._ids = (id(labels), {label: i for i, label in enumerate(labels)})
        return self._ids[1]

    def process(self, element, labels: list[str]):
        key, result = element
        if isinstance(result.inference, ImageError):
            self.failed.inc()
            return [beam.pvalue.TaggedOutput("errors", error_row(key.uri, result.inference.reason))]
        features = np.asarray(result.inference, dtype=np.float32)
        self._stats[row_stat(key)] += 1
        self._stats[(DIM, int(features.size))] = 1
        row = encode_example(
            uri=key.uri,
            sha256=key.sha256,
            label=key.label,
            label_id=self.label_ids(labels)[key.label],
            split=key.split,
            features=features,
            backbone=self.backbone,
            augment_copy=key.copy,
        )
        return [row]

    def finish_bundle(self):
        count_split_images(self._stats, +1)
        for stat, n in self._stats.items():
            yield beam.pvalue.TaggedOutput("stats", GlobalWindows.windowed_value((stat, n)))


# ----------------------------------------------------------------------------- duplicates


class FindCopies(beam.DoFn):
    """Identical bytes seen more than once: keep the copy with the smallest URI, report the rest.

    Works on (sha256, [(uri, split)]) only, so de-duplication never shuffles images or features.
    Copies in different splits are train/test leakage and are reported as such.
    """

    def __init__(self):
        self.dropped = Metrics.counter(NAMESPACE, "duplicates_dropped")

    def process(self, element):
        sha256, copies = element
        copies = sorted(copies)
        if len(copies) > 1:
            self.dropped.inc(len(copies) - 1)
            splits = sorted({split for _, split in copies})
            yield {
                "sha256": sha256,
                "kept": copies[0][0],
                "dropped": [uri for uri, _ in copies[1:]],
                "splits": splits,
                "leakage": len(splits) > 1,
            }
            for uri, _ in copies[1:]:
                yield beam.pvalue.TaggedOutput("dropped", (uri, sha256))


def parse_row(row: bytes):
    """(ImageKey, tf.train.Example) of a written row."""
    import tensorflow as tf

    example = tf.train.Example.FromString(row)
    return key_of(example), example


def key_of(example) -> ImageKey:
    feature = example.features.feature

    def text(name: str) -> str:
        return feature[name].bytes_list.value[0].decode("utf-8")

    copy = feature["augment_copy"].int64_list.value
    return ImageKey(
        text("image/uri"),
        text("label"),
        text("split"),
        text("image/sha256"),
        int(copy[0]) if copy else 0,
    )


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
    metadata = {
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


@dataclasses.dataclass
class Outputs:
    """Named PCollections, for tests (assert_that) and callers that extend the pipeline."""

    errors: beam.PCollection  # {"uri", "reason"}
    duplicates: beam.PCollection  # duplicate/leakage reports
    labels: beam.PCollection  # one element: sorted class names
    shards: beam.PCollection  # one element: the published shard paths
    metadata_path: beam.PCollection  # one element, after everything was written

    @functools.cached_property
    def rows(self) -> beam.PCollection:
        """(ImageKey, tf.train.Example) as published. Built on first use only: it reads the
        shards back, which a production run has no need of."""
        return (
            self.shards
            | "PublishedShards" >> beam.FlatMap(lambda paths: paths)
            | "ReadPublished" >> beam.io.ReadAllFromTFRecord(compression_type=CompressionTypes.GZIP)
            | "ParsePublished" >> beam.Map(parse_row)
        )


def keyed_handler(config: BottleneckConfig, pixels: bool = False) -> KeyedModelHandler:
    """The job's backbone behind RunInference, keyed so each result keeps its ImageKey."""
    return KeyedModelHandler(
        BackboneModelHandler(
            config.backbone_config(),
            config.max_pixels,
            min_batch_size=config.min_batch_size,
            max_batch_size=config.max_batch_size,
            pixels=pixels,
        )
    )


def read_images(p: beam.Pipeline, config: BottleneckConfig):
    """The dataset's files, read: outputs .images (ImageKey, bytes), .copies, .errors; and the
    sorted class names, known from the listing before any image is read."""
    split = config.split_config()
    if is_list_input(config.input):
        base_dir = posixpath.dirname(config.input)
        entries = (
            p
            | "ReadList" >> beam.io.ReadFromText(config.input)
            | "ParseList"
            >> beam.FlatMap(lambda line: filter(None, [parse_list_line(line, base_dir)]))
        )
        labels = entries | "Labels" >> beam.ParDo(DistinctPerBundle(lambda entry: entry[1]))
        reader = ReadListedFile(split, ahead=config.max_batch_size)
    else:
        root = config.input.rstrip("/")
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
        reader = ReadClassFolderFile(paths, has_validation, split, ahead=config.max_batch_size)
    read = entries | "ReadFiles" >> beam.ParDo(reader).with_outputs(
        "copies", "errors", main="images"
    )
    return read, labels | "AllLabels" >> beam.CombineGlobally(SortedUnion())


def build_pipeline(p: beam.Pipeline, config: BottleneckConfig, options_info: dict) -> Outputs:
    """One pass over the images: read -> backbone (RunInference) -> final rows -> shards, staged
    in a hidden directory until the duplicate report says which copies to drop."""
    backbone = config.backbone_config()
    staging = FileSystems.join(config.output, f".tmp-{uuid.uuid4().hex}")
    read, labels = read_images(p, config)
    inferred, dead_letters = (
        read.images | "Features" >> RunInference(keyed_handler(config)).with_exception_handling()
    )
    if config.augment_copies:
        inferred = (inferred, augmented_rows(read.images, config)) | "WithCopies" >> beam.Flatten()
    rows = inferred | "EncodeRows" >> beam.ParDo(
        EncodeRows(backbone.name), labels=beam.pvalue.AsSingleton(labels)
    ).with_outputs("errors", "stats", main="rows")
    staged = rows.rows | "WriteTFRecords" >> beam.io.Write(
        GzipTFRecordSink(
            FileSystems.join(staging, FEATURES_PREFIX),
            file_name_suffix=TFRECORD_SUFFIX,
            num_shards=config.num_shards,
        )
    )
    copies = (
        read.copies
        | "GroupCopies" >> beam.GroupByKey()
        | "FindCopies" >> beam.ParDo(FindCopies()).with_outputs("dropped", main="duplicates")
    )
    deduplicated = (
        staged
        | "SpreadShards" >> beam.Reshuffle()
        | "DropCopies"
        >> beam.ParDo(
            DropCopiesFromShard(staging), dropped=beam.pvalue.AsDict(copies.dropped)
        ).with_outputs("stats", main="shards")
    )
    shards = (
        p
        | "Ready" >> beam.Create([None])
        | "Publish"
        >> beam.Map(publish, shards=beam.pvalue.AsList(deduplicated.shards), output=config.output)
    )
    errors = (
        read.errors,
        rows.errors,
        failed_batch_rows(
            dead_letters.failed_inferences, "feature extraction", uri=lambda key: key.uri
        ),
    ) | "AllErrors" >> beam.Flatten()
    error_files = (
        errors
        | "ErrorJson" >> beam.Map(lambda row: json.dumps(row, sort_keys=True))
        | "WriteErrors"
        >> beam.io.WriteToText(
            FileSystems.join(config.output, ERRORS_PREFIX), file_name_suffix=".jsonl"
        )
    )
    stats = (
        (
            rows.stats,
            deduplicated.stats,
            errors | "ErrorStats" >> beam.Map(lambda _: ((ERRORS,), 1)),
        )
        | "AllStats" >> beam.Flatten()
        | ("SumStats" >> beam.CombinePerKey(sum))
    )
    metadata_path = shards | "WriteMetadata" >> beam.Map(
        write_sidecars,
        output=config.output,
        error_files=beam.pvalue.AsList(error_files),
        labels=beam.pvalue.AsSingleton(labels),
        stats=beam.pvalue.AsList(stats),
        duplicates=beam.pvalue.AsList(copies.duplicates),
        info=options_info,
        staging=staging,
    )
    return Outputs(errors, copies.duplicates, labels, shards, metadata_path)


def augmented_rows(images, config: BottleneckConfig):
    """(ImageKey with copy k, PredictionResult) for K augmented copies of every training image."""
    backbone = config.backbone_config()
    return (
        images
        | "TrainingOnly" >> beam.Filter(lambda image: image[0].split == TRAIN)
        | "Augment"
        >> beam.ParDo(
            AugmentCopies(
                backbone, config.max_pixels, config.augment_config(), config.augment_copies
            )
        )
        | "CopyFeatures" >> RunInference(keyed_handler(config, pixels=True))
    )


def job_info(config: BottleneckConfig, options: PipelineOptions) -> dict:
    from export.model.preprocessing import Preprocessor

    return {
        "backbone": config.backbone_config().to_dict(),
        "preprocessing": Preprocessor(config.backbone_config(), config.max_pixels).describe(),
        "preprocessing_version": PREPROCESSING_VERSION,
        "split": dataclasses.asdict(config.split_config()),
        "augment": {
            "copies": config.augment_copies,
            "splits": [TRAIN] if config.augment_copies else [],
            **(config.augment_config().to_dict() if config.augment_copies else {}),
        },
        "job_options": {
            "xfer": dataclasses.asdict(config),
            "pipeline": options.get_all_options(drop_default=True),
        },
    }


DIRECT_RUNNERS = {None, "DirectRunner", "direct", "SwitchingDirectRunner"}
DIRECT_WORKERS = 2


def local_parallelism(options: PipelineOptions, args: Sequence[str]) -> PipelineOptions:
    """On the DirectRunner, unless the flags say otherwise: two bundles at a time, on threads.

    Beam's default runs one bundle at a time, so the Python of every Beam step and the
    backbone's TensorFlow call (which releases the GIL) take turns; with two, one bundle's
    Python runs while the other's batch is in TensorFlow. Two is enough for that, and more would
    only run more TensorFlow calls at once on the same cores.
    """
    runner = options.view_as(StandardOptions).runner
    told = any(a.startswith(("--direct_num_workers", "--direct_running_mode")) for a in args)
    if runner in DIRECT_RUNNERS and not told:
        direct = options.view_as(DirectOptions)
        direct.direct_num_workers = DIRECT_WORKERS
        direct.direct_running_mode = "multi_threading"
    return options


def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None):
    """Build and run the job. With `test_pipeline`, only build into it (the caller runs it)."""
    config, pipeline_args = parse_args(argv)
    options = local_parallelism(PipelineOptions(pipeline_args), pipeline_args)
    info = job_info(config, options)
    if test_pipeline is not None:
        return build_pipeline(test_pipeline, config, info)
    return run_pipeline(options, lambda p: build_pipeline(p, config, info))


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
