"""Retries with exponential backoff and full jitter, only for errors that retrying can fix.

UNAVAILABLE (server restarting, queue full), DEADLINE_EXCEEDED (slow or overloaded) and
RESOURCE_EXHAUSTED (rate limited) are transient; anything else (a bad image, an unknown model)
fails the same way every time, so it is returned at once.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})


class RpcError(Exception):
    """A failed request, protocol-neutral: a gRPC status code name and the server's message."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.attempts = 1


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 10.0

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Full jitter (AWS architecture blog): uniform in [0, min(cap, base * 2**retry)]."""
        ceiling = min(self.max_backoff, self.initial_backoff * (2**retry))
        return (rng or random).uniform(0.0, ceiling)


def call_with_retry(
    fn: Callable[[int], T],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[RpcError], None] | None = None,
) -> T:
    """`fn(attempt)` until it succeeds, fails with a non-retryable code, or retries run out.

    The attempt number lets the transport pick the next target, so a retry after UNAVAILABLE
    goes to another server when there are several.
    """
    attempt = 0
    while True:
        try:
            return fn(attempt)
        except RpcError as exc:
            exc.attempts = attempt + 1
            if exc.code not in RETRYABLE or attempt >= policy.max_retries:
                raise
            delay = policy.delay(attempt)
            log.debug("%s; retry %d in %.3fs", exc, attempt + 1, delay)
            if on_retry is not None:
                on_retry(exc)
            sleep(delay)
            attempt += 1
