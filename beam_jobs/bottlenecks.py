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

import dataclasses
import functools
import json
import sys
import uuid
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from beam_jobs.bottleneck_output import DropCopiesFromShard, FindCopies, publish, write_sidecars
from beam_jobs.bottleneck_rows import (
    ERRORS,
    AugmentCopies,
    BackboneModelHandler,
    EncodeRows,
    parse_row,
)
from beam_jobs.common import failed_batch_rows, run_pipeline, setup_logging
from beam_jobs.flags import parse_bottleneck_flags
from beam_jobs.inputs import read_dataset
from beam_jobs.tfrecord_sink import GzipTFRecordSink
from export.data.dataset import TRAIN, SplitConfig
from export.features.bottleneck_schema import ERRORS_PREFIX, FEATURES_PREFIX, TFRECORD_SUFFIX
from export.model.backbones import BackboneConfig
from export.model.preprocessing import DEFAULT_MAX_PIXELS, Preprocessor
from export.model.resize_mode import DEFAULT_CROP_PADDING, DEFAULT_INTERPOLATION, TRANSFER_DEFAULT
from export.training.augment import AugmentConfig

# This module is the job: its flags, the pipeline's wiring and running it. The parts it wires:
#   inputs.py             listing and reading the images (class folders or a list file)
#   bottleneck_rows.py    backbone (RunInference), augmented copies, tf.Example rows, statistics
#   bottleneck_output.py  duplicates dropped, shards published, labels.txt and metadata.json
#   transforms.py         Beam building blocks that know nothing of images

# ---------------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class BottleneckConfig:
    input: str
    output: str
    backbone: str = "mobilenet_v2"
    weights: str = "imagenet"
    image_size: int | None = None
    feature_layer: str | None = None
    alpha: float = 1.0
    resize: str = TRANSFER_DEFAULT  # squash or center_crop (export/model/resize_mode.py)
    crop_padding: int = DEFAULT_CROP_PADDING
    crop_interpolation: str = DEFAULT_INTERPOLATION
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


# --------------------------------------------------------------------------------------- pipeline


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


def build_pipeline(p: beam.Pipeline, config: BottleneckConfig, options_info: dict) -> Outputs:
    """One pass over the images: read -> backbone (RunInference) -> final rows -> shards, staged
    in a hidden directory until the duplicate report says which copies to drop."""
    backbone = config.backbone_config()
    staging = FileSystems.join(config.output, f".tmp-{uuid.uuid4().hex}")
    read, labels = read_dataset(p, config.input, config.split_config(), ahead=config.max_batch_size)
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


# ---------------------------------------------------------------------------------------- running


def job_info(config: BottleneckConfig, options: PipelineOptions) -> dict:
    return {
        "backbone": config.backbone_config().to_dict(),
        "preprocessing": Preprocessor(config.backbone_config(), config.max_pixels).describe(),
        "preprocessing_version": config.backbone_config().resize.version,
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
    # `python -m beam_jobs.bottlenecks` runs this file as `__main__`, and what it defines (DoFns,
    # model handlers, lambdas, any element type) would reach Beam's workers as `__main__.<name>`:
    # pickled by value at best, and not at all where Beam falls back to the standard pickle
    # (an element type: "Can't pickle <class '__main__.ImageKey'>"). So the job runs from the
    # importable module, as the console script runs it; workers import `beam_jobs.bottlenecks`.
    from beam_jobs.bottlenecks import main as job_main

    sys.exit(job_main())
