"""`xfer-fewshot`: accuracy with N training images per class, the Caltech-101/256 protocol.

    python -m export.fewshot --data images/ --backbone mobilenet_v2 --shots 1,5,10 \\
        --repeats 5 --seed 0 --output runs/fewshot

Features are computed once for every image (or read from `--bottlenecks PREFIX`, the output of
xfer-bottlenecks). Then, for each N and each repeat r (seed S+r): N random images per class
train a fresh head (`export.model.heads.build_head`, the trainer's `fit_head`, a fixed number of
epochs) and every other image is a test image. The hash split of xfer-train is ignored: the
protocol draws its own training images, and a fixed validation split would leave nothing to
draw from in small classes.
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
from export.training.config import TrainConfig

EXIT_OK, EXIT_SOME_SKIPPED, EXIT_USAGE = 0, 1, 2
EXIT_CODES = {
    EXIT_OK: "every N ran",
    EXIT_SOME_SKIPPED: "some N were skipped (a class has <= N images; outputs still written)",
    EXIT_USAGE: "usage error (bad flags or dataset), or no N could run",
}
log = logging.getLogger("xfer-fewshot")

# TrainConfig fields that make sense here: the backbone (for --data) and the head's training.
FLAGS = (
    "backbone",
    "weights",
    "image_size",
    "feature_layer",
    "alpha",
    "resize",
    "crop_padding",
    "crop_interpolation",
    "max_pixels",
    "batch_size",
    "head",
    "hidden_units",
    "dropout",
    "l2",
    "optimizer",
    "learning_rate",
    "epochs",
    "progress",
)
DEFAULT_EPOCHS = 50  # no validation split, so no early stopping: a fixed count


def _positive_ints(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise ValueError(f"expected comma-separated integers: {text!r}") from None
    if not values or values[0] <= 0:
        raise ValueError(f"expected positive integers: {text!r}")
    return values


SOURCE = tyro.conf.create_mutex_group(required=True, title="source (one of)")


@dataclass(frozen=True, kw_only=True)
class FewshotOptions:
    data: Annotated[str | None, SOURCE] = opt(
        None, "class-folder root: features computed here, once"
    )
    bottlenecks: Annotated[str | None, SOURCE] = opt(
        None, "xfer-bottlenecks output prefix: its features and backbone (backbone flags ignored)"
    )
    shots: Annotated[list[int], comma_separated(_positive_ints)] = dataclasses.field(
        default_factory=lambda: [1, 5, 10], metadata={"help": "N values"}
    )
    repeats: int = opt(5, "draws per N")
    seed: int = opt(0, "repeat r uses seed S+r")
    output: str = opt(REQUIRED, "directory for fewshot.*")


FewshotArgs = flags_of(
    "FewshotArgs",
    FewshotOptions,
    TrainConfig,
    only=FLAGS,
    replace={"epochs": opt(DEFAULT_EPOCHS, "head training epochs per draw, fixed")},
)


def main(argv: list[str] | None = None) -> int:
    args = parse(FewshotArgs, argv, prog="xfer-fewshot", description=__doc__, exit_codes=EXIT_CODES)
    setup_logging()
    import numpy as np

    from export import fsutil
    from export.data.dataset import DatasetError
    from export.experiments.fewshot import (
        features_from_bottlenecks,
        features_from_images,
        fewshot_png,
        markdown_table,
        results_csv,
        run_protocol,
    )
    from export.model import heads
    from export.training.runs import library_versions

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
