"""Retries by time: exponential backoff with full jitter, only for errors that waiting can fix.

UNAVAILABLE (server down or restarting, queue full), DEADLINE_EXCEEDED (slow or overloaded) and
RESOURCE_EXHAUSTED (rate limited) are transient; anything else (a bad image, an unknown model)
fails the same way every time, so it is returned at once. So are three transient-looking answers
that waiting cannot fix: a TLS handshake that fails (an untrusted certificate, a wrong server
name), and a message over a size limit (RESOURCE_EXHAUSTED "larger than max", HTTP 413).

A batch is retried for `budget_s` seconds from its first attempt (long enough to outlive a
server restart), and at most `max_retries` times when that is set; then its last error is raised
for the caller to decide (`client.scorer` stops the run: no row is written for an image that was
never answered).
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})

# What gRPC (1.5x-1.8x) and OpenSSL say when a TLS handshake fails: the certificate is not
# trusted, its name does not match, or the other end does not speak TLS.
TLS_FAILURE = re.compile(
    r"(tls|ssl) handshake failed|certificate_verify_failed|certificate verify failed"
    r"|hostname verification|not in peer certificate|wrong_version_number",
    re.IGNORECASE,
)
TOO_LARGE = re.compile(r"larger than max", re.IGNORECASE)


class RpcError(Exception):
    """A failed request, protocol-neutral: a gRPC status code name and the server's message.

    `tls_failure`: the TLS handshake failed (set by the transport); `too_large`: the request or
    its response is over a message size limit. Neither is retried.
    """

    def __init__(
        self, code: str, message: str, *, tls_failure: bool = False, too_large: bool = False
    ):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.tls_failure = tls_failure or bool(TLS_FAILURE.search(message))
        self.too_large = too_large or (
            code == "RESOURCE_EXHAUSTED" and bool(TOO_LARGE.search(message))
        )
        self.attempts = 1
        self.elapsed_s = 0.0

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE and not self.tls_failure and not self.too_large


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int | None = None  # an extra cap; None: only the budget limits
    initial_backoff: float = 0.1
    max_backoff: float = 10.0
    budget_s: float = 60.0  # per call, from its first attempt

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Full jitter (AWS architecture blog): uniform in [0, min(cap, base * 2**retry)]."""
        ceiling = min(self.max_backoff, self.initial_backoff * (2 ** min(retry, 64)))
        return (rng or random).uniform(0.0, ceiling)

    def describe(self) -> str:
        """The flags that bound the retries, as the user would type them."""
        text = f"--retry-budget-s {self.budget_s:g}"
        if self.max_retries is not None:
            text += f", --max-retries {self.max_retries}"
        return text


def call_with_retry(
    fn: Callable[[int], T],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    on_retry: Callable[[RpcError], None] | None = None,
    stop: threading.Event | None = None,
) -> T:
    """`fn(attempt)` until it succeeds, fails in a way retrying cannot fix, or the budget is spent.

    The budget counts from the first attempt; the last delay is shortened so that one more
    attempt lands at its end. The attempt number lets the transport pick the next target, so a
    retry after UNAVAILABLE goes to another server when there are several. When `stop` is set
    (the run is stopping), a pending retry is abandoned and the last error raised at once. The
    error raised carries `attempts` and `elapsed_s`.
    """
    start = clock()
    attempt = 0
    while True:
        try:
            return fn(attempt)
        except RpcError as exc:
            exc.attempts = attempt + 1
            exc.elapsed_s = clock() - start
            if not exc.retryable:
                raise
            if policy.max_retries is not None and attempt >= policy.max_retries:
                raise
            remaining = policy.budget_s - exc.elapsed_s
            if remaining <= 0:
                raise
            delay = min(policy.delay(attempt), remaining)
            log.debug("%s; retry %d in %.3fs", exc, attempt + 1, delay)
            if on_retry is not None:
                on_retry(exc)
            if stop is not None:
                if stop.wait(delay):
                    raise
            else:
                sleep(delay)
            attempt += 1
