"""Bottleneck features at scale: images -> backbone features -> sharded gzip TFRecords.

    python -m beam_jobs.bottlenecks --input IMAGES --output OUT --backbone mobilenet_v2 [beam flags]

Our flags are parsed here; every other flag goes to Beam's PipelineOptions unchanged, so the same
command runs on the DirectRunner or on Dataflow (`--runner DataflowRunner --setup_file ./setup.py`).

Output directory OUT (local or any Beam filesystem, e.g. gs://):
  features-SSSSS-of-NNNNN.tfrecord.gz   one tf.Example per image (export/bottleneck_schema.py)
  labels.txt                            class names, line i = label_id i
  errors-SSSSS-of-NNNNN.jsonl           {"uri", "reason"} for each image that could not be used
  metadata.json                         counts, backbone, duplicates/leakage, options (written last)
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import logging
import posixpath
import sys
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs.common import NAMESPACE, failed_batch_rows, run_pipeline, setup_logging
from beam_jobs.tfrecord_sink import GzipTFRecordSink
from export.augment import AugmentConfig
from export.backbones import BackboneConfig
from export.bottleneck_schema import (
    ERRORS_PREFIX,
    FEATURES_PREFIX,
    LABELS_FILE,
    METADATA_FILE,
    TFRECORD_SUFFIX,
    encode_example,
)
from export.dataset import TRAIN, SplitConfig, parse_path, split_of
from export.features import FeatureModel, ImageError
from export.preprocessing import DEFAULT_MAX_PIXELS, PREPROCESSING_VERSION

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xfer-bottlenecks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = BottleneckConfig(input="", output="")
    parser.add_argument(
        "--input", required=True, help="class-folder root, or a CSV/text list of uri,label[,split]"
    )
    parser.add_argument("--output", required=True, help="output directory (prefix)")
    parser.add_argument("--backbone", default=defaults.backbone)
    parser.add_argument("--weights", default=defaults.weights)
    parser.add_argument("--image_size", "--image-size", type=int, default=None)
    parser.add_argument("--feature_layer", "--feature-layer", default=None)
    parser.add_argument("--alpha", type=float, default=defaults.alpha)
    parser.add_argument("--num_shards", "--num-shards", type=int, default=defaults.num_shards)
    parser.add_argument(
        "--validation_percent",
        "--validation-percent",
        type=float,
        default=defaults.validation_percent,
    )
    parser.add_argument(
        "--test_percent", "--test-percent", type=float, default=defaults.test_percent
    )
    parser.add_argument("--max_pixels", "--max-pixels", type=int, default=defaults.max_pixels)
    parser.add_argument(
        "--min_batch_size", "--min-batch-size", type=int, default=defaults.min_batch_size
    )
    parser.add_argument(
        "--max_batch_size", "--max-batch-size", type=int, default=defaults.max_batch_size
    )
    parser.add_argument(
        "--augment_copies",
        "--augment-copies",
        type=int,
        default=0,
        help="write K augmented feature copies of each training image (validation and test "
        "images are never augmented); the transforms are xfer-train's --augment-* flags",
    )
    for name in ("rotation", "shift", "shear", "zoom"):
        parser.add_argument(
            f"--augment_{name}",
            f"--augment-{name}",
            type=float,
            default=getattr(AugmentConfig, name),
        )
    parser.add_argument(
        "--augment_flip",
        "--augment-flip",
        action=argparse.BooleanOptionalAction,
        default=AugmentConfig.flip,
    )
    return parser


def parse_args(argv: Sequence[str] | None) -> tuple[BottleneckConfig, list[str]]:
    known, rest = build_parser().parse_known_args(argv)
    return BottleneckConfig(**vars(known)), rest


# ------------------------------------------------------------------------------------ elements


class ImageRecord(NamedTuple):
    uri: str
    label: str
    split: str
    sha256: str
    data: bytes


class ImageKey(NamedTuple):
    """Travels with an image through RunInference (KeyedModelHandler) to its TFRecord row."""

    uri: str
    label: str
    split: str
    sha256: str
    copy: int = 0  # 0: the image itself; k > 0: its k-th augmented copy (training split only)


def error_row(uri: str, reason: str) -> dict:
    return {"uri": uri, "reason": reason}


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


class ReadClassFolderFile(beam.DoFn):
    """ReadableFile under a class-folder root -> ImageRecord; unreadable -> 'errors'."""

    def __init__(self, root: str, explicit: bool, has_validation: bool, split: SplitConfig):
        self.root = root.rstrip("/")
        self.explicit = explicit
        self.has_validation = has_validation
        self.split = split
        self.read = Metrics.counter(NAMESPACE, "images_read")
        self.failed = Metrics.counter(NAMESPACE, "images_failed")

    def process(self, readable: fileio.ReadableFile):
        uri = readable.metadata.path
        under_root = uri[len(self.root) :].lstrip("/") if uri.startswith(self.root) else uri
        parsed = parse_path(under_root, self.explicit)
        if parsed is None:
            return []  # hidden file, or not inside a class folder: not part of the dataset
        split_dir, label, relative = parsed
        try:
            data = readable.read()
        except Exception as exc:  # noqa: BLE001 - any I/O failure becomes an error row
            self.failed.inc()
            return [beam.pvalue.TaggedOutput("errors", error_row(uri, f"unreadable: {exc}"))]
        self.read.inc()
        split = split_of(relative, split_dir, self.split, self.has_validation)
        return [ImageRecord(uri, label, split, hashlib.sha256(data).hexdigest(), data)]


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


class ReadListedFile(beam.DoFn):
    """(uri, label, split) from a list file -> ImageRecord; missing/unreadable -> 'errors'."""

    def __init__(self, split: SplitConfig):
        self.split = split
        self.read = Metrics.counter(NAMESPACE, "images_read")
        self.failed = Metrics.counter(NAMESPACE, "images_failed")

    def process(self, entry: tuple[str, str, str | None]):
        uri, label, split = entry
        if not label:
            self.failed.inc()
            return [beam.pvalue.TaggedOutput("errors", error_row(uri, "no label in the list"))]
        try:
            with FileSystems.open(uri, compression_type="uncompressed") as f:
                data = f.read()
        except Exception as exc:  # noqa: BLE001
            self.failed.inc()
            return [beam.pvalue.TaggedOutput("errors", error_row(uri, f"unreadable: {exc}"))]
        self.read.inc()
        split = split or split_of(posixpath.basename(uri), None, self.split)
        return [ImageRecord(uri, label, split, hashlib.sha256(data).hexdigest(), data)]


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
        from export.backbones import build_feature_extractor
        from export.preprocessing import Preprocessor

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


class SplitRefused(beam.DoFn):
    """(ImageKey, PredictionResult) -> (ImageKey, features), or an error row for a refused one."""

    def __init__(self):
        self.failed = Metrics.counter(NAMESPACE, "images_failed")

    def process(self, element):
        key, result = element
        if isinstance(result.inference, ImageError):
            self.failed.inc()
            return [beam.pvalue.TaggedOutput("errors", error_row(key.uri, result.inference.reason))]
        return [(key, np.asarray(result.inference, dtype=np.float32))]


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
        from export.preprocessing import EagerPreprocessor, Preprocessor

        self._preprocess = EagerPreprocessor(Preprocessor(self.backbone, self.max_pixels))

    def process(self, record: ImageRecord):
        from export.augment import augment_copies

        pixels, reason = self._preprocess(record.data)
        if reason is not None:
            return
        images = augment_copies(pixels, self.augment, record.sha256, self.copies)
        self.written.inc(len(images))
        for k, image in enumerate(images, start=1):
            yield ImageKey(record.uri, record.label, record.split, record.sha256, k), image


# ----------------------------------------------------------------------------- duplicates


class FindCopies(beam.DoFn):
    """Identical bytes seen more than once: keep the copy with the smallest URI, report the rest.

    Works on (sha256, [(uri, split)]) only, so de-duplication never shuffles images or features;
    the dropped URIs are filtered out of the feature rows through a side input. Copies in
    different splits are train/test leakage and are reported as such.
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


