"""Orchestration: stream items → byte/count-bounded batches → bounded requests in flight → rows.

Memory stays flat: items are read lazily, at most `concurrency` requests (and one batch being
filled) exist at a time, and rows are handed out as soon as their request returns. A batch the
server refuses with INVALID_ARGUMENT (or as too large) is bisected until the bad image(s) are
alone, so one corrupt file costs its own row and a few extra requests, never its batch-mates'
results.

Rows are written only for what belongs to an image. When no server answers a batch within the
retry budget, or the TLS handshake fails, or the server refuses the run itself (unknown model,
credentials), the run stops with `ScoringAborted`: the images not yet answered get no row, so a
`--resume` scores them later.
"""

from __future__ import annotations

import logging
import random
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field

from client.batching import batches, bisect, fits_alone, request_bytes
from client.config import ScoreConfig
from client.inputs import Item, check_inputs, iter_items
from client.output import ResultWriter, prepare_resume
from client.retry import RETRYABLE, RetryPolicy, RpcError, call_with_retry

log = logging.getLogger(__name__)

# Codes that no retry and no batch split can fix: stop the run rather than write a row per image.
FATAL = frozenset(
    {"NOT_FOUND", "UNAUTHENTICATED", "PERMISSION_DENIED", "UNIMPLEMENTED", "FAILED_PRECONDITION"}
)


class ScoringAborted(RuntimeError):
    """The run cannot go on; `xfer-score` exits 2 with `explain()`.

    This class itself: the server refuses every request (unknown model, version, signature,
    credentials). `summary`: what the run did before it stopped (set by `run`).
    """

    headline = "the server refuses this run"
    summary: Summary | None = None

    def explain(self) -> str:
        return f"{self.headline}: {self}"


class Unreachable(ScoringAborted):
    """No target answered a batch within the retry budget (down, unreachable, overloaded)."""

    headline = "no server answered"


class TlsFailure(ScoringAborted):
    """The TLS handshake failed: an untrusted certificate, a wrong name, or no TLS there."""

    headline = "the TLS handshake failed"


