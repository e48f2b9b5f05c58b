"""`xfer-compare`: several backbones (and a CNN trained from scratch) on the same data and split.

    python -m export.compare --data images/ --output runs/compare \\
        --backbones mobilenet_v2,mobilenet_v2@alpha=0.35,image_size=96,resnet50

Each entry is trained by `export.training.train.train` into OUTPUT/runs/NN-ENTRY/; the
baseline CNN (`export.experiments.baseline`) into OUTPUT/runs/baseline/. OUTPUT gets
comparison.json, .csv, .md (the table also printed) and .png. An entry that fails (unknown
name, weights unavailable offline, ...) gets a row with its error and the others still run.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from export.cliargs import (
    REQUIRED,
    comma_separated,
    config_from_args,
    flags_of,
    opt,
    parse,
    setup_logging,
)
from export.experiments.compare_entries import (
    BASELINE,
    NOT_FLAGS,
    EntrySyntaxError,
    parse_entries,
    slug,
)
from export.training.config import TrainConfig

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_CODES = {
    EXIT_OK: "every entry trained",
    EXIT_SOME_FAILED: "some entry failed (its row says why; the outputs are still written)",
    EXIT_USAGE: "usage error (bad flags, --backbones entries or dataset)",
}
log = logging.getLogger("xfer-compare")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"expected comma-separated integers: {text!r}") from None
    if not values or min(values) <= 0:
        raise ValueError(f"expected positive integers: {text!r}")
    return values


@dataclass(frozen=True, kw_only=True)
class CompareOptions:
    data: str = opt(REQUIRED, "class-folder root, as for xfer-train")
    backbones: tyro.conf.UseAppendAction[tuple[str, ...]] = opt(
        REQUIRED,
        "comma-separated entries NAME or NAME@key=value,key=value (any TrainConfig option "
        "but the data and split ones); repeatable",
    )
    output: str = opt(REQUIRED, "directory for the comparison")
    baseline: bool = opt(True, "also train a small CNN from scratch")
    baseline_epochs: int = opt(30, "the baseline's maximum epochs")
    baseline_filters: Annotated[tuple[int, ...], comma_separated(_int_list)] = opt(
        (32, 64, 128), "widths of its Conv-BN-ReLU-MaxPool blocks"
    )
    baseline_image_size: int | None = opt(None, "its input size (default: the first backbone's)")
    baseline_learning_rate: float = opt(1e-3, "the baseline's learning rate")
    baseline_dropout: float = opt(0.5, "the baseline's dropout rate")
    throughput_images: int = opt(256, "images timed for images/s (the same files for every entry)")


# Its own options, then TrainConfig's but those it sets per entry.
CompareArgs = flags_of("CompareArgs", CompareOptions, TrainConfig, exclude=NOT_FLAGS)


def main(argv: list[str] | None = None) -> int:
    args = parse(CompareArgs, argv, prog="xfer-compare", description=__doc__, exit_codes=EXIT_CODES)
    setup_logging()
    from export.data.dataset import DatasetError, scan
    from export.experiments.baseline import BaselineConfig
    from export.experiments.compare import (
        baseline_preprocessor,
        entry_config,
        error_row,
        release_memory,
        run_backbone,
        run_baseline,
    )
    from export.experiments.compare_outputs import write_outputs
    from export.training.augment import AugmentConfig
    from export.training.runs import library_versions
    from export.training.stopping import check_target

    output = Path(args.output)
    try:
        entries = parse_entries(args.backbones)
        base = dataclasses.replace(config_from_args(TrainConfig, args), data=args.data)
        check_target(base.stop_at_accuracy)
        augment_config = AugmentConfig.of(base)
        dataset = scan(args.data, base.split_config())
    except (EntrySyntaxError, DatasetError, ValueError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    runs = output / "runs"
    configs = [
        entry_config(base, entry, runs / f"{i:02d}-{slug(entry.name)}")
        for i, entry in enumerate(entries, start=1)
    ]
    paths = [e.path for e in dataset.examples]
    rows = []
    for entry, config in zip(entries, configs):
        log.info("=== %s", entry.name)
        try:
            rows.append(run_backbone(entry, config, paths, args.throughput_images))
        except Exception as exc:  # one entry's failure must not stop the comparison
            rows.append(error_row(entry.name, "backbone", exc, Path(config.run_dir)))
        release_memory()
    baseline_config = None
    if args.baseline:
        baseline_config = BaselineConfig(
            filters=args.baseline_filters,
            dropout=args.baseline_dropout,
            learning_rate=args.baseline_learning_rate,
            batch_size=base.batch_size,
            epochs=args.baseline_epochs,
            patience=base.patience,
            seed=base.seed,
            stop_at_accuracy=base.stop_at_accuracy,
            progress=base.progress,
        )
        log.info("=== %s", BASELINE)
        try:
            preprocessor = baseline_preprocessor(configs, args.baseline_image_size)
            rows.append(
                run_baseline(
                    dataset,
                    preprocessor,
                    baseline_config,
                    augment_config,
                    runs / BASELINE,
                    paths,
                    args.throughput_images,
                )
            )
        except Exception as exc:
            rows.append(error_row(BASELINE, BASELINE, exc, runs / BASELINE))
        release_memory()
    report = {
        "data": args.data,
        "split": dataclasses.asdict(base.split_config()),
        "train_config": dataclasses.asdict(base),
        "baseline_config": dataclasses.asdict(baseline_config) if baseline_config else None,
        "augmentation": augment_config.to_dict() if baseline_config else None,
        "throughput": {
            "images": args.throughput_images,
            "batch_size": base.batch_size,
            "measures": "forward passes of preprocessed images (traced graph, one warm-up "
            "batch); decoding and resizing excluded",
        },
        "versions": library_versions(),
    }
    print(write_outputs(output, rows, report), end="")
    failed = [r["name"] for r in rows if r["status"] != "ok"]
    if failed:
        log.error("failed: %s (see comparison.md)", ", ".join(failed))
        return EXIT_SOME_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
