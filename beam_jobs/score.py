"""Scoring on a distributed engine: images -> TF Serving over gRPC from Beam workers -> JSONL.

    python -m beam_jobs.score --input IMAGES --output OUT --target HOST:PORT --model-name NAME \
        [client flags: --version-label, --batch-size, --max-message-mb, --timeout, --tls, ...] \
        [beam flags: --runner DataflowRunner --project ... --setup_file ./setup.py]

The model handler is Beam's `RemoteModelHandler` around the batch client's own request code
(`client.scorer.Scorer`): requests bounded by image count and bytes, retries with backoff on
UNAVAILABLE / DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED, bisection of a batch the server refuses
(INVALID_ARGUMENT) so that only the bad images fail. With `--preprocess client` the workers turn
each image into the model's uint8 pixels with the contract's own pixel step (client/pixels.py) and
send those to `serving_pixels`. Output as xfer-score's (docs/architecture.md):
  OUT/predictions-SSSSS-of-NNNNN.jsonl   {"uri", "labels", "scores", "model_version"}
  OUT/errors-SSSSS-of-NNNNN.jsonl        {"uri", "error"}
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import (
    KeyedModelHandler,
    PredictionResult,
    RemoteModelHandler,
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
from beam_jobs.flags import parse_score_flags
from beam_jobs.predict import read_images
from client.batching import fits_alone, request_bytes
from client.config import ScoreConfig

log = logging.getLogger(__name__)


BATCH_CAPACITY = 1_000_000  # weight units of one request


class ImageWeight:
    """One image's share of a request, bounding both images per request and bytes per request.

    Beam's BatchElements bounds a single additive weight (its `max_batch_weight` is not accepted
    in this Beam version), so each image weighs the larger of 1/batch_size and its bytes'
    share of the message limit; a batch of total weight <= BATCH_CAPACITY then respects both.
    With `pixels` (--preprocess client) a file's size says nothing of its request (3 x S x S
    bytes, S known to the workers only): images count, and the Scorer splits a batch by bytes.
    """

    def __init__(self, batch_size: int, max_bytes: int, pixels: bool = False):
        self.batch_size = batch_size
        self.budget = max_bytes - request_bytes([])
        self.pixels = pixels

    def __call__(self, image: bytes) -> int:
        share = 1 / self.batch_size
        if not self.pixels:
            share = max(share, (request_bytes([len(image)]) - request_bytes([])) / self.budget)
        return max(1, math.ceil(share * BATCH_CAPACITY))


class TFServingModelHandler(RemoteModelHandler[bytes, dict, Any]):
    """Encoded images -> rows of the scored-output schema, from a TF Serving endpoint.

    The client's Scorer does the retrying (only on the codes that can succeed later), so Beam's
    own retry is off; a run the server refuses outright (unknown model, credentials) fails the
    batch into the dead-letter output.
    """

    def __init__(self, config: ScoreConfig):
        super().__init__(namespace=f"{NAMESPACE}_tfserving", num_retries=0)
        self.config = config
        self._batching_kwargs = {
            "min_batch_size": 1,
            "max_batch_size": BATCH_CAPACITY,
            "element_size_fn": ImageWeight(
                config.batch_size, config.max_message_bytes, config.preprocess == "client"
            ),
        }

    def create_client(self):
        from client.scorer import Scorer

        return Scorer(self.config)

    def request(self, batch: Sequence[bytes], model, inference_args=None):
        from client.inputs import Item

        rows = model.score_batch([Item(uri=str(i), data=image) for i, image in enumerate(batch)])
        return [PredictionResult(image, row) for image, row in zip(batch, rows)]

    def get_num_bytes(self, batch: Sequence[bytes]) -> int:
        return sum(len(x) for x in batch)


class ToRow(beam.DoFn):
    """(uri, PredictionResult) -> scored row, or {"uri", "error"} on the 'errors' output."""

    def __init__(self):
        self.scored = Metrics.counter(NAMESPACE, "images_scored")
        self.failed = Metrics.counter(NAMESPACE, "images_failed")

    def process(self, element):
        uri, result = element
        row = {k: v for k, v in result.inference.items() if k not in ("uri", "label")}
        if "error" in row:
            self.failed.inc()
            return [beam.pvalue.TaggedOutput("errors", {"uri": uri, "error": row["error"]})]
        self.scored.inc()
        return [{"uri": uri, **row}]


class TooLarge(beam.DoFn):
    """A file that alone exceeds the message limit becomes an error row, never a request (sent
    as bytes: with --preprocess client, its pixels are the request, whatever the file's size)."""

    def __init__(self, max_bytes: int | None):
        self.max_bytes = max_bytes

    def process(self, element):
        uri, data = element
        if self.max_bytes is None or fits_alone(len(data), self.max_bytes):
            return [element]
        Metrics.counter(NAMESPACE, "images_failed").inc()
        return [
            beam.pvalue.TaggedOutput(
                "errors",
                {
                    "uri": uri,
                    "error": f"file is {len(data)} bytes: larger than the request limit of "
                    f"{self.max_bytes} bytes (--max-message-mb)",
                },
            )
        ]


def build_pipeline(p: beam.Pipeline, source: str, output: str, config: ScoreConfig):
    images = read_images(p, source)
    limit = config.max_message_bytes if config.preprocess == "server" else None
    sized = images.ok | "FitsInARequest" >> beam.ParDo(TooLarge(limit)).with_outputs(
        "errors", main="ok"
    )
    scored, dead_letters = (
        sized.ok
        | "Score"
        >> RunInference(KeyedModelHandler(TFServingModelHandler(config))).with_exception_handling()
    )
    rows = scored | "Rows" >> beam.ParDo(ToRow()).with_outputs("errors", main="ok")
    failed_batches = failed_batch_rows(dead_letters.failed_inferences, "scoring")
    errors = (images.errors, sized.errors, rows.errors, failed_batches) | beam.Flatten()
    write_scored(rows.ok, errors, output)
    return rows.ok, errors


def parse_args(argv: Sequence[str] | None) -> tuple[str, str, ScoreConfig, list[str]]:
    """--input and --output, the client's flags (xfer-score's), both from beam_jobs/flags.py;
    everything else goes to Beam."""
    flags, beam_args = parse_score_flags(argv, __doc__)
    values = dataclasses.asdict(flags)
    source, output = values.pop("input"), values.pop("output")
    config = ScoreConfig(inputs=[source], **values)
    if not config.target or not config.model_name:
        print("xfer-beam-score: error: --target and --model_name are required", file=sys.stderr)
        raise SystemExit(2)
    return source, output, config, beam_args


def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None):
    source, output, config, pipeline_args = parse_args(argv)
    if test_pipeline is not None:
        return build_pipeline(test_pipeline, source, output, config)
    return run_pipeline(
        PipelineOptions(pipeline_args), lambda p: build_pipeline(p, source, output, config)
    )


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    run(argv)
    return 0


if __name__ == "__main__":
    # `python -m beam_jobs.score` runs this file as `__main__`, and what it defines (DoFns,
    # model handlers, lambdas, any element type) would reach Beam's workers as `__main__.<name>`:
    # pickled by value at best, and not at all where Beam falls back to the standard pickle
    # (an element type: "Can't pickle <class '__main__.ImageKey'>"). So the job runs from the
    # importable module, as the console script runs it; workers import `beam_jobs.score`.
    from beam_jobs.score import main as job_main

    sys.exit(job_main())
