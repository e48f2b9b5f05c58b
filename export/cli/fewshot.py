"""`xfer-fewshot`: accuracy with N training images per class, the Caltech-101/256 protocol.

    python -m export.fewshot --data images/ --backbone mobilenet_v2 --shots 1,5,10 \\
        --repeats 5 --seed 0 --output runs/fewshot

Features are computed once for every image (or read from `--bottlenecks PREFIX`, the output of
xfer-bottlenecks). Then, for each N and each repeat r (seed S+r): N random images per class
train a fresh head (`export.model.heads.build_head`, the trainer's `fit_head`, a fixed number of
epochs) and every other image is a test image. The hash split of xfer-train is ignored: the
protocol draws its own training images, and a fixed validation split would leave nothing to
draw from in small classes.

Exit codes: 0 every N ran; 1 some N were skipped (a class has <= N images; outputs still
written); 2 bad arguments or dataset, or no N could run.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import numpy as np

from export import fsutil
from export.cliargs import add_config_arguments, config_from_args, setup_logging
from export.experiments.fewshot import (
    DEFAULT_EPOCHS,
    FLAGS,
    features_from_bottlenecks,
    features_from_images,
    fewshot_png,
    markdown_table,
    results_csv,
    run_protocol,
)
from export.model import heads

EXIT_OK, EXIT_SOME_SKIPPED, EXIT_USAGE = 0, 1, 2
log = logging.getLogger("xfer-fewshot")


def _positive_ints(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers: {text!r}") from None
    if not values or values[0] <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers: {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    from export.training.config import TrainConfig

    parser = argparse.ArgumentParser(
        prog="xfer-fewshot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="class-folder root: features computed here, once")
    source.add_argument(
        "--bottlenecks",
        help="xfer-bottlenecks output prefix: its features and backbone (backbone flags ignored)",
    )
    parser.add_argument(
        "--shots", type=_positive_ints, default=[1, 5, 10], help="N values (default: 1,5,10)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="draws per N (default: 5)")
    parser.add_argument("--seed", type=int, default=0, help="repeat r uses seed S+r (default: 0)")
    parser.add_argument("--output", required=True, help="directory for fewshot.*")
    exclude = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in FLAGS]
    add_config_arguments(parser, TrainConfig, exclude=exclude)
    for action in parser._actions:
        if action.dest == "epochs":  # no validation split, so no early stopping: a fixed count
            action.default = DEFAULT_EPOCHS
            action.help = f"head training epochs per draw, fixed (default: {DEFAULT_EPOCHS})"
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    from export.data.dataset import DatasetError
    from export.training.config import TrainConfig
    from export.training.runs import library_versions

    args = build_parser().parse_args(argv)
    if args.repeats < 1:
        log.error("--repeats must be at least 1; received %d", args.repeats)
        return EXIT_USAGE
    config = dataclasses.replace(config_from_args(TrainConfig, args), data=args.data)
    output = Path(args.output)
    try:
        data = (
            features_from_bottlenecks(args.bottlenecks)
            if args.bottlenecks
            else features_from_images(config)
        )
    except (DatasetError, ValueError, RuntimeError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    log.info(
        "%d images in %d classes, %d-dimensional features",
        len(data.items),
        len(data.labels),
        data.features.shape[1],
    )
    outcome = run_protocol(data, config, args.shots, args.repeats, args.seed)
    results, skipped = outcome["results"], outcome["skipped_shots"]
    if not results:
        log.error("no N could run: every class needs more than N images")
        return EXIT_USAGE
    report = {
        "source": {"bottlenecks": args.bottlenecks} if args.bottlenecks else {"data": args.data},
        "backbone": data.backbone,
        "labels": data.labels,
        "per_class_count": dict(
            zip(data.labels, np.bincount(data.label_ids, minlength=len(data.labels)).tolist())
        ),
        "images": data.items,  # train_indices index this list
        "skipped_images": data.skipped,
        "protocol": {
            "shots": args.shots,
            "repeats": args.repeats,
            "seed": args.seed,
            "split": "hash split ignored: N random training images per class (seed S+r), "
            "every other image is a test image",
            "head": config.head,
            "epochs": config.epochs,
            "optimizer": config.optimizer,
            "learning_rate": config.learning_rate,
            "batch_size": config.batch_size,
            "standardisation": f"training images' mean and variance, variance floored at "
            f"{heads.VARIANCE_FLOOR} x its mean over features",
            "std": "sample standard deviation over repeats (ddof=1)",
        },
        "results": results,
        "skipped_shots": skipped,
        "versions": library_versions(),
    }
    table = markdown_table(results, skipped)
    name = data.backbone.get("name", "?")
    fsutil.atomic_write_json(output / "fewshot.json", report)
    fsutil.atomic_write_text(output / "fewshot.csv", results_csv(results))
    fsutil.atomic_write_text(output / "fewshot.md", table)
    title = f"{name}: {config.head} head, {args.repeats} repeats per N"
    fsutil.atomic_write_bytes(output / "fewshot.png", fewshot_png(results, title))
    print(table, end="")
    return EXIT_SOME_SKIPPED if skipped else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
