"""The scoring job's typed config: its fields are `xfer-score`'s flags, its defaults the defaults.

The names of the exported model's interface are copied here (not imported from export/): the
client is installed next to a serving cluster without the model-building code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import tyro

# Same values as export/contract.py (INPUT_KEY, SERVING_DEFAULT, SERVING_PIXELS,
# PIXELS_INPUT_KEY, PREPROCESSING_OUTPUT, OOD_OUTPUTS); a test keeps them equal.
INPUT_KEY = "image_bytes"
SERVING_DEFAULT = "serving_default"
SERVING_PIXELS = "serving_pixels"
PIXELS_INPUT_KEY = "pixels"
PREPROCESSING_OUTPUT = "preprocessing"
OOD_OUTPUTS = ("ood_score", "is_ood")  # present when the model has an OOD detector

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


def opt(default, help: str, **metadata):  # noqa: A002 - mirrors argparse
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class ScoreConfig:
    """Everything one scoring run needs; `xfer-score --help` prints the same fields."""

    inputs: tyro.conf.Positional[list[str]] = opt(
        [], "directories, globs, URI lists (.txt/.csv) or TFRecords (at least one)"
    )
    target: tyro.conf.UseAppendAction[list[str]] = opt(
        [], "required: HOST:PORT of a server (repeat for several; dns:/// names are balanced)"
    )
    model_name: str = opt("", "required: the model name on the server")
    output: str = opt("", "required: output file, appended to (JSONL, or CSV: --format csv, .csv)")
    format: Literal["", "jsonl", "csv"] = opt(
        "", "jsonl or csv; '' takes it from the output's suffix"
    )
    protocol: Literal["grpc", "rest"] = opt(
        "grpc", "grpc, or rest (b64 JSON) for HTTP-only ingress"
    )
    version: int | None = opt(None, "pin a model version")
    version_label: str | None = opt(None, "pin a version label (e.g. stable)")
    shadow_version: int | None = opt(
        None, "also send each batch to this version; its answer goes in the row's `shadow`"
    )
    shadow_version_label: str | None = opt(
        None, "the shadow by version label instead (e.g. canary)"
    )
    signature: str = opt(SERVING_DEFAULT, "signature name")
    input_key: str = opt(INPUT_KEY, "the signature's input of encoded image bytes")
    preprocess: Literal["server", "client"] = opt(
        "server",
        "where images are decoded and resized: server (bytes to --signature), or client (here, by "
        "the model's own preprocessing contract; uint8 pixels to serving_pixels, whose size and "
        "parameters the server gives; needs xfer's export package)",
    )
    batch_size: int = opt(32, "max images per request")
    max_message_mb: float = opt(
        4.0, "max request/response size in MB (gRPC's default 4; also the channel's limit)"
    )
    concurrency: int = opt(4, "requests in flight")
    timeout: float = opt(30.0, "deadline per request, seconds")
    retry_budget_s: float = opt(
        60.0,
        "per batch: retry UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED this long, seconds "
        "(outlives a server restart); then the batch fails: xfer-score stops (exit 2, no rows)",
    )
    max_retries: int | None = opt(
        None, "an extra cap on a batch's retries (None: only --retry-budget-s limits them)"
    )
    initial_backoff: float = opt(0.1, "first retry delay, seconds (doubles, full jitter)")
    max_backoff: float = opt(10.0, "cap of the retry delay, seconds")
    tls: bool = opt(False, "TLS to the server (system roots unless --root-certs)")
    root_certs: str | None = opt(None, "PEM file of trusted root certificates (implies --tls)")
    client_cert: str | None = opt(None, "PEM client certificate for mutual TLS")
    client_key: str | None = opt(None, "PEM private key of --client-cert")
    tls_server_name: str | None = opt(None, "expected server name in its certificate")
    auth_header: tyro.conf.UseAppendAction[list[str]] = opt(
        [], "metadata header sent with every request, e.g. 'authorization: Bearer X'"
    )
    keepalive_s: float = opt(30.0, "gRPC keepalive ping interval, seconds (0 = off)")
    resume: bool = opt(False, "skip URIs already in the output (repairs a torn last line)")
    labels_from_folders: bool = opt(False, "add `label`: each image's parent folder name")
    fsync_s: float = opt(2.0, "fsync the output at most this often, seconds")
    quiet: bool = opt(False, "no progress bar and no summary")
    evaluate: bool = opt(False, "run xfer-evaluate on the output afterwards (needs labels)")
    out_dir: str | None = opt(None, "where --evaluate writes (default: <output>.eval/)")

    def __post_init__(self):
        if self.root_certs or self.client_cert:
            self.tls = True
        if self.format == "":
            self.format = "csv" if self.output.lower().endswith(".csv") else "jsonl"

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb * 1024 * 1024)

    def validate(self) -> None:
        """Raise ValueError naming the rule and the received value."""

        def fail(rule: str, value) -> None:
            raise ValueError(f"{rule} (got {value!r})")

        if not self.inputs:
            fail("at least one INPUT is required", self.inputs)
        if not self.target:
            fail("--target HOST:PORT is required", self.target)
        if not self.model_name:
            fail("--model-name is required", self.model_name)
        if self.version is not None and self.version_label:
            fail("--version and --version-label are exclusive", (self.version, self.version_label))
        if self.shadow_version is not None and self.shadow_version_label:
            fail(
                "--shadow-version and --shadow-version-label are exclusive",
                (self.shadow_version, self.shadow_version_label),
            )
        if self.shadowed and self.format == "csv":
            fail("--shadow-version(-label) writes JSONL only (rows hold a `shadow` object)",
                 self.output)  # fmt: skip
        if self.batch_size < 1:
            fail("--batch-size must be >= 1", self.batch_size)
        if self.concurrency < 1:
            fail("--concurrency must be >= 1", self.concurrency)
        if self.max_message_mb <= 0:
            fail("--max-message-mb must be > 0", self.max_message_mb)
        if self.timeout <= 0:
            fail("--timeout must be > 0", self.timeout)
        if self.retry_budget_s < 0:
            fail("--retry-budget-s must be >= 0", self.retry_budget_s)
        if self.max_retries is not None and self.max_retries < 0:
            fail("--max-retries must be >= 0", self.max_retries)
        if self.initial_backoff < 0 or self.max_backoff < 0:
            fail("--initial-backoff and --max-backoff must be >= 0",
                 (self.initial_backoff, self.max_backoff))  # fmt: skip
        if self.preprocess == "client" and (
            self.signature != SERVING_DEFAULT or self.input_key != INPUT_KEY
        ):
            fail(
                "--signature and --input-key name the bytes input of --preprocess server; "
                f"--preprocess client sends pixels to {SERVING_PIXELS}",
                (self.signature, self.input_key),
            )
        if bool(self.client_cert) != bool(self.client_key):
            fail("--client-cert and --client-key go together", (self.client_cert, self.client_key))
        for header in self.auth_header:
            if ":" not in header:
                fail("--auth-header must be 'name: value'", header)

    @property
    def shadowed(self) -> bool:
        return self.shadow_version is not None or bool(self.shadow_version_label)

    def replace(self, **changes) -> ScoreConfig:
        return dataclasses.replace(self, **changes)
