"""Batch inference inside Beam: a published SavedModel version scores images with RunInference.

    python -m beam_jobs.predict --input IMAGES --model_dir models/NAME --output OUT [beam flags]

The offline alternative to calling a server: the same SavedModel, raw bytes in, the scored-output
schema of docs/architecture.md out:
  OUT/predictions-SSSSS-of-NNNNN.jsonl   {"uri", "labels", "scores", "model_version"}, and
                                         "ood_score", "is_ood" for a model that has them
                                         (top-k labels, best first, and their scores)
  OUT/errors-SSSSS-of-NNNNN.jsonl        {"uri", "error"}
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import (
    KeyedModelHandler,
    ModelHandler,
    PredictionResult,
    RunInference,
)
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs.common import (
    NAMESPACE,
    failed_batch_rows,
    run_pipeline,
    setup_logging,
    write_scored,
)
from beam_jobs.flags import parse_predict_flags
from beam_jobs.inputs import LIST_SUFFIXES, parse_list_line
from export.contract import (
    IMAGE_EXTENSIONS,
    INPUT_KEY,
    IS_OOD,
    OOD_OUTPUTS,
    OOD_SCORE,
    SERVING_DEFAULT,
)
from export.publishing.versions import resolve_version

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PredictConfig:
    input: str
    model_dir: str
    output: str
    version: int | None = None
    top_k: int = 5
    min_batch_size: int = 8
    max_batch_size: int = 64


def parse_args(argv: Sequence[str] | None) -> tuple[PredictConfig, list[str]]:
    """Our flags (beam_jobs/flags.py) and the pipeline's."""
    flags, rest = parse_predict_flags(argv, __doc__)
    return PredictConfig(**dataclasses.asdict(flags)), rest


def resolve_version_dir(model_dir: str, version: int | None) -> str:
    """Local paths: the highest integer version (as TF Serving picks); a version dir as is."""
    return str(resolve_version(Path(model_dir), version))


class SavedModelHandler(ModelHandler[bytes, dict, Any]):
    """Raw encoded images -> serving_default outputs, one model per worker process.

    A batch with an undecodable image is retried image by image, so one bad file costs its own
    row only; its result carries the model's reason instead of scores.
    """

    def __init__(
        self, version_dir: str, top_k: int = 5, *, min_batch_size: int = 8, max_batch_size: int = 64
    ):
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self.version_dir = version_dir
        self.top_k = top_k
        self._bisected = Metrics.counter(NAMESPACE, "batches_split_for_bad_images")

    def load_model(self):
        import tensorflow as tf

        return tf.saved_model.load(self.version_dir).signatures[SERVING_DEFAULT]

    def _score(self, images: Sequence[bytes], model) -> list[dict]:
        import tensorflow as tf

        out = model(**{INPUT_KEY: tf.constant(list(images))})
        labels = out["labels"].numpy()[:, : self.top_k]
        scores = out["top_scores"].numpy()[:, : self.top_k]
        rows = [
            {
                "labels": [s.decode() for s in row_labels],
                "scores": [round(float(s), 6) for s in row_scores],
            }
            for row_labels, row_scores in zip(labels, scores)
        ]
        if all(o in out for o in OOD_OUTPUTS):  # a model exported with an OOD detector
            for row, score, flag in zip(rows, *(out[o].numpy() for o in OOD_OUTPUTS)):
                row.update({OOD_SCORE: float(score), IS_OOD: bool(flag)})
        return rows

    def run_inference(self, batch: Sequence[bytes], model, inference_args=None):
        import tensorflow as tf

        from export.model.preprocessing import error_reason

        try:
            outputs = self._score(batch, model)
        except tf.errors.InvalidArgumentError:
            self._bisected.inc()
            outputs = []
            for image in batch:
                try:
                    outputs.extend(self._score([image], model))
                except tf.errors.InvalidArgumentError as exc:
                    outputs.append({"error": error_reason(exc)})
        return [PredictionResult(x, y) for x, y in zip(batch, outputs)]

    def get_num_bytes(self, batch: Sequence[bytes]) -> int:
        return sum(len(x) for x in batch)

    def get_metrics_namespace(self) -> str:
        return f"{NAMESPACE}_savedmodel"


