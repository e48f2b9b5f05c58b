"""Orchestration: stream items → byte/count-bounded batches → bounded requests in flight → rows.

Memory stays flat: items are read lazily, at most `concurrency` requests (and one batch being
filled) exist at a time, and rows are handed out as soon as their request returns. A batch the
server refuses with INVALID_ARGUMENT (or as too large) is bisected until the bad image(s) are
alone, so one corrupt file costs its own row and a few extra requests, never its batch-mates'
results.

With `--preprocess client` each batch's images are first turned into the model's uint8 pixels
here (client/pixels.py, the contract's own pixel step): an image the contract refuses gets the
row the server would have written, and the rest go to `serving_pixels`.

Rows are written only for what belongs to an image. When no server answers a batch within the
retry budget, or the TLS handshake fails, or the server refuses the run itself (unknown model,
credentials), the run stops with `ScoringAborted`: the images not yet answered get no row, so a
`--resume` scores them later.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from client.batching import batches, bisect, fits_alone, request_bytes
from client.config import ScoreConfig
from client.inputs import Item, check_inputs, iter_items
from client.output import ResultWriter, prepare_resume, timestamp
from client.pixels import ClientPixels, PixelsUnavailable, discover
from client.retry import RETRYABLE, RetryPolicy, RpcError, call_with_retry
from client.summary import LatencyReservoir, Summary

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


class PixelsRefused(ScoringAborted):
    """`--preprocess client` is not possible with this model (or stopped being so mid-run)."""

    headline = "--preprocess client cannot score this model"


def row_for(item: Item, *, labels=None, scores=None, version=None, error=None, ood=None) -> dict:
    """One output row in the scored-output schema (docs/architecture.md); `ood`: the row's
    `ood_score` and `is_ood` (client.ood.fields), for a model that has them. `scored_at`: now,
    when the row is decided; `mtime`: the local file's, when known."""
    row: dict = {"uri": item.uri}
    if item.label is not None:
        row["label"] = item.label
    if error is not None:
        row["error"] = error
    else:
        row["labels"] = labels
        row["scores"] = scores
        row["model_version"] = version
        row.update(ood or {})
    row["scored_at"] = timestamp(time.time())
    if item.mtime is not None:
        row["mtime"] = timestamp(item.mtime)
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
        self.pixels: ClientPixels | None = None
        self._pixels_lock = threading.Lock()

    def pixel_step(self) -> ClientPixels | None:
        """With --preprocess client, the model's pixel step, learnt from the server on first use
        (metadata and one probe request); raises PixelsRefused when the model cannot take it."""
        if self.config.preprocess != "client":
            return None
        with self._pixels_lock:
            if self.pixels is None:
                try:
                    self.pixels = discover(self.transport, self.config, self._call)
                except PixelsUnavailable as exc:
                    raise PixelsRefused(str(exc)) from None
                log.info("%s", self.pixels.describe())
        return self.pixels

    def _call(self, request):
        """`request(attempt)` with the run's retries; what cannot be answered stops the run."""
        try:
            return call_with_retry(request, self.policy, on_retry=self._on_retry, stop=self._stop)
        except RpcError as exc:
            if exc.tls_failure or exc.code in RETRYABLE:
                raise self._gave_up(exc) from None
            raise ScoringAborted(f"{exc.code}: {exc.message}") from None

    def _predict(self, images: list[bytes], attempt: int):
        start = time.perf_counter()
        try:
            if self.pixels is not None:
                return self.transport.predict(images, attempt, self.pixels.size)
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
        """Rows for one batch; raises `ScoringAborted` when the batch cannot be answered at all.
        With --preprocess client, the images become pixels first, sent in requests that fit."""
        pixels = self.pixel_step()
        if pixels is None:
            return self._send(items)
        ready, refused = pixels.prepare(items)
        rows = [row_for(item, error=reason) for item, reason in refused]
        limit = self.config.max_message_bytes
        for chunk in batches(ready, self.config.batch_size, limit, lambda i: i.size):
            rows += self._send(chunk)
        return rows

    def _send(self, items: list[Item]) -> list[dict]:
        """One request for `items` (bisected where the server refuses some)."""
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
                return self._send(left) + self._send(right)
            if exc.code in FATAL:
                raise ScoringAborted(f"{exc.code}: {exc.message}") from None
            return [row_for(item, error=f"{exc.code}: {exc.message}") for item in items]
        if self.pixels is not None:
            self._check_contract(prediction)
        if len(prediction.labels) != len(items) or len(prediction.scores) != len(items):
            error = f"server returned {len(prediction.labels)} rows for {len(items)} images"
            return [row_for(item, error=error) for item in items]
        from client.ood import fields

        rows = [
            row_for(
                item,
                labels=labels,
                scores=scores,
                version=prediction.model_version,
                ood=fields(prediction.ood_score, prediction.is_ood, i),
            )
            for i, (item, labels, scores) in enumerate(
                zip(items, prediction.labels, prediction.scores)
            )
        ]
        return self.shadow.attach(rows, images, self._stop) if self.shadow else rows

    def _check_contract(self, prediction) -> None:
        """Each response names the preprocessing contract its pixels went through: one other than
        the run's (a version with another contract swapped in) stops the run, unscored."""
        answered = self.pixels.check(prediction.preprocessing)
        if answered is not None:
            raise PixelsRefused(
                f"version {prediction.model_version} answered with preprocessing {answered!r}, "
                f"not {self.pixels.contract.text!r} as at the start of the run: run the same "
                "command again (with --resume) to score the rest against it"
            )

    def _image_error(self, item: Item, exc: RpcError) -> str:
        if exc.too_large:  # not a RESOURCE_EXHAUSTED row: those are transient (output.py)
            what = "its pixels are" if self.pixels is not None else "file is"
            return (
                f"{what} {item.size} bytes: too large for the server alone ({exc.code}: "
                f"{exc.message}); its limit is below --max-message-mb {self.config.max_message_mb}"
            )
        return f"{exc.code}: {exc.message}"

    def results(self, items: Iterable[Item]) -> Iterator[dict]:
        """Rows as requests complete (not in input order); at most `concurrency` in flight."""
        config = self.config
        max_bytes = config.max_message_bytes
        immediate: deque[dict] = deque()  # rows decided without a request
        pixels = self.pixel_step()  # before any input is read: a model without pixels stops here

        def sendable() -> Iterator[Item]:
            for item in items:
                if item.error is not None:
                    immediate.append(row_for(item, error=item.error))
                elif pixels is None and not fits_alone(item.size, max_bytes):
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

        size_of = (lambda i: i.size) if pixels is None else (lambda i: pixels.image_bytes)
        pending: set[Future] = set()
        self._stop.clear()
        with ThreadPoolExecutor(config.concurrency, thread_name_prefix="score") as pool:
            try:
                for batch in batches(sendable(), config.batch_size, max_bytes, size_of):
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
