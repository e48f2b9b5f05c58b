"""TF Serving's text-format config files read with its wording for errors: every problem
becomes a ConfigError naming the file and line (shared by the model, batching, monitoring and
SSL configs)."""

from __future__ import annotations

import re
from pathlib import Path

from google.protobuf import text_format


class ConfigError(ValueError):
    """A flag or config file is invalid; the message names the file and line."""


def line_of(text: str, token: str) -> int:
    """1-based line where `token` first appears (for errors found after parsing)."""
    for number, line in enumerate(text.splitlines(), 1):
        if token in line:
            return number
    return 1


def parse_text_proto(text: str, message, path: str):
    """Parse protobuf text format; errors become `path:line: ` and TF Serving's own wording
    (protobuf's TextFormat as ParseProtoTextFile logs it): `Error parsing text-format
    tensorflow.serving.ModelServerConfig: line:column: reason`."""
    try:
        return text_format.Parse(text, message)
    except text_format.ParseError as exc:
        reason = re.sub(r"^\d+:\d+ : ", "", str(exc))
        line = exc.GetLine() or 1
        where = f"{line}:{exc.GetColumn() or 1}"
        raise ConfigError(
            f"{path}:{line}: Error parsing text-format {message.DESCRIPTOR.full_name}: "
            f"{where}: {reason}"
        ) from None


def read_config_file(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
