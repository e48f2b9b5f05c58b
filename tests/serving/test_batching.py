"""The batcher's contract: merge, pad to allowed sizes, split back, refuse when full."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from servertools import wait_for

from serving.batching import Batcher, merge, padded_size, split
from serving.config import BatchingOptions
from serving.errors import ServingError


def test_padding_merge_and_split():
    assert [padded_size(n, (2, 4, 8)) for n in (1, 2, 3, 5, 8)] == [2, 2, 4, 8, 8]
    assert padded_size(3, ()) == 3

    class T:
        def __init__(self, rows):
            self.feeds = {"x": np.array(rows)}

    merged = merge([T([1, 2]), T([3])], 4)
    assert merged["x"].tolist() == [1, 2, 3, 3]  # padded with the last task's first row
    parts = split([merged["x"] * 10], [2, 1])
    assert [p[0].tolist() for p in parts] == [[10, 20], [30]]


def test_concurrent_requests_share_one_call_and_get_their_own_rows():
    calls = []

    def model(feeds, fetches, deadline=None):
        calls.append(len(feeds["x"]))
        return [feeds["x"] * 2]

    options = BatchingOptions(
        max_batch_size=8, batch_timeout_micros=200_000, num_batch_threads=1,
        allowed_batch_sizes=(4, 8),
    )  # fmt: skip
    batcher = Batcher(options, model)
    results = {}

    def one(i):
        results[i] = batcher.run({"x": np.array([i, i])}, ["y"])[0].tolist()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.stop()
    assert results == {i: [2 * i, 2 * i] for i in range(3)}
    assert calls == [8]  # 3 requests x 2 rows = 6, padded to the allowed size 8


def test_oversized_task_and_full_queue():
    release = threading.Event()

    def slow(feeds, fetches, deadline=None):
        release.wait(10)
        return [feeds["x"]]

    options = BatchingOptions(max_batch_size=2, max_enqueued_batches=1, num_batch_threads=1)
    batcher = Batcher(options, slow)
    with pytest.raises(ServingError) as info:
        batcher.run({"x": np.arange(3)}, ["y"])
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "larger than maximum input batch size 2" in info.value.message
    threads = [
        threading.Thread(target=batcher.run, args=({"x": np.arange(2)}, ["y"])) for _ in range(2)
    ]
    threads[0].start()
    time.sleep(0.3)  # first batch running (blocked), the queue is empty again
    threads[1].start()
    time.sleep(0.3)  # second batch enqueued: the queue is at max_enqueued_batches
    with pytest.raises(ServingError) as info:
        batcher.run({"x": np.arange(2)}, ["y"])
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert "queue to which this task was submitted is full" in info.value.message
    release.set()
    for t in threads:
        t.join()
    batcher.stop()


def doubling(calls: list[int]):
    def model(feeds, fetches, deadline=None):
        calls.append(len(feeds["x"]))
        return [feeds["x"] * 2]

    return model


SPLITTING = {"enable_large_batch_splitting": True, "max_execution_batch_size": 2}


def test_large_batch_splitting_runs_a_request_in_pieces_and_joins_them():
    calls: list[int] = []
    options = BatchingOptions(
        max_batch_size=8, batch_timeout_micros=50_000, num_batch_threads=1, **SPLITTING
    )
    batcher = Batcher(options, doubling(calls))
    assert batcher.run({"x": np.arange(5)}, ["y"])[0].tolist() == [0, 2, 4, 6, 8]
    assert calls == [2, 2, 1]  # max_execution_batch_size rows a call, in order
    with pytest.raises(ServingError, match="larger than maximum input batch size 8"):
        batcher.run({"x": np.arange(9)}, ["y"])  # max_batch_size still bounds a request
    batcher.stop()


def test_a_split_request_first_fills_the_open_batch():
    calls: list[int] = []
    options = BatchingOptions(
        max_batch_size=8, batch_timeout_micros=500_000, num_batch_threads=1, **SPLITTING
    )
    batcher = Batcher(options, doubling(calls))
    alone = {}
    waiting = threading.Thread(
        target=lambda: alone.update(y=batcher.run({"x": np.array([7])}, ["y"])[0].tolist())
    )
    waiting.start()
    time.sleep(0.1)  # the 1-row request waits in the open batch (timeout 0.5 s)
    assert batcher.run({"x": np.array([1, 2, 3])}, ["y"])[0].tolist() == [2, 4, 6]
    waiting.join()
    assert alone["y"] == [14]
    assert calls == [2, 2]  # [7, 1] filled the open batch; [2, 3] the next one
    batcher.stop()


def test_splitting_refuses_a_request_the_queue_has_no_room_for():
    release = threading.Event()

    def slow(feeds, fetches, deadline=None):
        release.wait(10)
        return [feeds["x"]]

    options = BatchingOptions(
        max_batch_size=8, max_enqueued_batches=2, num_batch_threads=1, **SPLITTING
    )
    batcher = Batcher(options, slow)
    with pytest.raises(ServingError) as info:
        batcher.run({"x": np.arange(5)}, ["y"])  # room: 2 batches x 2 rows
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert "queue to which this task was submitted is full" in info.value.message
    release.set()
    assert batcher.run({"x": np.arange(4)}, ["y"])[0].tolist() == [0, 1, 2, 3]
    batcher.stop()


def test_tasks_whose_deadline_passed_in_the_queue_are_dropped_before_the_run():
    """Deadlines certain by construction: one passed before the batch can run (the batch runs
    when full, after the test saw the task queued and waited its deadline out), one far off."""
    calls: list[tuple[list[int], float | None]] = []

    def model(feeds, fetches, deadline=None):
        calls.append((feeds["x"].tolist(), deadline))
        return [feeds["x"] * 2]

    options = BatchingOptions(
        max_batch_size=4, batch_timeout_micros=600_000_000, num_batch_threads=1,
        allowed_batch_sizes=(2, 4),
    )  # fmt: skip
    batcher = Batcher(options, model)
    results: dict[str, object] = {}

    def one(name, rows, deadline):
        try:
            results[name] = batcher.run({"x": np.array(rows)}, ["y"], deadline)[0].tolist()
        except ServingError as exc:
            results[name] = exc

    soon = time.monotonic() + 1.0  # ample for a thread to queue its task
    late = threading.Thread(target=one, args=("late", [1, 2], soon))
    late.start()
    wait_for(lambda: batcher.num_enqueued_tasks() == 1, what="the task queued")
    time.sleep(max(soon - time.monotonic(), 0) + 0.01)
    far = time.monotonic() + 600
    one("filler", [3, 4], far)  # fills the batch: it runs now, without the late task
    late.join()
    batcher.stop()
    assert results["filler"] == [6, 8]
    error = results["late"]
    assert isinstance(error, ServingError) and error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.message == "Run() timeout exceeded while waiting in batching queue"
    assert calls == [([3, 4], far)]  # only the live rows, padded to 2 not 4; its deadline


def test_a_batch_runs_with_the_latest_deadline_or_none():
    seen: list[float | None] = []

    def model(feeds, fetches, deadline=None):
        seen.append(deadline)
        return [feeds["x"]]

    options = BatchingOptions(max_batch_size=2, batch_timeout_micros=600_000_000)
    batcher = Batcher(options, model)
    now = time.monotonic()
    for deadlines in ([now + 100, now + 200], [now + 100, None]):
        threads = [
            threading.Thread(target=batcher.run, args=({"x": np.array([i])}, ["y"], d))
            for i, d in enumerate(deadlines)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    batcher.stop()
    assert seen == [now + 200, None]


def test_a_passed_deadline_is_refused_before_it_is_queued():
    batcher = Batcher(BatchingOptions(max_batch_size=2), doubling([]))
    with pytest.raises(ServingError) as info:
        batcher.run({"x": np.arange(2)}, ["y"], time.monotonic())
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert batcher.num_enqueued_tasks() == 0
    batcher.stop()
