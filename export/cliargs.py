"""Thin CLIs from typed configs: a dataclass's fields are the flags, its defaults the defaults.

Both spellings work for every flag (`--model-base-path` and `--model_base_path`): TF Serving and
Beam users type underscores, everybody else dashes.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing


def _base_type(hint):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint


def add_config_arguments(parser: argparse.ArgumentParser, cls, *, required=(), exclude=()) -> None:
    """`exclude`: fields a tool sets itself (e.g. xfer-compare's per-backbone run directories)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False or f.name in exclude:
            continue
        kind = _base_type(hints[f.name])
        dashed = "--" + f.name.replace("_", "-")
        flags = [dashed] if "_" not in f.name else [dashed, "--" + f.name]
        help_text = f.metadata.get("help", "")
        has_default = f.default is not dataclasses.MISSING
        if kind is bool:
            parser.add_argument(
                *flags,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=f.default if has_default else False,
                help=help_text,
            )
            continue
        kwargs = {"dest": f.name, "type": kind, "help": help_text}
        if f.name in required or not has_default:
            kwargs["required"] = True
        else:
            kwargs["default"] = f.default
            kwargs["help"] = f"{help_text} (default: {f.default})".strip()
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(*flags, **kwargs)


def config_from_args(cls, args: argparse.Namespace):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def opt(default, help: str, **metadata):  # noqa: A002 - mirrors argparse
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def setup_logging(verbose: bool = False) -> None:
    import logging
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
