"""`xfer-report --run-dir RUN`: (re)build `RUN/report.html` for an existing training run.

The model comes from the run dir; the features are recomputed from the run's images (or read
from its bottlenecks), at most --max-per-split images per split.

Exit codes: 0 written; 2 not a usable run dir (the message says why).
"""

from __future__ import annotations

import argparse
import logging
import sys

from export.cliargs import setup_logging

log = logging.getLogger("xfer-report")


def main(argv: list[str] | None = None) -> int:
    from export.experiments.report import MAX_PER_SPLIT

    parser = argparse.ArgumentParser(
        prog="xfer-report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run-dir", "--run_dir", required=True, help="an xfer-train run dir")
    parser.add_argument(
        "--max-per-split",
        "--max_per_split",
        type=int,
        default=MAX_PER_SPLIT,
        help=f"images per split to compute features of (default: {MAX_PER_SPLIT})",
    )
    args = parser.parse_args(argv)
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
