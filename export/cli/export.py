"""`xfer-export`: images -> trained head -> gated SavedModel published as <base>/<N>/.

Exit codes: 0 published; 1 the gate refused the model (nothing published); 2 bad arguments,
dataset or version.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from export.cliargs import add_config_arguments, config_from_args, setup_logging

log = logging.getLogger("xfer-export")


def build_parser() -> argparse.ArgumentParser:
    from export.publishing.exporter import ExportConfig

    parser = argparse.ArgumentParser(
        prog="xfer-export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, ExportConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    from export.data.dataset import DatasetError
    from export.publishing.exporter import ExportConfig, export_model
    from export.publishing.gate import GateError
    from export.publishing.publish import VersionExistsError

    args = build_parser().parse_args(argv)
    config = config_from_args(ExportConfig, args)
    if config.version is not None and (config.base_path / str(config.version)).exists():
        log.error(
            "%s already exists; versions are never overwritten",
            config.base_path / str(config.version),
        )
        return 2
    try:
        result = export_model(config)
    except GateError as exc:
        log.error("gate refused the model, nothing was published: %s", exc)
        return 1
    except (DatasetError, VersionExistsError, ValueError, RuntimeError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    summary = {
        "published": str(result.path),
        "version": result.version,
        "signatures": result.gate.signatures,
        "warmup_records": result.gate.warmup_records,
        "parity_max_abs_diff": result.gate.max_abs_diff,
        "run_dir": str(result.train.run_dir),
        "accuracy": {s: m["accuracy"] for s, m in result.train.metrics["splits"].items()},
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
