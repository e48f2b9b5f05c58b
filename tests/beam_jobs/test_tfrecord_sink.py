import collections
import gc
import gzip
import io
import threading
import time
import zlib

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.io import filebasedsink
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs import tfrecord_sink
from beam_jobs.tfrecord_sink import GzipTFRecordSink, tfrecord_frame


def test_frame_is_byte_identical_to_tensorflows_writer(tmp_path):
    records = [b"", b"abc", bytes(range(256)) * 40]
    path = str(tmp_path / "tf.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
    assert b"".join(tfrecord_frame(r) for r in records) == (tmp_path / "tf.tfrecord").read_bytes()


def test_sharded_gzip_output_reads_back_with_tf_data(tmp_path):
    records = [f"record {i}".encode() * (i % 7 + 1) for i in range(500)]
    with beam.Pipeline() as p:
        _ = (
            p
            | beam.Create(records)
            | beam.io.Write(GzipTFRecordSink(str(tmp_path / "out"), ".tfrecord.gz", num_shards=3))
        )
    shards = sorted(tmp_path.glob("out-*-of-00003.tfrecord.gz"))
    assert len(shards) == 3
    for shard in shards:
        gzip.decompress(shard.read_bytes())  # a complete gzip stream each
    read = tf.data.TFRecordDataset([str(s) for s in shards], compression_type="GZIP")
    assert sorted(r.numpy() for r in read) == sorted(records)


# The sink's own writer: framing, compression and writes on a background thread.


def feature_rows(n: int, seed: int = 0) -> list[bytes]:
    """~5 KB rows like backbone features after a ReLU: float32, about half of them zero."""
    rng = np.random.default_rng(seed)
    return [
        np.maximum(rng.normal(size=int(rng.integers(1200, 1400))), 0).astype(np.float32).tobytes()
        for _ in range(n)
    ]


def tensorflow_framing(tmp_path, records) -> bytes:
    path = tmp_path / "reference.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:  # uncompressed
        for record in records:
            writer.write(record)
    return path.read_bytes()


def sink_threads() -> set[threading.Thread]:
    """The sink's live worker threads."""
    return {t for t in threading.enumerate() if t.name.startswith("GzipTFRecordSink")}


class MemoryFile(io.BytesIO):
    """An in-memory raw file that keeps its bytes after close()."""

    def close(self):
        self.data = self.getvalue()
        super().close()


class CountingRaw:
    """A raw file handle that counts the writes reaching it."""

    def __init__(self, raw):
        self.raw = raw
        self.writes = 0

    def write(self, data):
        self.writes += 1
        self.raw.write(data)

    def close(self):
        self.raw.close()


def write_with_sink(sink, path, records, monkeypatch=None) -> int:
    """Writes `records` through the sink's own open/write/close; returns the raw writes."""
    raws = []
    if monkeypatch is not None:
        real_open = filebasedsink.FileBasedSink.open
        monkeypatch.setattr(
            filebasedsink.FileBasedSink,
            "open",
            lambda self, p: raws.append(CountingRaw(real_open(self, p))) or raws[-1],
        )
    handle = sink.open(str(path))
    for record in records:
        sink.write_encoded_record(handle, record)
    sink.close(handle)
    return raws[0].writes if raws else -1


@pytest.mark.parametrize("n", [0, 1, 3000])
def test_gzip_stream_is_tensorflows_framing_in_one_member(tmp_path, monkeypatch, n):
    records = feature_rows(n)
    path = tmp_path / "out.tfrecord.gz"
    before = sink_threads()
    raw_writes = write_with_sink(
        GzipTFRecordSink(str(tmp_path / "out")), path, records, monkeypatch
    )
    assert sink_threads() <= before  # the worker is gone once close() returns
    data = path.read_bytes()
    expected = tensorflow_framing(tmp_path, records)

    assert data[:3] == b"\x1f\x8b\x08" and data[4:8] == b"\0\0\0\0"  # gzip, deflate, mtime 0
    member = zlib.decompressobj(31)
    assert member.decompress(data) == expected
    assert member.eof and member.unused_data == b""  # exactly one complete member
    assert gzip.decompress(data) == expected
    # Chunked compression is byte-identical to one zlib pass, level 1 + Z_RLE by default.
    one_pass = zlib.compressobj(1, zlib.DEFLATED, 31, zlib.DEF_MEM_LEVEL, zlib.Z_RLE)
    assert data == one_pass.compress(expected) + one_pass.flush()
    if n == 3000:  # ~15 MB: many 1 MiB chunks went through the worker
        assert raw_writes > len(expected) // tfrecord_sink.CHUNK_BYTES - 2
    read = tf.data.TFRecordDataset([str(path)], compression_type="GZIP")
    assert [r.numpy() for r in read] == records


def test_level_and_strategy_are_options(tmp_path):
    records = feature_rows(300, seed=1)
    path = tmp_path / "l6.tfrecord.gz"
    write_with_sink(
        GzipTFRecordSink(str(tmp_path / "x"), level=6, strategy=zlib.Z_DEFAULT_STRATEGY),
        path,
        records,
    )
    one_pass = zlib.compressobj(6, zlib.DEFLATED, 31, zlib.DEF_MEM_LEVEL, zlib.Z_DEFAULT_STRATEGY)
    assert (
        path.read_bytes()
        == one_pass.compress(b"".join(map(tfrecord_frame, records))) + one_pass.flush()
    )
    with pytest.raises(ValueError):
        GzipTFRecordSink(str(tmp_path / "x"), level=12)
    with pytest.raises(ValueError):
        GzipTFRecordSink(str(tmp_path / "x"), strategy=99)


class FailingRaw:
    """A raw file whose writes fail (a full disk, a lost connection)."""

    def __init__(self, fail_close=False):
        self.write_called = threading.Event()
        self.closed = False
        self.fail_close = fail_close

    def write(self, data):
        self.write_called.set()
        raise OSError(28, "No space left on device")

    def close(self):
        self.closed = True
        if self.fail_close:
            raise OSError(5, "Input/output error")


def open_sink_on(monkeypatch, tmp_path, raw):
    monkeypatch.setattr(filebasedsink.FileBasedSink, "open", lambda self, path: raw)
    sink = GzipTFRecordSink(str(tmp_path / "out"))
    return sink, sink.open(str(tmp_path / "out.tfrecord.gz"))


def test_a_failed_write_fails_close_and_leaks_no_thread(tmp_path, monkeypatch):
    raw = FailingRaw()
    sink, handle = open_sink_on(monkeypatch, tmp_path, raw)
    before = sink_threads()
    for record in feature_rows(10):  # less than a chunk: only close() hands it to the worker
        sink.write_encoded_record(handle, record)
    with pytest.raises(OSError, match="No space left"):
        sink.close(handle)
    assert raw.write_called.is_set() and raw.closed
    assert not sink_threads() - before
    with pytest.raises(OSError):  # closing again does not pretend success
        sink.close(handle)


def test_a_failed_write_surfaces_at_the_next_write(tmp_path, monkeypatch):
    raw = FailingRaw()
    sink, handle = open_sink_on(monkeypatch, tmp_path, raw)
    before = sink_threads()
    record = b"x" * 4096
    for _ in range(-(-tfrecord_sink.CHUNK_BYTES // (len(record) + 16))):
        sink.write_encoded_record(handle, record)  # exactly one chunk: the last one hands it over
    assert raw.write_called.wait(10)  # the worker writes it and fails
    deadline = time.monotonic() + 10
    with pytest.raises(OSError, match="No space left"):
        # The worker's error is raised by a write, well before the next chunk would be full.
        for _ in range(100):
            sink.write_encoded_record(handle, b"tiny")
            time.sleep(0.01)
            assert time.monotonic() < deadline
    with pytest.raises(OSError, match="No space left"):
        sink.close(handle)
    assert raw.closed
    assert not sink_threads() - before


def test_a_failed_raw_close_fails_close_and_leaks_no_thread(tmp_path, monkeypatch):
    class CloseFails(CountingRaw):
        def close(self):
            raise OSError(5, "Input/output error")

    raw = CloseFails(MemoryFile())
    monkeypatch.setattr(filebasedsink.FileBasedSink, "open", lambda self, path: raw)
    sink = GzipTFRecordSink(str(tmp_path / "out"))
    before = sink_threads()
    handle = sink.open("unused")
    sink.write_encoded_record(handle, b"record")
    with pytest.raises(OSError, match="Input/output"):
        sink.close(handle)
    assert raw.writes == 1
    assert not sink_threads() - before


def test_after_a_failed_chunk_nothing_more_is_written_and_close_still_fails():
    class FirstWriteFails(CountingRaw):
        def __init__(self, raw):
            super().__init__(raw)
            self.go, self.failed = threading.Event(), False

        def write(self, data):
            if not self.failed:
                self.failed = True
                assert self.go.wait(30)
                raise OSError(28, "No space left on device")
            super().write(data)

    raw = FirstWriteFails(MemoryFile())
    writer = tfrecord_sink.GzipTFRecordWriter(raw, chunk_bytes=64 << 10, max_in_flight=2)
    record = np.random.default_rng(0).bytes(20_000)  # incompressible: every chunk has output
    for _ in range(8):  # four records a chunk: chunk 1 held up in the failing write, 2 queued
        writer.write_record(record)
    threading.Timer(0.2, raw.go.set).start()
    with pytest.raises(OSError, match="No space left"):
        for _ in range(4):
            writer.write_record(record)  # chunk 3 waits for chunk 1: its error surfaces here
    with pytest.raises(OSError, match="No space left"):
        writer.close()  # the error was raised once already: close() must not report success
    assert raw.writes == 0  # chunk 2 was not written after the hole chunk 1 left
    assert raw.raw.closed


def test_memory_stays_bounded_while_the_worker_is_slow():
    chunk_bytes, max_in_flight, record = 64 << 10, 2, b"r" * 1000

    class SlowRaw(CountingRaw):
        def __init__(self, raw):
            super().__init__(raw)
            self.go = threading.Event()

        def write(self, data):
            assert self.go.wait(30)
            super().write(data)

    raw = SlowRaw(MemoryFile())
    writer = tfrecord_sink.GzipTFRecordWriter(
        raw, chunk_bytes=chunk_bytes, max_in_flight=max_in_flight
    )
    produced = 0
    total = 40 * chunk_bytes // len(record)

    def produce():
        nonlocal produced
        for _ in range(total):
            writer.write_record(record)
            produced += 1

    producer = threading.Thread(target=produce)
    producer.start()
    time.sleep(0.5)
    assert producer.is_alive()  # blocked: the worker has not written anything yet
    # One chunk in the blocked write, the rest queued, one being filled: no more.
    assert produced * (len(record) + 16) <= (max_in_flight + 1) * chunk_bytes + len(record) + 16
    raw.go.set()
    producer.join(30)
    assert not producer.is_alive() and produced == total
    writer.close()
    assert gzip.decompress(raw.raw.data) == tfrecord_frame(record) * total


def test_an_abandoned_writer_does_not_keep_its_thread():
    before = sink_threads()
    writer = tfrecord_sink.GzipTFRecordWriter(MemoryFile(), chunk_bytes=1 << 10)
    for _ in range(10):
        writer.write_record(b"x" * 500)
    started = sink_threads() - before
    assert started  # the worker started
    del writer  # a failed bundle never calls close()
    gc.collect()  # once: a writer kept only by a reference cycle is abandoned too
    # The worker ends when it sees its executor gone. Joined, not polled against a clock: on a
    # loaded machine one gc.collect() in this TensorFlow process took up to 9 s, holding the GIL
    # (the worker can only end in the sleeps between collections), and counted against the
    # deadline.
    for thread in started:
        thread.join(timeout=60)
        assert not thread.is_alive()


def test_beam_pipeline_writes_two_shards_holding_exactly_the_inputs(tmp_path):
    rows = feature_rows(600, seed=2)
    records = rows + rows[:50] + [b""]  # duplicates and an empty record: a multiset
    with test_pipeline.TestPipeline(runner="DirectRunner") as p:
        _ = (
            p
            | beam.Create(records)
            | beam.io.Write(GzipTFRecordSink(str(tmp_path / "out"), ".tfrecord.gz", num_shards=2))
        )
    shards = sorted(tmp_path.glob("out-*-of-00002.tfrecord.gz"))
    assert len(shards) == 2
    read = tf.data.TFRecordDataset([str(s) for s in shards], compression_type="GZIP")
    assert collections.Counter(r.numpy() for r in read) == collections.Counter(records)
    with test_pipeline.TestPipeline(runner="DirectRunner") as p:
        read_back = p | beam.io.ReadFromTFRecord(str(tmp_path / "out-*-of-00002.tfrecord.gz"))
        assert_that(read_back, equal_to(records))
