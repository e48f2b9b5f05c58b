"""xfer-compare's `--backbones` entries: `NAME` or `NAME@key=value,...`, parsed and checked before
anything is trained (without TensorFlow); `compare.entry_config` turns each into its TrainConfig."""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field

from export.training.config import TrainConfig

# TrainConfig fields that xfer-compare sets itself: no global flag for them.
NOT_FLAGS = ("data", "bottlenecks", "run_dir", "backbone", "min_accuracy")
# Per-entry options may change anything but the data, the split and which images are refused:
# the comparison is only fair when every entry sees the same images in the same split.
NOT_PER_ENTRY = (*NOT_FLAGS, "validation_percent", "test_percent", "max_pixels", "progress")

BASELINE = "baseline"  # the from-scratch CNN's row name and kind


class EntrySyntaxError(ValueError):
    """A --backbones value that cannot be parsed; reported before anything is trained."""


@dataclass
class Entry:
    name: str  # as typed, e.g. "mobilenet_v2@alpha=0.35,image_size=96"
    backbone: str
    options: dict = field(default_factory=dict)


def _coerce(key: str, text: str):

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    if key not in fields or key in NOT_PER_ENTRY:
        allowed = sorted(set(fields) - set(NOT_PER_ENTRY))
        raise EntrySyntaxError(
            f"unknown per-backbone option {key!r}; options: {', '.join(allowed)}"
        )
    hint = typing.get_type_hints(TrainConfig)[key]
    optional = type(None) in typing.get_args(hint)
    kind = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
    if typing.get_origin(kind) is typing.Literal:
        if text not in typing.get_args(kind):
            choices = ", ".join(typing.get_args(kind))
            raise EntrySyntaxError(f"option {key}={text!r}: choose from {choices}")
        return text
    try:
        if optional and kind is not str and text.lower() in ("none", "null"):
            return None
        if kind is bool:
            if text.lower() not in ("true", "false", "yes", "no", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "yes", "1")
        value = kind(text)
    except ValueError:
        raise EntrySyntaxError(f"option {key}={text!r}: expected {kind.__name__}") from None
    return value


def parse_entries(values: list[str]) -> list[Entry]:
    """`a,b@k=v,k2=v2,c`: entries are separated by commas; `NAME@k=v` starts an entry's options
    and following `k=v` items (no `@`) add to it, so `image_size=96` belongs to `b` above."""
    entries: list[Entry] = []
    open_options = False  # whether the last entry was written NAME@...
    for value in values:
        for token in (t.strip() for t in value.split(",")):
            if not token:
                continue
            if "@" in token:
                backbone, _, option = token.partition("@")
                if not backbone.strip() or not option.strip():
                    raise EntrySyntaxError(f"{token!r}: write NAME@key=value")
                entries.append(Entry(token, backbone.strip()))
                open_options = True
                items = [option]
            elif "=" in token:
                if not open_options:
                    raise EntrySyntaxError(
                        f"{token!r} follows no NAME@key=value entry; write NAME@{token}"
                    )
                entries[-1].name += f",{token}"
                items = [token]
            else:
                entries.append(Entry(token, token))
                open_options = False
                items = []
            for item in items:
                key, eq, text = item.partition("=")
                if not eq or not key.strip():
                    raise EntrySyntaxError(f"{item!r}: expected key=value")
                key = key.strip().replace("-", "_")
                entries[-1].options[key] = _coerce(key, text.strip())
    if not entries:
        raise EntrySyntaxError("--backbones names no backbone")
    return entries


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")[:80] or "entry"
