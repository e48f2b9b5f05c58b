"""client/'s command lines, by tyro: a dataclass's fields are the flags, its defaults the defaults,
each field's `metadata["help"]` its help text; both spellings of every flag work
(`--model-name`, `--model_name`). The same few lines as export/cliargs.py: the client is
installed without export/.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
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


# Lines TensorFlow 2.21 writes straight to file descriptor 2 while it loads, before its logging
# is set up (TF_CPP_MIN_LOG_LEVEL cannot hide them). The same list as export/cliargs.py's: client/
# is installed without export/, so it keeps its own copy.
_STARTUP_NOISE = re.compile(
    r"absl::InitializeLog\(\) is called|\] oneDNN custom operations are on|cudart_stub\.cc|"
    r"failed call to cuInit|cpu_feature_guard\.cc|^To enable the following instructions"
)


def import_tensorflow_quietly() -> None:
    """Unless the user set TF_CPP_MIN_LOG_LEVEL: TensorFlow (which tensorflow-serving-api's protos
    load) imported now with its C++ logs from ERROR up and its start-up notices dropped; anything
    else it writes still reaches stderr."""
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ or "tensorflow" in sys.modules:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401 - the heavy dependency, after the arguments are parsed
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
            kept = [line for line in text.splitlines(True) if not _STARTUP_NOISE.search(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
