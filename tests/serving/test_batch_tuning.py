"""The tuner's choice from measured tables (serving/batch_tuning.py), on given numbers."""

from __future__ import annotations

import pytest

from serving.batch_tuning import Point, TargetUnreachable, allowed_sizes, choose, fit_costs


def point(batch: int, threads: int, p50: float, p99: float | None = None) -> Point:
    """A closed-loop point: `threads` clients, each request taking p50 ms."""
    return Point(batch, threads, 100, 1.0, p50, p99 or p50 * 1.2, threads * batch / p50 * 1000)


def cpu_table(per_batch, per_image, sizes=(1, 2, 4, 8, 16, 32), threads=(1, 2, 4), extra=((1, 8),)):
    """Two cores: two runs at once cost the same each, more share the cores. `extra`: (batch,
    clients) points beyond the grid, such as single images with the server full."""
    grid = [(b, k) for k in threads for b in sizes] + list(extra)
    return [point(b, k, (per_batch + per_image * b) * max(1.0, k / 2)) for b, k in grid]


def test_the_fastest_config_with_the_server_full():
    # 20 ms a run + 2 ms an image; 8 requests in flight.
    choice = choose(cpu_table(20, 2), p99_ms=1000, in_flight=8)
    # 2 threads gather 8 / 3 requests a batch: 2 x 2.67 / 25.3 ms = 211 images/s, more than
    # 1 thread (4 a batch: 143/s) or 4 (1.6 a batch, sharing the cores: 138/s).
    assert (choice.num_batch_threads, choice.expected_batch) == (2, pytest.approx(8 / 3))
    assert choice.max_batch_size == 4  # larger caps gather no more, and only add latency
    assert choice.predicted_images_per_s == pytest.approx(2 * (8 / 3) / (20 + 16 / 3) * 1000)
    assert choice.unbatched_images_per_s == pytest.approx(8 / 88 * 1000)  # 1 image, 8 at once
    assert choice.vs_off[1] == choice.vs_off[2] == 1.0  # as many threads as requests: alone
    assert choice.vs_off[8] == pytest.approx(choice.predicted_images_per_s / (8 / 88 * 1000))
    # With 64 in flight, batches fill up to the cap the latency target allows.
    points = cpu_table(20, 2, extra=((1, 64),))
    wide = choose(points, p99_ms=1000, in_flight=64)
    assert (wide.num_batch_threads, wide.max_batch_size) == (2, 32)
    assert wide.expected_batch == pytest.approx(64 / 3)
    assert wide.predicted_p99_ms == pytest.approx(2 * 1.2 * (20 + 2 * 32))
    # With 8 in flight no batch holds more than 8 rows, whatever the cap: p99 of 8 rows.
    capped = choose(cpu_table(20, 2), p99_ms=1000, in_flight=8, slack=1.0)
    assert capped.predicted_p99_ms == pytest.approx(2 * 1.2 * (20 + 2 * 4))  # B=4 chosen
    only_large = [p for p in cpu_table(20, 2) if p.batch in (1, 32)]
    large = choose(only_large, p99_ms=1000, in_flight=8)
    assert large.max_batch_size == 32
    assert large.predicted_p99_ms == pytest.approx(2 * 1.2 * (20 + 2 * 8))
    # Twice p99(32 images, 2 threads) is over 200 ms; 16 images fit.
    tight = choose(points, p99_ms=200, in_flight=64)
    assert (tight.num_batch_threads, tight.max_batch_size) == (2, 16)
    assert tight.predicted_p99_ms == pytest.approx(2 * 1.2 * (20 + 2 * 16))


