"""The contract suite's options; each also read from an environment variable.

Registered once, by tests/conftest.py: the conftest every pytest invocation loads before it
parses the command line, so the options work with `pytest tests/contract` and a bare `pytest`.
"""

from __future__ import annotations

import os

OPTIONS = [
    ("--grpc-target", "XFER_CONTRACT_GRPC", "gRPC address host:port of the server under test"),
    ("--rest-target", "XFER_CONTRACT_REST", "REST base URL http://host:port of the server"),
    ("--model-name", "XFER_CONTRACT_MODEL", "model name served by the target"),
    ("--images", "XFER_CONTRACT_IMAGES", "directory of sample images (class subfolders)"),
    ("--class-labels", "XFER_CONTRACT_CLASS_LABELS", "expected label set: labels.txt or a,b,c"),
    ("--version-labels", "XFER_CONTRACT_VERSION_LABELS", "label=version,... served by target"),
    ("--wait-seconds", "XFER_CONTRACT_WAIT", "seconds to wait for an AVAILABLE version (60)"),
]


def add_options(parser) -> None:
    group = parser.getgroup("xfer-contract", "TF Serving contract suite (tests/contract)")
    for flag, env, text in OPTIONS:
        group.addoption(flag, default=None, help=f"{text} [env {env}]")


def option(config, flag: str) -> str | None:
    """Command-line option, else its environment variable, else None."""
    dest = flag.lstrip("-").replace("-", "_")
    value = config.getoption(dest, default=None)
    if value:
        return value
    env = next(e for f, e, _ in OPTIONS if f == flag)
    return os.environ.get(env) or None
