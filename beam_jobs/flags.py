"""The Beam jobs' own flags, without Beam or TensorFlow: `--help` and bad flags are answered from
here (beam_jobs/cli.py, the console scripts), and each job's `parse_args` reads the same
dataclasses. Flags that are not ours go on to Beam's PipelineOptions (`--runner`, `--project`,
...). Beam spells flags with underscores, so `--help` does; the dashed spelling works too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import tyro

from client.config import ScoreConfig
from export.cliargs import REQUIRED, flags_of, opt, parse
from export.model.resize_mode import TRANSFER_DEFAULT
from export.training.config import TrainConfig

EXIT_CODES = {
    0: "the job ran (inputs that could not be used are rows of errors-*.jsonl)",
    1: "the pipeline failed (the traceback says why)",
    2: "usage or configuration error",
}
PIPELINE_FLAGS = "Other flags are Beam's pipeline options (`--runner DataflowRunner`, ...)."


@dataclass(frozen=True, kw_only=True)
class BottleneckOptions:
    input: str = opt(REQUIRED, "class-folder root, or a CSV/text list of uri,label[,split]")
    output: str = opt(REQUIRED, "output directory (prefix)")
    num_shards: int = opt(0, "feature shards; 0: let the runner decide")
    min_batch_size: int = opt(8, "RunInference's smallest batch")
    max_batch_size: int = opt(64, "RunInference's largest batch")
    augment_copies: int = opt(
        0,
        "write K augmented feature copies of each training image (validation and test images "
        "are never augmented); the transforms are xfer-train's --augment-* flags",
    )


# Its own flags, then the backbone, split and augmentation flags of xfer-train.
BottleneckFlags = flags_of(
    "BottleneckFlags",
    BottleneckOptions,
    TrainConfig,
    only=(
        "backbone",
        "weights",
        "image_size",
        "feature_layer",
        "alpha",
        "resize",
        "crop_padding",
        "crop_interpolation",
        "validation_percent",
        "test_percent",
        "max_pixels",
        "augment_rotation",
        "augment_shift",
        "augment_shear",
        "augment_zoom",
        "augment_flip",
    ),
    replace={
        "resize": opt(
            TRANSFER_DEFAULT,
            "how an image becomes the input square: squash (the whole image, aspect ratio not "
            "kept) or center_crop (aspect ratio kept, the central image_size/(image_size + "
            "--crop_padding) of the shorter side); recorded in metadata.json, and xfer-train "
            "takes it",
        )
    },
)


@dataclass(frozen=True, kw_only=True)
class PredictFlags:
    input: str = opt(REQUIRED, "a directory (recursive), a glob, or a CSV/text list of URIs")
    model_dir: str = opt(
        REQUIRED, "model base path (highest version unless --version) or a version"
    )
    output: str = opt(REQUIRED, "output directory (prefix)")
    version: int | None = opt(None, "this version of the model base path")
    top_k: int = opt(5, "labels and scores per image")
    min_batch_size: int = opt(8, "RunInference's smallest batch")
    max_batch_size: int = opt(64, "RunInference's largest batch")


@dataclass(frozen=True, kw_only=True)
class ScoreOptions:
    input: str = opt(REQUIRED, "a directory (recursive), a glob, or a CSV/text list of URIs")
    output: str = opt(REQUIRED, "output directory (prefix)")


# Its own flags, then xfer-score's (the client's requests, retries and TLS) but its inputs and
# output file.
ScoreFlags = flags_of("ScoreFlags", ScoreOptions, ScoreConfig, exclude=("inputs", "output"))


def _parse(flags_type, argv, prog: str, description: str, **kw):
    return parse(
        flags_type,
        argv,
        prog=prog,
        description=f"{description.strip()}\n\n{PIPELINE_FLAGS}",
        exit_codes=EXIT_CODES,
        return_unknown_args=True,
        use_underscores=True,
        **kw,
    )


def parse_bottleneck_flags(argv: Sequence[str] | None, description: str = ""):
    """(BottleneckFlags, the pipeline's flags)."""
    return _parse(BottleneckFlags, argv, "xfer-bottlenecks", description)


def parse_predict_flags(argv: Sequence[str] | None, description: str = ""):
    """(PredictFlags, the pipeline's flags)."""
    return _parse(PredictFlags, argv, "xfer-beam-predict", description)


def parse_score_flags(argv: Sequence[str] | None, description: str = ""):
    """(ScoreFlags, the pipeline's flags)."""
    return _parse(
        ScoreFlags, argv, "xfer-beam-score", description, config=(tyro.conf.FlagCreatePairsOff,)
    )