def not_dropped(row, dropped: dict) -> bool:
    return row[0].uri not in dropped


# --------------------------------------------------------------------------------- writing


class CountSplit(beam.DoFn):
    def process(self, row):
        key, _ = row
        if key.copy:
            return  # counts are of images; their augmented copies are counted apart
        Metrics.counter(NAMESPACE, f"images_{key.split}").inc()
        yield (key.split, key.label), 1


def to_unlabelled_example(row, backbone: str) -> bytes:
    """First pass: the row as written before the label ids and the duplicates are known."""
    key, features = row
    return encode_example(
        uri=key.uri,
        sha256=key.sha256,
        label=key.label,
        label_id=-1,
        split=key.split,
        features=features,
        backbone=backbone,
        augment_copy=key.copy,
    )


def from_unlabelled_example(serialized: bytes):
    """Second pass: (ImageKey, the parsed tf.Example); the features stay in the proto."""
    import tensorflow as tf

    example = tf.train.Example.FromString(serialized)
    feature = example.features.feature

    def text(name: str) -> str:
        return feature[name].bytes_list.value[0].decode("utf-8")

    copy = feature["augment_copy"].int64_list.value
    key = ImageKey(
        text("image/uri"),
        text("label"),
        text("split"),
        text("image/sha256"),
        int(copy[0]) if copy else 0,
    )
    return key, example