def test_a_config_slower_than_batching_off_with_few_clients_is_left_out():
    # One thread runs batches of 4 in the time of one image: 200 images/s with the server full,
    # against 160 for two threads. But with 2 clients one thread runs them one after the other
    # (1 a batch: 50/s) where batching off runs both at once (100/s).
    points = [point(1, k, p50) for k, p50 in ((1, 20), (2, 20), (4, 40), (8, 80))]
    points += [point(2, 1, 20), point(4, 1, 20), point(2, 2, 30), point(4, 2, 40)]
    choice = choose(points, p99_ms=1000, in_flight=8)
    assert (choice.num_batch_threads, choice.max_batch_size) == (2, 4)
    assert choice.predicted_images_per_s == pytest.approx(160)  # p50(2.67 images) = 33.3 ms
    assert min(choice.vs_off.values()) >= 1
    unguarded = choose(points, p99_ms=1000, in_flight=8, slack=1.0)
    assert (unguarded.num_batch_threads, unguarded.max_batch_size) == (1, 4)
    assert unguarded.vs_off[2] == pytest.approx(0.5)


def test_the_timeout_is_the_fitted_cost_of_a_run_within_the_latency_slack():
    assert fit_costs({b: point(b, 1, 20 + 2 * b) for b in (1, 2, 4, 8)}) == pytest.approx((20, 2))
    loose = choose(cpu_table(20, 2), p99_ms=1000, in_flight=8)
    assert loose.batch_timeout_micros == 20_000  # waiting a run's fixed cost at most doubles it
    assert loose.per_batch_ms == pytest.approx(20) and loose.per_image_ms == pytest.approx(2)
    # No fixed cost per run (time proportional to images): nothing to wait for.
    assert choose(cpu_table(0, 10), p99_ms=1000, in_flight=8).batch_timeout_micros == 0
    # A run mostly per-image work (a CPU model): a lone request is not held back either.
    per_image = choose(cpu_table(5, 20), p99_ms=1000, in_flight=8)
    assert per_image.batch_timeout_micros == 0 and per_image.per_batch_ms == pytest.approx(5)
    # Little slack: the timeout shrinks to what the target leaves.
    p99 = 1.2 * 28  # 4 images on 2 threads
    tight = choose(cpu_table(20, 2), p99_ms=2 * p99 + 5, in_flight=8)
    assert (tight.max_batch_size, tight.batch_timeout_micros) == (4, 5000)


def test_allowed_sizes_bound_the_padding_cost():
    linear = allowed_sizes(lambda b: 10.0 * b, 32, 0.1)
    assert linear == ()  # every size needed: no allowed_batch_sizes, no padding
    flat = allowed_sizes(lambda b: 100.0 + 0.1 * b, 32, 0.1)
    assert flat == (32,)  # padding 1 -> 32 costs 3 %: one size
    mixed = allowed_sizes(lambda b: 100.0 + b, 32, 0.1)
    assert mixed == (8, 19, 32)
    for low, high in zip((0, *mixed), mixed):  # a batch of n is padded to the next size
        for n in range(low + 1, high + 1):
            assert 100.0 + high <= 1.1 * (100.0 + n)
    assert allowed_sizes(lambda b: 20.0 + b, 32, 0.1) == ()  # 9 sizes: more than 1, 2, ... 32
    assert allowed_sizes(lambda b: 20.0 + b, 1, 0.1) == ()  # batches of 1: nothing to pad


def test_requests_of_several_images_fill_batches_faster():
    points = cpu_table(20, 2, extra=((4, 8),))
    choice = choose(points, p99_ms=1000, in_flight=8, request_images=4)
    # 8 requests x 4 images in flight: 2 threads gather 32 / 3 rows a batch.
    assert (choice.num_batch_threads, choice.max_batch_size) == (2, 16)
    assert choice.expected_batch == pytest.approx(32 / 3)
    assert choice.unbatched_images_per_s == pytest.approx(8 * 4 / 112 * 1000)


def test_a_target_out_of_reach_names_the_closest():
    with pytest.raises(TargetUnreachable, match=r"meets p99 10 ms: the lowest predicted p99 is 53"):
        choose(cpu_table(20, 2), p99_ms=10, in_flight=8)
    with pytest.raises(TargetUnreachable, match="no point for 1-image requests at 16 clients"):
        choose(cpu_table(20, 2), p99_ms=1000, in_flight=16)
