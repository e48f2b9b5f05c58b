"""Every console script in setup.py keeps the CLI convention (docs/development.md, "Command
lines"), each checked in its own Python process:

* `--help` exits 0 without importing TensorFlow, Keras or Apache Beam;
* it shows every option with a help text and its default (or `(required)`, `(repeatable)`);
* it ends with the exit codes, 0 and 2 among them;
* every multi-word flag works in both spellings (`--model-base-path`, `--model_base_path`).

Both spellings are tried by parsing each one alone with `tyro.cli` stopped right after parsing,
so no command runs: the flag is accepted when tyro does not report it unrecognised (a missing
value or required option is a different error) and, for the Beam jobs, when it is not among the
arguments passed through to Beam's PipelineOptions.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("tensorflow", "keras", "apache_beam")


def console_scripts() -> dict[str, str]:
    """name -> "module:function", read from setup.py's entry_points."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    entries = ast.literal_eval(value)
                    return dict(entry.replace(" ", "").split("=", 1) for entry in entries)
    raise AssertionError("setup.py has no console_scripts")


SCRIPTS = console_scripts()

# Runs in the subprocess: argv[1] is "module:function".
PROBE = r"""
import contextlib, importlib, io, json, re, sys

module, function = sys.argv[1].split(":")
main = getattr(importlib.import_module(module), function)


class Parsed(Exception):
    pass


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    unknown = []
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = "returned"
        except SystemExit as exc:
            code = exc.code
        except Parsed as parsed:
            code = "parsed"
            result = parsed.args[0]
            if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], list):
                unknown = result[1]  # return_unknown_args: what goes on to Beam
    return code, out.getvalue(), err.getvalue(), unknown


code, help_text, help_err, _ = run(["--help"])
heavy = [name for name in sys.argv[2:] if name in sys.modules]

import tyro

real_cli = tyro.cli


def dummy(hint):
    import types, typing
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return dummy(args[0])
    if origin is typing.Literal:
        return args[0]
    if origin in (typing.Union, types.UnionType):
        return None
    return {str: "x", int: 1, float: 1.0, bool: False}.get(hint, hint() if callable(hint) else None)


def parse_only(args_type, **kwargs):
    # Required options and positionals get a default, so that the only error left for a flag
    # alone is about that flag: unrecognised, or missing its value.
    import dataclasses, typing
    hints = typing.get_type_hints(args_type, include_extras=True)
    values = {f.name: dummy(hints[f.name]) for f in dataclasses.fields(args_type)
              if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    kwargs.setdefault("default", args_type(**values))
    raise Parsed(real_cli(args_type, **kwargs))


tyro.cli = parse_only
# Option rows of tyro's help: "  --flag METAVAR  help" or "  --flag, --no-flag" (in boxes on a
# terminal).
flags = set()
for line in help_text.splitlines():
    row = re.match(r"^[│ ] {0,4}(-.*?)(?:  |│|$)", line)
    if row:
        flags.update(re.findall(r"--[a-z][\w-]*", row.group(1)))
flags.discard("--help")
# A required group of exclusive options (xfer-fewshot's --data/--bottlenecks): name one.
_, _, err, _ = run([])
group = re.search(r"Missing required argument group.*?(--[\w-]+)", err, re.S)
extra = [group.group(1), "x"] if group else []
spellings = {}
for flag in sorted(flags) + ["--no-such-flag-at-all"]:
    for spelling in {"--" + flag[2:].replace("_", "-"), "--" + flag[2:].replace("-", "_")}:
        result, _, err, unknown = run([*extra, spelling])
        spellings[spelling] = "Unrecognized" not in err and spelling not in unknown
print(json.dumps({"code": code, "help": help_text, "stderr": help_err, "heavy": heavy,
                  "flags": sorted(flags), "accepted": spellings}))
"""


@functools.cache
def probe(name: str) -> dict:
    """The PROBE's findings for one console script, from its own Python process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, SCRIPTS[name], *HEAVY],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"{name}: the probe failed:\n{proc.stderr}"
    return json.loads(proc.stdout.splitlines()[-1])


def test_setup_py_lists_the_console_scripts():
    assert len(SCRIPTS) == 20 and all(":" in target for target in SCRIPTS.values())


def option_rows(help_text: str) -> list[str]:
    """Each option's row of the help, its wrapped lines joined, box characters dropped."""
    lines = [
        re.sub(r"[│╭╮╰╯─]", " ", line) for line in help_text.split("exit codes:")[0].splitlines()
    ]
    rows: list[str] = []
    for line in lines:
        if re.match(r"^ {1,5}--?\w", line):
            rows.append(line)
        elif rows and line.startswith(" " * 8) and line.strip():
            rows[-1] += " " + line
        elif rows and not line.strip():
            rows.append("")
    return [" ".join(row.split()) for row in rows if row.strip()]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_exits_0_without_tensorflow_keras_or_beam(name):
    found = probe(name)
    assert found["code"] == 0, found["stderr"]
    assert found["help"].startswith("usage: " + name)
    assert found["heavy"] == [], f"{name} --help imported {found['heavy']}"


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_ends_with_the_exit_codes(name):
    lines = probe(name)["help"].rstrip().splitlines()
    start = lines.index("exit codes:")
    codes = [re.match(r"^  (\d)  \S", line) for line in lines[start + 1 :]]
    assert codes and all(codes), lines[start:]
    numbers = [int(match.group(1)) for match in codes]
    assert numbers == sorted(set(numbers)) and {0, 2} <= set(numbers)


MARK = r"\((default: .*?|required|repeatable)\)"


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_option_shows_its_help_and_default(name):
    rows = [row for row in option_rows(probe(name)["help"]) if not row.startswith("-h, --help")]
    assert len(rows) >= len([f for f in probe(name)["flags"] if not f.startswith("--no-")]) / 2
    for row in rows:
        flag = row.split()[0]
        assert re.search(MARK, row), f"{name} {flag}: no default, (required) or (repeatable)"
        # What is left without the flags, their metavars and the mark is the help text.
        metavar = r"(?:[\[{A-Z][^ ]*\s)?"
        described = re.sub(rf"^(?:--?[\w-]+,?\s{metavar})+", "", row + " ")
        assert re.sub(MARK, "", described).strip(), f"{name} {flag} has no help text: {row}"


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_flag_is_accepted_in_both_spellings(name):
    accepted = probe(name)["accepted"]
    # The control: a flag nobody defines is refused (or, for a Beam job, passed on to Beam).
    assert accepted.pop("--no-such-flag-at-all") is False
    assert accepted.pop("--no_such_flag_at_all") is False
    multi_word = [flag for flag in probe(name)["flags"] if re.search(r"\w[-_]\w", flag[2:])]
    for flag in multi_word:
        dashed, underscored = "--" + flag[2:].replace("_", "-"), "--" + flag[2:].replace("-", "_")
        assert accepted[dashed] and accepted[underscored], (name, dashed, underscored)
