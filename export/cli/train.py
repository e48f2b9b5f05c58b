"""`xfer-train`: train a classifier head on a class-folder dataset (flags = TrainConfig fields)."""

from __future__ import annotations

import argparse
import logging
import sys

from export.cliargs import add_config_arguments, config_from_args, setup_logging

log = logging.getLogger("xfer-train")


def build_parser() -> argparse.ArgumentParser:
    from export.training.config import TrainConfig

    parser = argparse.ArgumentParser(prog="xfer-train", description=__doc__)
    add_config_arguments(parser, TrainConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    from export.data.dataset import DatasetError
    from export.experiments.report import train_and_report
    from export.training.config import QualityBarError, TrainConfig

    args = build_parser().parse_args(argv)
    config = config_from_args(TrainConfig, args)
    try:
        result = train_and_report(config)
    except QualityBarError as exc:
        log.error("%s", exc)
        return 1
    except (DatasetError, ValueError, RuntimeError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    print(result.run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
