"""`xfer-train`: train a classifier head on a class-folder dataset (flags = TrainConfig fields)."""

from __future__ import annotations

import logging
import sys

from export.cliargs import parse, setup_logging
from export.training.config import QualityBarError, TrainConfig

EXIT_OK, EXIT_BELOW_MIN_ACCURACY, EXIT_USAGE = 0, 1, 2
EXIT_CODES = {
    EXIT_OK: "trained; the run directory is printed on stdout",
    EXIT_BELOW_MIN_ACCURACY: "test accuracy below --min-accuracy, or no test images to judge it",
    EXIT_USAGE: "usage or configuration error (bad flags, dataset, backbone, weights)",
}
log = logging.getLogger("xfer-train")


def main(argv: list[str] | None = None) -> int:
    config = parse(TrainConfig, argv, prog="xfer-train", description=__doc__, exit_codes=EXIT_CODES)
    setup_logging()
    from export.data.dataset import DatasetError
    from export.experiments.report import train_and_report

    try:
        result = train_and_report(config)
    except QualityBarError as exc:
        log.error("%s", exc)
        return EXIT_BELOW_MIN_ACCURACY
    except (DatasetError, ValueError, RuntimeError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    print(result.run_dir)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
