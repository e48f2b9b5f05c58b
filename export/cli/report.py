"""`xfer-report --run-dir RUN`: (re)build `RUN/report.html` for an existing training run.

The model comes from the run dir; the features are recomputed from the run's images (or read
from its bottlenecks), at most --max-per-split images per split. The report's path is printed
on stdout.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from export.cliargs import REQUIRED, opt, parse, setup_logging
from export.experiments.defaults import MAX_PER_SPLIT

EXIT_CODES = {0: "written", 2: "usage error, or not a usable run dir (the message says why)"}
log = logging.getLogger("xfer-report")


@dataclass(frozen=True, kw_only=True)
class ReportArgs:
    run_dir: str = opt(REQUIRED, "an xfer-train run dir")
    max_per_split: int = opt(MAX_PER_SPLIT, "images per split to compute features of")


def main(argv: list[str] | None = None) -> int:
    args = parse(ReportArgs, argv, prog="xfer-report", description=__doc__, exit_codes=EXIT_CODES)
    setup_logging()
    from export.data.dataset import DatasetError
    from export.experiments.gradcam import ExplainError
    from export.experiments.report import rebuild_report

    try:
        path = rebuild_report(args.run_dir, args.max_per_split)
    except (ExplainError, DatasetError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
