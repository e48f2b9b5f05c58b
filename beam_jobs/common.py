"""What the Beam jobs share: counters' namespace, running and reporting, dead letters, JSONL out."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

log = logging.getLogger(__name__)
NAMESPACE = "xfer"


def setup_logging() -> None:
    # force: importing Beam already configured the root logger, which would swallow ours.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True
    )
    logging.getLogger("apache_beam").setLevel(logging.WARNING)  # our counters say what matters


def report_metrics(result) -> dict[str, int]:
    """Our counters at the end of a run: logged, and returned for callers and tests."""
    counters = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(NAMESPACE))
    totals: dict[str, int] = {}
    for counter in counters["counters"]:
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + (
            counter.committed if counter.committed is not None else counter.attempted
        )
    for name in sorted(totals):
        log.info("%-22s %d", name, totals[name])
    return totals


def run_pipeline(options, build: Callable[[beam.Pipeline], object]):
    """Build into a new pipeline, run it to the end, report the counters."""
    pipeline = beam.Pipeline(options=options)
    build(pipeline)
    result = pipeline.run()
    result.wait_until_finish()
    report_metrics(result)
    return result


def failed_batch_rows(failed_inferences, what: str, uri=lambda key: key):
    """RunInference's dead letters (a failed keyed batch, the exception) -> an error row each."""
    return failed_inferences | "BatchErrors" >> beam.FlatMap(
        lambda failed: [
            {"uri": uri(key), "error": f"{what} failed: {failed[1]}"} for key, _ in failed[0]
        ]
    )


def write_scored(rows, errors, output: str) -> None:
    """The scored-output schema as two JSONL shard sets: predictions-* and errors-*."""
    for label, pcoll, prefix in (
        ("Predictions", rows, "predictions"),
        ("Errors", errors, "errors"),
    ):
        _ = (
            pcoll
            | f"{label}Json" >> beam.Map(json.dumps)
            | f"Write{label}"
            >> beam.io.WriteToText(FileSystems.join(output, prefix), file_name_suffix=".jsonl")
        )
