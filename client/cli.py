"""`xfer-score`: flags only. The flags are `ScoreConfig`'s fields; the work is in scorer.py.

Exit codes: 0 every input scored, 3 some inputs failed (their rows say why), 2 usage error or a
run the server refuses outright (unknown model/version/signature, credentials).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import types
import typing
from collections.abc import Sequence

from client.config import ScoreConfig

log = logging.getLogger(__name__)

EXAMPLES = """examples:
  xfer-score photos/ --target localhost:8500 --model-name flowers --output scored.jsonl
  xfer-score 'gs://bucket/imgs/*.jpg' list.csv --target dns:///serving.prod:8500 \\
      --model-name flowers --version-label stable --output scored.csv --concurrency 16
  xfer-score photos/ --target localhost:8500 --model-name flowers --output s.jsonl --resume
"""


def _base_type(hint):
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def build_parser(cls=ScoreConfig, prog="xfer-score", description=None) -> argparse.ArgumentParser:
    """One flag per dataclass field (dashes or underscores), defaults from the dataclass."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description or (__doc__ or "").splitlines()[0],
        epilog=EXAMPLES if cls is ScoreConfig else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        meta = f.metadata
        default = getattr(defaults, f.name) if f.name != "format" else f.default
        if meta.get("positional"):
            parser.add_argument(
                f.name, nargs="+", metavar=f.name.upper().rstrip("S"), help=meta["help"]
            )
            continue
        flags = ["--" + f.name.replace("_", "-")]
        if "_" in f.name:
            flags.append("--" + f.name)
        kind = _base_type(hints[f.name])
        if kind is bool:
            parser.add_argument(*flags, dest=f.name, action="store_true", help=meta["help"])
            continue
        kwargs: dict = {"dest": f.name, "help": meta["help"]}
        if meta.get("append"):
            kwargs.update(action="append", default=None)
        else:
            kwargs.update(type=kind, default=default)
            if default not in (None, "", []):
                kwargs["help"] = f"{meta['help']} (default: {default})"
        if "choices" in meta:
            kwargs["choices"] = meta["choices"]
        parser.add_argument(*flags, **kwargs)
    return parser


def config_from_args(args: argparse.Namespace) -> ScoreConfig:
    values = {k: v for k, v in vars(args).items() if v is not None}
    return ScoreConfig(**values)


def setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        config.validate()
        if not config.output:
            raise ValueError("--output FILE is required (got '')")
    except ValueError as exc:
        parser.print_usage(sys.stderr)
        print(f"xfer-score: error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.quiet)
    from client.scorer import ScoringAborted, run

    try:
        summary = run(config)
    except ScoringAborted as exc:
        print(f"xfer-score: error: the server refuses this run: {exc}", file=sys.stderr)
        return 2
    if not config.quiet:
        print(summary.format(), file=sys.stderr)
    if config.evaluate:
        from client.evaluate import EvaluateConfig, evaluate

        out_dir = config.out_dir or f"{config.output}.eval"
        report = evaluate(EvaluateConfig(predictions=config.output, out_dir=out_dir))
        if not config.quiet:
            print(report.format(), file=sys.stderr)
    return 3 if summary.failed else 0