def labelled(row, labels: list[str]) -> bytes:
    """The final tf.Example: the first pass's, with its label id."""
    key, example = row
    label_id = example.features.feature["label_id"].int64_list.value
    label_id[:] = [labels.index(key.label)]
    return example.SerializeToString()


def feature_count(row) -> int:
    return len(row[1].features.feature["features"].float_list.value)


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
    _,
    output: str,
    labels: list[str],
    counts: list,
    errors: int,
    duplicates: list[dict],
    feature_dims: list[int],
    shards: list[str],
    info: dict,
    temporary: list[str] = (),
    augmented: int = 0,
) -> str:
    """labels.txt and metadata.json; runs after the TFRecord shards were finalised. Then the
    first pass's temporary shards go."""
    table: dict[str, dict[str, int]] = {}
    for (split, label), n in counts:
        table.setdefault(split, {})[label] = n
    metadata = {
        **info,
        "labels": labels,
        "num_classes": len(labels),
        "counts": table,
        "total": sum(n for _, n in counts),
        "augmented_copies": augmented,
        "errors": errors,
        "feature_dim": feature_dims[0] if feature_dims else None,
        "duplicates": sorted(duplicates, key=lambda d: d["kept"]),
        "leakage": [d for d in duplicates if d["leakage"]],
        "shards": sorted(posixpath.basename(s) for s in shards),
    }
    write_atomically(FileSystems.join(output, LABELS_FILE), ("\n".join(labels) + "\n").encode())
    text = json.dumps(metadata, indent=2, sort_keys=True, default=str) + "\n"
    write_atomically(FileSystems.join(output, METADATA_FILE), text.encode())
    remove_temporary(list(temporary))
    return FileSystems.join(output, METADATA_FILE)


def remove_temporary(paths: list[str]) -> None:
    directories = sorted({posixpath.dirname(p) for p in paths})
    for group in (paths, directories):
        try:
            FileSystems.delete(group)
        except Exception as exc:  # noqa: BLE001 - leftovers are hidden and harmless
            log.warning("could not remove temporary files %s: %s", group, exc)


@dataclasses.dataclass
class Outputs:
    """Named PCollections, for tests (assert_that) and callers that extend the pipeline."""

    rows: beam.PCollection  # (ImageKey, tf.train.Example) after de-duplication
    errors: beam.PCollection  # {"uri", "reason"}
    duplicates: beam.PCollection  # duplicate/leakage reports
    labels: beam.PCollection  # one element: sorted class names
    metadata_path: beam.PCollection  # one element, after everything was written


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


