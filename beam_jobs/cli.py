"""The Beam jobs' console scripts (xfer-bottlenecks, xfer-beam-predict, xfer-beam-score).

`--help` and bad flags are answered here, from beam_jobs/flags.py, without importing Beam or
TensorFlow; then the job module runs (it parses the same flags again, cheaply). The help text is
the job module's docstring, read from its source. `python -m beam_jobs.JOB` runs the job module,
whose `__main__` block calls `main` of `beam_jobs.JOB` imported by that name, so that the job never
runs from `__main__`, whose classes and functions Beam's workers could not import
(docs/reliability.md).
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Sequence
from pathlib import Path

from beam_jobs.flags import parse_bottleneck_flags, parse_predict_flags, parse_score_flags
from export.cliargs import setup_logging


def _docstring(module: str) -> str:
    source = Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8")
    return ast.get_docstring(ast.parse(source)) or ""


def bottlenecks(argv: Sequence[str] | None = None) -> int:
    parse_bottleneck_flags(argv, _docstring("beam_jobs.bottlenecks"))
    setup_logging()  # TensorFlow's start-up notices dropped, before the job imports it
    from beam_jobs.bottlenecks import main

    return main(argv)


def predict(argv: Sequence[str] | None = None) -> int:
    parse_predict_flags(argv, _docstring("beam_jobs.predict"))
    setup_logging()
    from beam_jobs.predict import main

    return main(argv)


def score(argv: Sequence[str] | None = None) -> int:
    parse_score_flags(argv, _docstring("beam_jobs.score"))
    setup_logging()
    from beam_jobs.score import main

    return main(argv)
