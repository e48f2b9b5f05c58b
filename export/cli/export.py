"""`xfer-export`: images -> trained head -> gated SavedModel published as <base>/<N>/.

Flags: TrainConfig's (as xfer-train) and the publishing ones. The published version is
summarised as one JSON object on stdout. A candidate worse than the version published now (the
champion, on the same test images) is refused unless --force.
"""

from __future__ import annotations

import json
import logging
import sys

from export.cliargs import parse, setup_logging
from export.publishing.config import ExportConfig

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2
EXIT_CODES = {
    EXIT_OK: "published; a JSON summary is printed on stdout",
    EXIT_REFUSED: "nothing published: the gate refused the model (test accuracy below "
    "--min-accuracy, or worse than the published champion beyond --max-regression or "
    "--max-class-regression, included; --force overrides the champion comparison)",
    EXIT_USAGE: "usage or configuration error (bad flags, dataset, backbone; --version exists)",
}
log = logging.getLogger("xfer-export")


def main(argv: list[str] | None = None) -> int:
    config = parse(
        ExportConfig, argv, prog="xfer-export", description=__doc__, exit_codes=EXIT_CODES
    )
    setup_logging()
    if config.version is not None and (config.base_path / str(config.version)).exists():
        log.error(
            "%s already exists; versions are never overwritten",
            config.base_path / str(config.version),
        )
        return EXIT_USAGE
    from export.data.dataset import DatasetError
    from export.publishing.exporter import export_model
    from export.publishing.gate import GateError
    from export.publishing.publish import VersionExistsError

    try:
        result = export_model(config)
    except GateError as exc:
        log.error("gate refused the model, nothing was published: %s", exc)
        return EXIT_REFUSED
    except (DatasetError, VersionExistsError, ValueError, RuntimeError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    summary = {
        "published": str(result.path),
        "version": result.version,
        "signatures": result.gate.signatures,
        "warmup_records": result.gate.warmup_records,
        "parity_max_abs_diff": result.gate.max_abs_diff,
        "run_dir": str(result.train.run_dir),
        "accuracy": {s: m["accuracy"] for s, m in result.train.metrics["splits"].items()},
        "champion": result.champion,
        "ood": result.ood,
    }
    print(json.dumps(summary, indent=2))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