class ToScoredRow(beam.DoFn):
    """(uri, PredictionResult) -> a scored row, or an error row on the 'errors' output."""

    def __init__(self, model_version: int | None):
        self.model_version = model_version
        self.scored = Metrics.counter(NAMESPACE, "images_scored")
        self.failed = Metrics.counter(NAMESPACE, "images_failed")

    def process(self, element):
        uri, result = element
        if "error" in result.inference:
            self.failed.inc()
            return [
                beam.pvalue.TaggedOutput("errors", {"uri": uri, "error": result.inference["error"]})
            ]
        self.scored.inc()
        return [{"uri": uri, **result.inference, "model_version": self.model_version}]


class ReadUri(beam.DoFn):
    def process(self, uri: str):
        try:
            with FileSystems.open(uri, compression_type="uncompressed") as f:
                yield uri, f.read()
        except Exception as exc:  # noqa: BLE001 - any I/O failure becomes an error row
            Metrics.counter(NAMESPACE, "images_failed").inc()
            yield beam.pvalue.TaggedOutput("errors", {"uri": uri, "error": f"unreadable: {exc}"})


def read_images(p: beam.Pipeline, source: str):
    """(uri, bytes) and read-error rows, from a directory, a glob or a list of URIs."""
    if source.lower().endswith(LIST_SUFFIXES):
        base_dir = str(Path(source).parent)
        return (
            p
            | "ReadList" >> beam.io.ReadFromText(source)
            | "ParseList"
            >> beam.FlatMap(lambda line: [e[0] for e in [parse_list_line(line, base_dir)] if e])
            | "ReadFiles" >> beam.ParDo(ReadUri()).with_outputs("errors", main="ok")
        )
    pattern = source if any(c in source for c in "*?[") else FileSystems.join(source, "**")
    files = (
        p
        | "MatchFiles" >> fileio.MatchFiles(pattern)
        | "ImagesOnly" >> beam.Filter(lambda m: m.path.lower().endswith(IMAGE_EXTENSIONS))
        | "ReadMatches" >> fileio.ReadMatches()
        | "Uris" >> beam.Map(lambda f: f.metadata.path)
    )
    return files | "ReadFiles" >> beam.ParDo(ReadUri()).with_outputs("errors", main="ok")


def build_pipeline(p: beam.Pipeline, config: PredictConfig, version_dir: str):
    name = Path(version_dir).name
    version = int(name) if name.isdigit() else None
    images = read_images(p, config.input)
    handler = KeyedModelHandler(
        SavedModelHandler(
            version_dir,
            config.top_k,
            min_batch_size=config.min_batch_size,
            max_batch_size=config.max_batch_size,
        )
    )
    scored, dead_letters = images.ok | "Score" >> RunInference(handler).with_exception_handling()
    rows = scored | "Rows" >> beam.ParDo(ToScoredRow(version)).with_outputs("errors", main="ok")
    failed_batches = failed_batch_rows(dead_letters.failed_inferences, "inference")
    errors = (images.errors, rows.errors, failed_batches) | "AllErrors" >> beam.Flatten()
    write_scored(rows.ok, errors, config.output)
    return rows.ok, errors


def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None):
    config, pipeline_args = parse_args(argv)
    version_dir = resolve_version_dir(config.model_dir, config.version)
    if test_pipeline is not None:
        return build_pipeline(test_pipeline, config, version_dir)
    return run_pipeline(
        PipelineOptions(pipeline_args), lambda p: build_pipeline(p, config, version_dir)
    )


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    try:
        run(argv)
    except FileNotFoundError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    # `python -m beam_jobs.predict` runs this file as `__main__`, and what it defines (DoFns,
    # model handlers, lambdas, any element type) would reach Beam's workers as `__main__.<name>`:
    # pickled by value at best, and not at all where Beam falls back to the standard pickle
    # (an element type: "Can't pickle <class '__main__.ImageKey'>"). So the job runs from the
    # importable module, as the console script runs it; workers import `beam_jobs.predict`.
    from beam_jobs.predict import main as job_main

    sys.exit(job_main())