def build_pipeline(p: beam.Pipeline, config: BottleneckConfig, options_info: dict) -> Outputs:
    split = config.split_config()
    backbone = config.backbone_config()
    if is_list_input(config.input):
        base_dir = posixpath.dirname(config.input)
        records = (
            p
            | "ReadList" >> beam.io.ReadFromText(config.input)
            | "ParseList"
            >> beam.FlatMap(lambda line: filter(None, [parse_list_line(line, base_dir)]))
            | "ReadFiles" >> beam.ParDo(ReadListedFile(split)).with_outputs("errors", main="ok")
        )
    else:
        root = config.input.rstrip("/")
        explicit, has_validation = detect_layout(root)
        records = (
            p
            | "MatchFiles" >> fileio.MatchFiles(FileSystems.join(root, "**"))
            # One match element fans out to every file: without this, one worker reads them all.
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadMatches" >> fileio.ReadMatches()
            | "ReadFiles"
            >> beam.ParDo(ReadClassFolderFile(root, explicit, has_validation, split)).with_outputs(
                "errors", main="ok"
            )
        )
    handler = keyed_handler(config)
    inferred, dead_letters = (
        records.ok
        | "KeyImages" >> beam.Map(lambda r: (ImageKey(r.uri, r.label, r.split, r.sha256), r.data))
        | "Features" >> RunInference(handler).with_exception_handling()
    )
    features = inferred | "SplitRefused" >> beam.ParDo(SplitRefused()).with_outputs(
        "errors", main="ok"
    )
    feature_rows = features.ok
    if config.augment_copies:
        feature_rows = (feature_rows, augmented_rows(records.ok, config)) | "WithCopies" >> (
            beam.Flatten()
        )
    # First pass, streamed: features go to temporary shards as they are computed, so nothing
    # waits in memory for the label list or for the duplicate report (both need every image).
    temporary = (
        feature_rows
        | "ToUnlabelled" >> beam.Map(to_unlabelled_example, backbone=backbone.name)
        | "WriteTempFeatures"
        >> beam.io.WriteToTFRecord(
            FileSystems.join(config.output, f".tmp-{uuid.uuid4().hex}", "part"),
            compression_type=beam.io.filesystem.CompressionTypes.UNCOMPRESSED,
        )
    )

    copies = (
        records.ok
        | "CopyKey" >> beam.Map(lambda r: (r.sha256, (r.uri, r.split)))
        | "GroupCopies" >> beam.GroupByKey()
        | "FindCopies" >> beam.ParDo(FindCopies()).with_outputs("dropped", main="duplicates")
    )
    # Second pass, once the temporary shards are complete: drop the copies, number the labels.
    rows = (
        temporary
        | "ReadTempFeatures"
        >> beam.io.ReadAllFromTFRecord(
            compression_type=beam.io.filesystem.CompressionTypes.UNCOMPRESSED
        )
        | "ParseTemp" >> beam.Map(from_unlabelled_example)
        | "DropCopies" >> beam.Filter(not_dropped, dropped=beam.pvalue.AsDict(copies.dropped))
    )
    # Labels come from what was read, not from the features. A class whose images all fail to
    # decode keeps its label id; the trainer then names it as a class without decodable images.
    labels = (
        records.ok
        | "Label" >> beam.Map(lambda record: record.label)
        | "DistinctLabels" >> beam.Distinct()
        | "AllLabels" >> beam.combiners.ToList()
        | "Sort" >> beam.Map(sorted)
    )
    errors = (
        records.errors,
        features.errors,
        failed_batch_rows(
            dead_letters.failed_inferences, "feature extraction", uri=lambda key: key.uri
        ),
    ) | "AllErrors" >> beam.Flatten()
    shards = (
        rows
        | "SetLabelId" >> beam.Map(labelled, labels=beam.pvalue.AsSingleton(labels))
        | "WriteTFRecords"
        >> beam.io.Write(
            GzipTFRecordSink(
                FileSystems.join(config.output, FEATURES_PREFIX),
                file_name_suffix=TFRECORD_SUFFIX,
                num_shards=config.num_shards,
            )
        )
    )
    _ = (
        errors
        | "ErrorJson" >> beam.Map(lambda row: json.dumps(row, sort_keys=True))
        | "WriteErrors"
        >> beam.io.WriteToText(
            FileSystems.join(config.output, ERRORS_PREFIX), file_name_suffix=".jsonl"
        )
    )
    counts = rows | "CountSplit" >> beam.ParDo(CountSplit()) | beam.CombinePerKey(sum)
    feature_dims = rows | "Dim" >> beam.Map(feature_count) | beam.Distinct()
    error_count = errors | "CountErrors" >> beam.combiners.Count.Globally()
    augmented = (
        rows
        | "CopiesOnly" >> beam.Filter(lambda row: row[0].copy > 0)
        | "CountCopies" >> beam.combiners.Count.Globally()
    )
    metadata_path = (
        p
        | "Once" >> beam.Create([None])
        | "WriteMetadata"
        >> beam.Map(
            write_sidecars,
            output=config.output,
            labels=beam.pvalue.AsSingleton(labels),
            counts=beam.pvalue.AsList(counts),
            errors=beam.pvalue.AsSingleton(error_count),
            duplicates=beam.pvalue.AsList(copies.duplicates),
            feature_dims=beam.pvalue.AsList(feature_dims),
            shards=beam.pvalue.AsList(shards),
            info=options_info,
            temporary=beam.pvalue.AsList(temporary),
            augmented=beam.pvalue.AsSingleton(augmented),
        )
    )
    return Outputs(rows, errors, copies.duplicates, labels, metadata_path)


def augmented_rows(records, config: BottleneckConfig):
    """(ImageKey with copy k, features) for K augmented copies of every training image."""
    backbone = config.backbone_config()
    handler = keyed_handler(config, pixels=True)
    inferred = (
        records
        | "TrainingOnly" >> beam.Filter(lambda r: r.split == TRAIN)
        | "Augment"
        >> beam.ParDo(
            AugmentCopies(
                backbone, config.max_pixels, config.augment_config(), config.augment_copies
            )
        )
        | "CopyFeatures" >> RunInference(handler)
    )
    return inferred | "UnwrapCopies" >> beam.MapTuple(
        lambda key, result: (key, np.asarray(result.inference, dtype=np.float32))
    )


def job_info(config: BottleneckConfig, options: PipelineOptions) -> dict:
    from export.preprocessing import Preprocessor

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


def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None):
    """Build and run the job. With `test_pipeline`, only build into it (the caller runs it)."""
    config, pipeline_args = parse_args(argv)
    options = PipelineOptions(pipeline_args)
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
