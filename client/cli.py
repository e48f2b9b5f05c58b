"""`xfer-score`: flags only. The flags are `ScoreConfig`'s fields; the work is in scorer.py.

Rows go to --output (JSONL or CSV, docs/architecture.md); the progress bar and the summary go to
stderr.

examples:
    xfer-score photos/ --target localhost:8500 --model-name flowers --output scored.jsonl
    xfer-score 'gs://bucket/imgs/*.jpg' list.csv --target dns:///serving.prod:8500 \\
        --model-name flowers --version-label stable --output scored.csv --concurrency 16
    xfer-score photos/ --target localhost:8500 --model-name flowers --output s.jsonl --resume
    xfer-score photos/ --target localhost:8500 --model-name flowers --output s.jsonl \\
        --preprocess client      # decode and resize here, send pixels to serving_pixels
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import tyro

from client.cliargs import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, import_tensorflow_quietly, parse
from client.config import ScoreConfig

log = logging.getLogger(__name__)
EXIT_CODES = {
    EXIT_OK: "every input scored",
    EXIT_USAGE: "usage error or an INPUT that names nothing (before anything is scored); or the "
    "run stopped: the server refuses it (unknown model, version or signature; credentials), the "
    "TLS handshake fails, no server answers within --retry-budget-s (--resume goes on), or "
    "--preprocess client is not possible with the model (no serving_pixels, another contract)",
    EXIT_SOME_FAILED: "some inputs failed (their rows say why)",
}


def setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = parse(
        ScoreConfig,
        argv,
        prog="xfer-score",
        description=__doc__,
        exit_codes=EXIT_CODES,
        config=(tyro.conf.FlagCreatePairsOff,),
    )
    try:
        config.validate()
        if not config.output:
            raise ValueError("--output FILE is required (got '')")
    except ValueError as exc:
        print(f"xfer-score: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(config.quiet)
    import_tensorflow_quietly()
    from client.inputs import InputNotFound
    from client.scorer import ScoringAborted, Unreachable, run

    try:
        summary = run(config)
    except InputNotFound as exc:
        print(f"xfer-score: error: {exc}; nothing was scored", file=sys.stderr)
        return EXIT_USAGE
    except ScoringAborted as exc:
        print(f"xfer-score: error: {exc.explain()}", file=sys.stderr)
        if isinstance(exc, Unreachable) and exc.summary is not None:
            print(
                f"xfer-score: {exc.summary.total} rows written before stopping; the images not "
                "yet answered have none: run the same command with --resume once a server answers",
                file=sys.stderr,
            )
        return EXIT_USAGE
    if not config.quiet:
        print(summary.format(), file=sys.stderr)
    if config.evaluate:
        from client.evaluate import EvaluateConfig, evaluate

        out_dir = config.out_dir or f"{config.output}.eval"
        report = evaluate(EvaluateConfig(predictions=config.output, out_dir=out_dir))
        if not config.quiet:
            print(report.format(), file=sys.stderr)
    return EXIT_SOME_FAILED if summary.failed else EXIT_OK
