"""`xfer-serve` / `python -m serving`: the flags (tensorflow_model_server's), logging, and the
server's life (serving/server.py) until SIGTERM or SIGINT.

`--help` needs no TensorFlow: the flags are parsed before the server's modules are imported.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
import tempfile
import threading

from serving.config import ConfigError, resolve
from serving.flags import EXIT_LOAD, EXIT_OK, EXIT_USAGE, parse_flags

log = logging.getLogger("serving.server")

# Lines TensorFlow 2.21 writes straight to file descriptor 2 while it loads, before its logging
# is set up (TF_CPP_MIN_LOG_LEVEL cannot hide them), and when it looks for a GPU.
_STARTUP_NOISE = re.compile(
    r"absl::InitializeLog\(\) is called|\] oneDNN custom operations are on|cudart_stub\.cc|"
    r"failed call to cuInit|cpu_feature_guard\.cc|^To enable the following instructions"
)


def setup_logging(verbose: bool = False) -> None:
    """Logs to stderr. Unless the user set TF_CPP_MIN_LOG_LEVEL: TensorFlow's C++ logs from ERROR
    up (TF_CPP_MIN_LOG_LEVEL=2), and its start-up notices (oneDNN, CUDA drivers, cuInit, absl)
    dropped while it is imported here; anything else it writes then still reaches stderr. The
    same as export/cliargs.py's: serving/ imports nothing from export/."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ or "tensorflow" in sys.modules:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    with _without_stderr_lines(_STARTUP_NOISE):
        import tensorflow as tf  # the heavy dependency, after the flags are parsed

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


def main(argv: list[str] | None = None) -> int:
    flags = parse_flags(argv)
    setup_logging(flags.verbose)
    from serving.server import ModelServer, StartupError  # TensorFlow: after --help

    try:
        config = resolve(flags)
    except ConfigError as exc:
        log.error("%s", exc)
        print(f"xfer-serve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    server = ModelServer(config)
    try:
        server.start()
    except OSError as exc:
        print(f"xfer-serve: error: {exc}", file=sys.stderr)
        server.stop(0)
        return EXIT_USAGE
    except StartupError as exc:
        log.error("%s", exc)
        print(f"xfer-serve: error: {exc}", file=sys.stderr)
        server.stop(0)
        return EXIT_LOAD

    def shutdown(signum, frame):
        log.info("signal %d: shutting down", signum)
        threading.Thread(target=server.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    server.wait()
    return EXIT_OK
