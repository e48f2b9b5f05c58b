"""Request deadlines, as TF Serving turns them into RunOptions.timeout_in_ms.

A request's deadline is a time.monotonic() instant (None: none). gRPC takes it from the call's
deadline (prediction_service_impl.cc, DeadlineToTimeoutMillis), REST from
--rest_api_timeout_in_ms when > 0 (http_rest_api_handler.cc). The transport hands it to
ServingApi, the manager binds it to the request's model calls, and every model run gets the time
left as its session's RunOptions.timeout_in_ms: TensorFlow cancels a run that outlives it
(DEADLINE_EXCEEDED, "Timed out waiting for notification"). The batcher fails a task whose deadline
passed while it was queued with batching_session.cc's RESOURCE_EXHAUSTED, without running it.

One difference on purpose: a deadline that has passed before the model runs fails the request at
once. TF Serving reads a timeout of 0 or less as "no timeout" and runs it, for a client who is
gone.
"""

from __future__ import annotations

import math
import time

import grpc

from serving.errors import ServingError

INT32_MAX_MS = 2**31 - 1  # gpr_time_to_millis saturates here: a longer deadline is no deadline
# batching_session.cc ProcessBatch, for tasks whose deadline passed in the batching queue.
QUEUE_TIMEOUT = "Run() timeout exceeded while waiting in batching queue"


def after(seconds: float | None, now: float | None = None) -> float | None:
    """The deadline `seconds` from now; None (no deadline) for None or beyond INT32_MAX ms."""
    if seconds is None or seconds * 1000 >= INT32_MAX_MS:
        return None
    return (time.monotonic() if now is None else now) + max(seconds, 0.0)


def timeout_ms(deadline: float | None, now: float) -> int:
    """RunOptions.timeout_in_ms for a run starting at `now`: 0 for none, else at least 1 (TF
    reads 0 as none). Call `check` first: a passed deadline has no timeout to give."""
    if deadline is None:
        return 0
    return min(max(math.ceil((deadline - now) * 1000), 1), INT32_MAX_MS)


def expired(deadline: float | None, now: float) -> bool:
    return deadline is not None and deadline <= now


def check(deadline: float | None, now: float) -> None:
    """Refuse to start a model run for a request whose deadline has passed."""
    if expired(deadline, now):
        late = (now - deadline) * 1000
        raise ServingError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"Deadline exceeded before the model ran: the request's deadline passed {late:.0f} "
            "ms earlier, so it was not run",
        )


def queue_timeout() -> ServingError:
    """A batched task whose deadline passed before its batch ran (batching_session.cc)."""
    return ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, QUEUE_TIMEOUT)
