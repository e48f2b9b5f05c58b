"""Server-side batching: concurrent small requests merged into one session.run.

Mirrors TF Serving's BatchingSession on a SharedBatchScheduler queue: tasks with the same
signature (fed and fetched tensor names) join the open batch until it reaches `max_batch_size`
or `batch_timeout_micros` passes; at most `max_enqueued_batches` wait; a merged batch is padded
up to the next `allowed_batch_sizes` entry by repeating its first row, run once, and split back.
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

from serving.config import BatchingOptions
from serving.errors import ServingError, invalid, unavailable

log = logging.getLogger(__name__)
Key = tuple[tuple[str, ...], tuple[str, ...]]


@dataclass
class _Task:
    feeds: dict[str, np.ndarray]
    size: int
    done: threading.Event = field(default_factory=threading.Event)
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
    """Concatenate the tasks' inputs along dimension 0, padded with copies of the first row."""
    merged = {}
    for name in tasks[0].feeds:
        parts = [t.feeds[name] for t in tasks]
        total = sum(len(p) for p in parts)
        if target > total:
            parts.append(np.repeat(parts[0][:1], target - total, axis=0))
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
    """One scheduler per loaded version; `run(feeds, fetches)` blocks until its batch ran."""

    def __init__(
        self,
        options: BatchingOptions,
        run: Callable[[dict[str, np.ndarray], list[str]], list[np.ndarray]],
        on_batch: Callable[[int, int], None] | None = None,
        name: str = "batcher",
    ):
        self.options = options
        self._run = run
        self._on_batch = on_batch or (lambda size, padding: None)
        self._queues: dict[Key, deque[_Batch]] = {}
        self._cond = threading.Condition()
        self._stopped = False
        self._threads = [
            threading.Thread(target=self._worker, name=f"{name}-{i}", daemon=True)
            for i in range(options.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def run(self, feeds: dict[str, np.ndarray], fetches: list[str]) -> list[np.ndarray]:
        sizes = {len(v) if np.ndim(v) else -1 for v in feeds.values()}
        if len(sizes) != 1 or -1 in sizes:
            return self._run(feeds, fetches)  # not batchable (scalars / ragged): run alone
        size = sizes.pop()
        if size > self.options.max_batch_size:
            raise invalid(
                f"Task size {size} is larger than maximum input batch size "
                f"{self.options.max_batch_size}"
            )
        key: Key = (tuple(sorted(feeds)), tuple(fetches))
        task = _Task({k: feeds[k] for k in key[0]}, size)
        with self._cond:
            if self._stopped:
                raise unavailable("Batch scheduler is stopped")
            queue = self._queues.setdefault(key, deque())
            tail = queue[-1] if queue else None
            if tail is None or tail.closed or tail.size + size > self.options.max_batch_size:
                if tail is not None:
                    tail.closed = True
                if len(queue) >= self.options.max_enqueued_batches:
                    raise unavailable(
                        "The batch scheduling queue to which this task was submitted is full"
                    )
                tail = _Batch(key, time.monotonic())
                queue.append(tail)
            tail.tasks.append(task)
            tail.size += size
            if tail.size >= self.options.max_batch_size:
                tail.closed = True
            self._cond.notify()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.result

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

    def _worker(self) -> None:
        while True:
            with self._cond:
                while True:
                    batch, wait = self._ready(time.monotonic())
                    if batch is not None:
                        self._queues[batch.key].popleft()
                        batch.closed = True
                        break
                    if self._stopped:
                        return
                    self._cond.wait(wait)
            self._process(batch)

    def _process(self, batch: _Batch) -> None:
        tasks = batch.tasks
        target = padded_size(batch.size, self.options.allowed_batch_sizes)
        try:
            outputs = self._run(merge(tasks, target), list(batch.key[1]))
            self._on_batch(target, target - batch.size)
            for task, result in zip(tasks, split(outputs, [t.size for t in tasks])):
                task.result = result
        except BaseException as exc:  # noqa: BLE001 - delivered to the waiting requests
            if len(tasks) > 1 and _is_invalid_input(exc):
                # One request's bad input must not fail its batch-mates (TF Serving fails the
                # whole batch; we rerun each request alone so only the bad one gets the error).
                for task in tasks:
                    try:
                        task.result = self._run(task.feeds, list(batch.key[1]))
                        self._on_batch(task.size, 0)
                    except BaseException as single:  # noqa: BLE001
                        task.error = single
            else:
                for task in tasks:
                    task.error = exc
        finally:
            for task in tasks:
                task.done.set()

    def stop(self) -> None:
        """Run what is queued, then end the worker threads."""
        with self._cond:
            for queue in self._queues.values():
                for batch in queue:
                    batch.closed = True
            self._stopped = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)


def _is_invalid_input(exc: BaseException) -> bool:
    if isinstance(exc, ServingError):
        return exc.code == grpc.StatusCode.INVALID_ARGUMENT
    return type(exc).__name__ == "InvalidArgumentError"
