"""export/'s command lines, by tyro: a dataclass's fields are the flags, its defaults the defaults,
each field's `metadata["help"]` its help text.

tyro accepts both spellings of every flag (`--model-base-path` and `--model_base_path`): TF
Serving and Beam users type underscores, everybody else dashes. `--help` needs no TensorFlow:
the configs live in TensorFlow-free modules and each main() imports the heavy modules after
parsing. The same few lines exist in serving/config.py and client/cliargs.py (those stages
import nothing from export/); the Beam jobs use these (beam_jobs/flags.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import sys
import tempfile
import typing

import tyro

EXIT_OK, EXIT_USAGE, EXIT_SOME_FAILED = 0, 2, 3
EXIT_CODES = {EXIT_OK: "done", EXIT_USAGE: "usage or configuration error"}


REQUIRED = dataclasses.MISSING  # opt(REQUIRED, "...") is a field without a default: a required flag


def opt(default, help: str, **metadata):  # noqa: A002 - mirrors argparse
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


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


def flags_of(name: str, own, *shared, exclude=(), only=None, replace=None) -> type:
    """One dataclass with a CLI's `own` options, then the fields of the `shared` configs (e.g.
    TrainConfig) but those in `exclude` or not in `only`, keeping their types, defaults and help;
    `replace` maps a field name to a new `opt(...)`."""
    fields, seen = [], set()
    for config in (own, *shared):
        hints = typing.get_type_hints(config, include_extras=True)
        for f in dataclasses.fields(config):
            if (
                f.name in seen
                or config is not own
                and (f.name in exclude or (only is not None and f.name not in only))
            ):
                continue
            seen.add(f.name)
            new = (replace or {}).get(f.name) or dataclasses.field(
                default=f.default, default_factory=f.default_factory, metadata=f.metadata
            )
            fields.append((f.name, hints[f.name], new))
    return dataclasses.make_dataclass(name, fields, frozen=True, kw_only=True)


def comma_separated(parse_text, metavar: str = "N,N,..."):
    """Annotated[..., comma_separated(f)]: one argument such as `1,5,10`, parsed by `f` (which
    raises ValueError with the reason)."""
    return tyro.constructors.PrimitiveConstructorSpec(
        nargs=1,
        metavar=metavar,
        instance_from_str=lambda args: parse_text(args[0]),
        is_instance=lambda value: isinstance(value, (list, tuple)),
        str_from_instance=lambda value: [",".join(map(str, value))],
    )


def config_from_args(cls, args):
    """`cls` from the fields of `args` (a parsed `flags_of` dataclass) that `cls` has."""
    return cls(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    )


def usage_error(prog: str, message: str) -> typing.NoReturn:
    """A value the types allow but the command does not: exit 2, as tyro does for bad flags."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


# Lines TensorFlow 2.21 writes straight to file descriptor 2 while it loads, before its logging
# is set up (TF_CPP_MIN_LOG_LEVEL cannot hide them), and when it looks for a GPU.
_STARTUP_NOISE = re.compile(
    r"absl::InitializeLog\(\) is called|\] oneDNN custom operations are on|cudart_stub\.cc|"
    r"failed call to cuInit|cpu_feature_guard\.cc|^To enable the following instructions"
)


def setup_logging(verbose: bool = False) -> None:
    """Logs to stderr. Unless the user set TF_CPP_MIN_LOG_LEVEL: TensorFlow's C++ logs from ERROR
    up (TF_CPP_MIN_LOG_LEVEL=2), and its start-up notices (oneDNN, CUDA drivers, cuInit, absl)
    dropped while it is imported here; anything else it writes then still reaches stderr."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ or "tensorflow" in sys.modules:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    with _without_stderr_lines(_STARTUP_NOISE):
        import tensorflow as tf  # the heavy dependency, after the arguments are parsed

        tf.config.list_physical_devices()  # the CUDA probe, so that its cuInit error is caught


@contextlib.contextmanager
def _without_stderr_lines(pattern: re.Pattern):
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
            kept = [line for line in text.splitlines(keepends=True) if not pattern.search(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
