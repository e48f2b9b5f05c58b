"""`xfer-split-list DATA --split test`: the files of one split as `uri,label` CSV lines, the
input format of xfer-score and xfer-bottlenecks (same stable split as every stage)."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from export.data.dataset import SPLITS, TEST, DatasetError, SplitConfig, scan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xfer-split-list", description=__doc__)
    parser.add_argument("data", help="class-folder root")
    parser.add_argument("--split", choices=SPLITS, default=TEST)
    parser.add_argument("--validation-percent", "--validation_percent", type=float, default=10.0)
    parser.add_argument("--test-percent", "--test_percent", type=float, default=10.0)
    parser.add_argument("--output", help="CSV file (default: stdout)")
    args = parser.parse_args(argv)
    try:
        dataset = scan(args.data, SplitConfig(args.validation_percent, args.test_percent))
    except (DatasetError, ValueError) as exc:
        print(f"xfer-split-list: {exc}", file=sys.stderr)
        return 2
    rows = [
        (str(Path(e.path).resolve()), e.label) for e in dataset.examples if e.split == args.split
    ]
    out = open(args.output, "w", newline="") if args.output else sys.stdout  # noqa: SIM115
    try:
        writer = csv.writer(out)
        writer.writerow(["uri", "label"])
        writer.writerows(rows)
    finally:
        if args.output:
            out.close()
    return 0
