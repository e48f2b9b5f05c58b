"""Server-side batching: concurrent small requests merged into one session.run.

Mirrors TF Serving's BatchingSession on a SharedBatchScheduler queue (batching_session.cc,
shared_batch_scheduler.h): tasks with the same signature (fed and fetched tensor names) join the
open batch. While fewer than `num_batch_threads` batches run, the oldest batch that is closed
(a task did not fit), full (`max_batch_size`, or `max_execution_batch_size` with large batch
splitting), or whose first task has waited `batch_timeout_micros` starts; so while all are
busy, the open batch keeps growing. At most `max_enqueued_batches` wait. A merged batch is
padded up to the next `allowed_batch_sizes` entry with copies of its last task's first row,
run once, and split back. Each padded row costs a full row of model time: the padding
fraction is exported as a metric (serving/metrics.py).

Deadlines (serving/deadlines.py): a task whose deadline passed while it waited is taken out of
its batch before the batch is merged and fails with batching_session.cc's RESOURCE_EXHAUSTED
"Run() timeout exceeded while waiting in batching queue"; the rest run with the latest of their
deadlines as the run's timeout (none if one of them has none). TF Serving fails such tasks only
when every task of the batch has expired, else runs them with the batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import numpy as np

from serving import deadlines
from serving.config import BatchingOptions
from serving.errors import ServingError, invalid, unavailable

log = logging.getLogger(__name__)
Key = tuple[tuple[str, ...], tuple[str, ...]]
# the model call: (feeds, fetches, deadline) -> outputs
Run = Callable[[dict[str, np.ndarray], list[str], float | None], list[np.ndarray]]


@dataclass
class _Task:
    feeds: dict[str, np.ndarray]
    size: int
    deadline: float | None = None  # time.monotonic(); None: none
    done: bool = False
    result: list[np.ndarray] | None = None
    error: BaseException | None = None


@dataclass
class _Batch:
    key: Key
    created: float
    tasks: list[_Task] = field(default_factory=list)
    size: int = 0
    closed: bool = False


def padded_size(size: int, allowed: tuple[int, ...]) -> int:
    """The smallest allowed batch size >= size (TF Serving's RoundToLowestAllowedBatchSize)."""
    for candidate in allowed:
        if candidate >= size:
            return candidate
    return size


def merge(tasks: list[_Task], target: int) -> dict[str, np.ndarray]:
    """Concatenate the tasks' inputs along dimension 0, padded to `target` rows with copies of
    the last task's first row (what BatchingSession::MergeInputTensors pads with)."""
    merged = {}
    for name in tasks[0].feeds:
        parts = [t.feeds[name] for t in tasks]
        total = sum(len(p) for p in parts)
        if target > total:
            parts.append(np.repeat(parts[-1][:1], target - total, axis=0))
        merged[name] = np.concatenate(parts, axis=0)
    return merged


def split(outputs: list[np.ndarray], sizes: list[int]) -> list[list[np.ndarray]]:
    """Batched outputs -> one list per task (padding rows dropped)."""
    per_task: list[list[np.ndarray]] = [[] for _ in sizes]
    for output in outputs:
        start = 0
        for i, size in enumerate(sizes):
            per_task[i].append(output[start : start + size])
            start += size
    return per_task


class Batcher:
    """One scheduler per loaded version; `run(feeds, fetches)` blocks until its batch ran.

    Batches run on the threads of the requests waiting for them, at most `num_batch_threads`
    at once, oldest ready batch first: the behaviour of TF Serving's batch threads without
    handing each request to another thread and back (on a busy machine, waking a thread can
    take longer than the merge saves)."""

    def __init__(
        self,
        options: BatchingOptions,
        run: Run,
        on_batch: Callable[[int, int], None] | None = None,
    ):
        self.options = options
        self._run = run
        self._on_batch = on_batch or (lambda size, padding: None)
        self._queues: dict[Key, deque[_Batch]] = {}
        self._cond = threading.Condition()
        self._running = 0  # batches being run, at most num_batch_threads
        self._stopped = False

    def run(
        self, feeds: dict[str, np.ndarray], fetches: list[str], deadline: float | None = None
    ) -> list[np.ndarray]:
        sizes = {len(v) if np.ndim(v) else -1 for v in feeds.values()}
        if len(sizes) != 1 or -1 in sizes:
            return self._run(feeds, fetches, deadline)  # not batchable (scalars / ragged): alone
        size = sizes.pop()
        if size > self.options.max_batch_size:
            raise invalid(
                f"Task size {size} is larger than maximum input batch size "
                f"{self.options.max_batch_size}"
            )
        key: Key = (tuple(sorted(feeds)), tuple(fetches))
        with self._cond:
            if self._stopped:
                raise unavailable("Batch scheduler is stopped")
            deadlines.check(deadline, time.monotonic())
            queue = self._queues.setdefault(key, deque())
            tasks = self._enqueue(queue, key, feeds, size, deadline)
            self._cond.notify_all()
            self._work_until(tasks)
        for task in tasks:
            if task.error is not None:
                raise task.error
        if len(tasks) == 1:
            return tasks[0].result
        return [np.concatenate(parts) for parts in zip(*(t.result for t in tasks))]

    def _work_until(self, tasks: list[_Task]) -> None:
        """Run ready batches (anyone's) while a slot is free, until `tasks` are done. Called
        and returns with the lock held."""
        while not all(t.done for t in tasks):
            batch, wait = (None, None)
            if self._running < self.options.num_batch_threads:
                batch, wait = self._ready(time.monotonic())
            if batch is None:
                self._cond.wait(wait)
                continue
            self._queues[batch.key].popleft()
            batch.closed = True
            self._running += 1
            self._cond.release()
            try:
                self._process(batch)
            finally:
                self._cond.acquire()
                self._running -= 1
                self._cond.notify_all()

    def _enqueue(self, queue: deque[_Batch], key: Key, feeds, size: int, deadline) -> list[_Task]:
        """Add a request to the open batch (a new one when it does not fit), or, with
        enable_large_batch_splitting, as pieces: the open batch's room, then batches of
        max_execution_batch_size (shared_batch_scheduler.h's ScheduleWithoutOrEagerSplitImpl)."""
        options = self.options
        limit = options.execution_batch_size
        tail = queue[-1] if queue else None
        is_open = tail is not None and not tail.closed
        room = limit - tail.size if is_open else limit  # > 0: a full batch is closed
        full = "The batch scheduling queue to which this task was submitted is full"
        pieces = [size]
        if options.enable_large_batch_splitting:
            batches = len(queue) if is_open else len(queue) + 1  # TF counts the open batch
            if size > (options.max_enqueued_batches - batches) * limit + room:
                raise unavailable(full)
            if size > room:
                rest = size - room
                pieces = [room] + [min(limit, rest - i) for i in range(0, rest, limit)]
        elif (not is_open or size > room) and len(queue) >= options.max_enqueued_batches:
            raise unavailable(full)
        tasks, offset = [], 0
        for piece in pieces:
            tail = queue[-1] if queue else None
            if tail is None or tail.closed or tail.size + piece > limit:
                if tail is not None:
                    tail.closed = True
                tail = _Batch(key, time.monotonic())
                queue.append(tail)
            task = _Task({k: feeds[k][offset : offset + piece] for k in key[0]}, piece, deadline)
            tail.tasks.append(task)
            tail.size += piece
            if tail.size >= limit:
                tail.closed = True
            tasks.append(task)
            offset += piece
        return tasks

    def _ready(self, now: float) -> tuple[_Batch | None, float | None]:
        """The oldest batch that may run now, else the time until one may."""
        timeout = self.options.batch_timeout_micros / 1e6
        best, wait = None, None
        for queue in self._queues.values():
            if not queue:
                continue
            head = queue[0]
            due = head.created + timeout
            if head.closed or len(queue) > 1 or due <= now:
                if best is None or head.created < best.created:
                    best = head
            else:
                wait = due - now if wait is None else min(wait, due - now)
        return best, wait

    def _process(self, batch: _Batch) -> None:
        now = time.monotonic()
        tasks = []
        for task in batch.tasks:
            if deadlines.expired(task.deadline, now):
                task.error, task.done = deadlines.queue_timeout(), True
            else:
                tasks.append(task)
        if not tasks:
            return
        size = sum(t.size for t in tasks)
        target = padded_size(size, self.options.allowed_batch_sizes)
        times = [t.deadline for t in tasks]
        deadline = None if None in times else max(times)
        try:
            outputs = self._run(merge(tasks, target), list(batch.key[1]), deadline)
            self._on_batch(target, target - size)
            for task, result in zip(tasks, split(outputs, [t.size for t in tasks])):
                task.result = result
        except BaseException as exc:  # noqa: BLE001 - delivered to the waiting requests
            if len(tasks) > 1 and _is_invalid_input(exc):
                # One request's bad input must not fail its batch-mates (TF Serving fails the
                # whole batch; we rerun each request alone so only the bad one gets the error).
                for task in tasks:
                    try:
                        task.result = self._run(task.feeds, list(batch.key[1]), task.deadline)
                        self._on_batch(task.size, 0)
                    except BaseException as single:  # noqa: BLE001
                        task.error = single
            else:
                for task in tasks:
                    task.error = exc
        finally:
            for task in tasks:
                task.done = True  # their threads see it when the runner notifies

    def num_enqueued_tasks(self) -> int:
        """Tasks waiting in batches that have not started (BatchScheduler::NumEnqueuedTasks)."""
        with self._cond:
            return sum(len(batch.tasks) for queue in self._queues.values() for batch in queue)

    def stop(self) -> None:
        """Refuse new requests; what is queued is run by the requests waiting for it, now."""
        with self._cond:
            for queue in self._queues.values():
                for batch in queue:
                    batch.closed = True
            self._stopped = True
            self._cond.notify_all()


def _is_invalid_input(exc: BaseException) -> bool:
    if isinstance(exc, ServingError):
        return exc.code == grpc.StatusCode.INVALID_ARGUMENT
    return type(exc).__name__ == "InvalidArgumentError"