class LatencyReservoir:
    """A uniform sample of request latencies (Vitter's algorithm R): percentiles in O(1) memory."""

    def __init__(self, capacity: int = 10000, seed: int = 0):
        self.capacity = capacity
        self.samples: list[float] = []
        self.count = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self.count += 1
            if len(self.samples) < self.capacity:
                self.samples.append(seconds)
            else:
                slot = self._rng.randrange(self.count)
                if slot < self.capacity:
                    self.samples[slot] = seconds

    def percentiles_ms(self) -> dict[str, float | None]:
        with self._lock:
            ordered = sorted(self.samples)
        if not ordered:
            return {"p50": None, "p95": None, "p99": None}

        def pick(q: float) -> float:
            index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
            return round(ordered[index] * 1000, 2)

        return {"p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99)}


@dataclass
class Summary:
    total: int = 0
    scored: int = 0
    failed: int = 0
    skipped: int = 0  # already in the output (--resume)
    requests: int = 0
    retries: int = 0
    elapsed_s: float = 0.0
    images_per_s: float = 0.0
    latency_ms: dict = field(default_factory=dict)
    model_versions: dict = field(default_factory=dict)  # version (str) -> rows
    shadow: dict | None = None  # client.shadow.Shadow.as_dict(), with --shadow-version(-label)

    def as_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        lat = self.latency_ms or {}
        versions = ", ".join(f"{v}: {n}" for v, n in sorted(self.model_versions.items())) or "-"
        return (
            f"total {self.total}  scored {self.scored}  failed {self.failed}"
            f"  skipped {self.skipped} (resume)\n"
            f"{self.images_per_s:.1f} images/s over {self.elapsed_s:.1f}s, {self.requests} requests"
            f" ({self.retries} retries); latency p50 {lat.get('p50')} ms, p95 {lat.get('p95')} ms,"
            f" p99 {lat.get('p99')} ms\nmodel versions: {versions}"
            + (self._shadow_line() if self.shadow else "")
        )

    def _shadow_line(self) -> str:
        s = self.shadow or {}
        agreement = "n/a" if s.get("agreement") is None else f"{s['agreement']:.4f}"
        versions = ", ".join(f"{v}: {n}" for v, n in sorted(s["model_versions"].items())) or "-"
        return (
            f"\nshadow: versions {versions}; top-1 agreement {agreement} over {s['compared']} "
            f"rows, {s['errors']} shadow errors"
        )


def row_for(item: Item, *, labels=None, scores=None, version=None, error=None) -> dict:
    """One output row in the scored-output schema (docs/architecture.md)."""
    row: dict = {"uri": item.uri}
    if item.label is not None:
        row["label"] = item.label
    if error is not None:
        row["error"] = error
    else:
        row["labels"] = labels
        row["scores"] = scores
        row["model_version"] = version
    return row


class Scorer:
    """Scores items through a transport; thread-safe `score_batch`, streaming `results`."""

    def __init__(self, config: ScoreConfig, transport=None, shadow_transport=None):
        from client.shadow import Shadow
        from client.transport import make_transport

        self.config = config
        self.transport = transport or make_transport(config)
        self.policy = RetryPolicy(
            max_retries=config.max_retries,
            initial_backoff=config.initial_backoff,
            max_backoff=config.max_backoff,
            budget_s=config.retry_budget_s,
        )
        self.latency = LatencyReservoir()
        self.shadow = Shadow(config, self.policy, shadow_transport) if config.shadowed else None
        self._lock = threading.Lock()
        self._stop = threading.Event()  # set when `results` ends: pending retries give up
        self.requests = 0
        self.retries = 0

    def _predict(self, images: list[bytes], attempt: int):
        start = time.perf_counter()
        try:
            return self.transport.predict(images, attempt)
        finally:
            self.latency.add(time.perf_counter() - start)
            with self._lock:
                self.requests += 1

    def _on_retry(self, exc: RpcError) -> None:
        with self._lock:
            self.retries += 1

    def _gave_up(self, exc: RpcError) -> ScoringAborted:
        """The error that stops the run when a batch's retries are spent, naming the targets."""
        targets = ", ".join(self.config.target)
        if exc.tls_failure:
            hint = "check --root-certs (the CA that signed the server's certificate)"
            if self.config.tls_server_name:
                hint += " and --tls-server-name"
            else:
                hint += ", or --tls-server-name when the target is not the certificate's name"
            return TlsFailure(f"{targets}: {exc.code}: {exc.message} ({hint})")
        attempts = f"{exc.attempts} attempt{'s' if exc.attempts > 1 else ''}"
        return Unreachable(
            f"{targets} did not answer for {exc.elapsed_s:.1f} s ({attempts}; "
            f"{self.policy.describe()}); last error {exc.code}: {exc.message}"
        )

    def score_batch(self, items: list[Item]) -> list[dict]:
        """Rows for one batch; raises `ScoringAborted` when the batch cannot be answered at all."""
        images = [item.data for item in items]
        try:
            prediction = call_with_retry(
                lambda attempt: self._predict(images, attempt),
                self.policy,
                on_retry=self._on_retry,
                stop=self._stop,
            )
        except RpcError as exc:
            if exc.tls_failure or (exc.code in RETRYABLE and not exc.too_large):
                raise self._gave_up(exc) from None
            if exc.code == "INVALID_ARGUMENT" or exc.too_large:
                if len(items) == 1:
                    return [row_for(items[0], error=self._image_error(items[0], exc))]
                left, right = bisect(items)
                log.debug("%s on %d images: bisecting", exc.code, len(items))
                return self.score_batch(left) + self.score_batch(right)
            if exc.code in FATAL:
                raise ScoringAborted(f"{exc.code}: {exc.message}") from None
            return [row_for(item, error=f"{exc.code}: {exc.message}") for item in items]
        if len(prediction.labels) != len(items) or len(prediction.scores) != len(items):
            error = f"server returned {len(prediction.labels)} rows for {len(items)} images"
            return [row_for(item, error=error) for item in items]
        rows = [
            row_for(item, labels=labels, scores=scores, version=prediction.model_version)
            for item, labels, scores in zip(items, prediction.labels, prediction.scores)
        ]
        return self.shadow.attach(rows, images, self._stop) if self.shadow else rows

    def _image_error(self, item: Item, exc: RpcError) -> str:
        if exc.too_large:  # not a RESOURCE_EXHAUSTED row: those are transient (output.py)
            return (
                f"file is {item.size} bytes: too large for the server alone ({exc.code}: "
                f"{exc.message}); its limit is below --max-message-mb {self.config.max_message_mb}"
            )
        return f"{exc.code}: {exc.message}"

    def results(self, items: Iterable[Item]) -> Iterator[dict]:
        """Rows as requests complete (not in input order); at most `concurrency` in flight."""
        config = self.config
        max_bytes = config.max_message_bytes
        immediate: deque[dict] = deque()  # rows decided without a request

        def sendable() -> Iterator[Item]:
            for item in items:
                if item.error is not None:
                    immediate.append(row_for(item, error=item.error))
                elif not fits_alone(item.size, max_bytes):
                    immediate.append(
                        row_for(
                            item,
                            error=f"file is {item.size} bytes: a request with it would be "
                            f"{request_bytes([item.size])} bytes, over the limit of {max_bytes} "
                            f"(--max-message-mb {config.max_message_mb})",
                        )
                    )
                else:
                    yield item

        pending: set[Future] = set()
        self._stop.clear()
        with ThreadPoolExecutor(config.concurrency, thread_name_prefix="score") as pool:
            try:
                for batch in batches(sendable(), config.batch_size, max_bytes, lambda i: i.size):
                    while immediate:
                        yield immediate.popleft()
                    pending.add(pool.submit(self.score_batch, batch))
                    while len(pending) >= config.concurrency:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for future in done:
                            yield from future.result()
                while immediate:
                    yield immediate.popleft()
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        yield from future.result()
            finally:
                self._stop.set()  # a batch still retrying (the run is stopping) gives up now
                for future in pending:
                    future.cancel()

    def close(self) -> None:
        self.transport.close()
        if self.shadow:
            self.shadow.close()


def score(
    inputs: str | Iterable[str],
    *,
    target: str | list[str],
    model_name: str,
    **options,
) -> Iterator[dict]:
    """Python API for notebooks: yields one result dict per input, as results arrive.

    `score("photos/", target="localhost:8500", model_name="flowers", batch_size=16)`; options
    are `ScoreConfig` fields (the flags of `xfer-score`); nothing is written to disk.
    """
    config = ScoreConfig(
        inputs=[inputs] if isinstance(inputs, str) else list(inputs),
        target=[target] if isinstance(target, str) else list(target),
        model_name=model_name,
        **options,
    )
    config.validate()
    check_inputs(config.inputs)
    scorer = Scorer(config)
    try:
        items = iter_items(config.inputs, labels_from_folders=config.labels_from_folders)
        yield from scorer.results(items)
    finally:
        scorer.close()


def run(config: ScoreConfig) -> Summary:
    """`xfer-score`: score every input into `config.output`, with progress and a summary.

    Raises `InputNotFound` (an INPUT names nothing) before anything is scored, and
    `ScoringAborted` when the run cannot go on (its `summary` says what was written before).
    """
    from tqdm import tqdm

    config.validate()
    if not config.output:
        raise ValueError("--output FILE is required (got '')")
    check_inputs(config.inputs)
    skip: set[str] = set()
    if config.resume:
        skip = prepare_resume(config.output, config.format)
    summary = Summary()
    versions: Counter = Counter()
    scorer = Scorer(config)
    start = time.monotonic()

    def skipped(uri: str) -> None:
        summary.skipped += 1

    items = iter_items(
        config.inputs,
        labels_from_folders=config.labels_from_folders,
        skip=skip,
        on_skip=skipped,
    )
    progress = tqdm(
        unit="img", desc="scoring", disable=config.quiet, file=sys.stderr, dynamic_ncols=True
    )
    try:
        with ResultWriter(config.output, config.format, config.fsync_s) as writer:
            for row in scorer.results(items):
                writer.write(row)
                summary.total += 1
                if "error" in row:
                    summary.failed += 1
                else:
                    summary.scored += 1
                    versions[str(row["model_version"])] += 1
                progress.update(1)
    except ScoringAborted as exc:
        exc.summary = summary  # completed below
        raise
    finally:
        progress.close()
        scorer.close()
        summary.elapsed_s = round(time.monotonic() - start, 3)
        summary.images_per_s = (
            round(summary.total / summary.elapsed_s, 2) if summary.elapsed_s else 0
        )
        summary.requests = scorer.requests
        summary.retries = scorer.retries
        summary.latency_ms = scorer.latency.percentiles_ms()
        summary.model_versions = dict(versions)
        summary.shadow = scorer.shadow.as_dict() if scorer.shadow else None
    log.info("summary: %s", summary.as_dict())
    return summary
