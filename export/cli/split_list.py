"""`xfer-split-list DATA --split test`: the files of one split as `uri,label` CSV lines, the
input format of xfer-score and xfer-bottlenecks (same stable split as every stage)."""

from __future__ import annotations

import csv
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from export.cliargs import REQUIRED, opt, parse
from export.data.dataset import SPLITS, TEST, DatasetError, SplitConfig, scan

Split = Literal["train", "validation", "test"]
assert typing.get_args(Split) == SPLITS, "Split lists dataset.SPLITS"


@dataclass(frozen=True, kw_only=True)
class SplitListArgs:
    data: tyro.conf.Positional[str] = opt(REQUIRED, "class-folder root")
    split: Split = opt(TEST, "which split's files")
    validation_percent: float = opt(10.0, "hash split: percent of images for validation")
    test_percent: float = opt(10.0, "hash split: percent of images for test")
    output: str | None = opt(None, "CSV file (default: stdout)")


def main(argv: list[str] | None = None) -> int:
    args = parse(SplitListArgs, argv, prog="xfer-split-list", description=__doc__, exit_codes={})
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
