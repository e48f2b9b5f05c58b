"""client/'s command lines, by tyro: a dataclass's fields are the flags, its defaults the defaults,
each field's `metadata["help"]` its help text; both spellings of every flag work
(`--model-name`, `--model_name`). The same few lines as export/cliargs.py: the client is
installed without export/.
"""

from __future__ import annotations

import re
import sys
import typing

import tyro

EXIT_OK, EXIT_USAGE, EXIT_SOME_FAILED = 0, 2, 3
EXIT_CODES = {EXIT_OK: "done", EXIT_USAGE: "usage or configuration error"}


def parse(args_type, argv, *, prog: str, description: str, exit_codes: dict[int, str], **kw):
    """`tyro.cli`; `--help` ends with the exit codes (0 and 2 always, plus `exit_codes`)."""
    config = (tyro.conf.PositionalMetavarFromFieldName, *kw.pop("config", ()))
    # tyro joins a line to the previous one only when it starts with a letter: join them all,
    # keeping blank lines and indented (example) lines.
    description = re.sub(r"(?<=\S)\n(?=\S)", " ", description.strip())
    try:
        return tyro.cli(
            args_type, args=argv, prog=prog, description=description, config=config, **kw
        )
    except SystemExit as exc:
        if exc.code == 0:  # --help was printed
            codes = sorted({**EXIT_CODES, **exit_codes}.items())
            print("exit codes:\n" + "".join(f"  {code}  {text}\n" for code, text in codes), end="")
        raise


def usage_error(prog: str, message: str) -> typing.NoReturn:
    """A value the types allow but the command does not: exit 2, as tyro does for bad flags."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)
