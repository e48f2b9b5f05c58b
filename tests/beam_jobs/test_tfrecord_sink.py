import gzip

import apache_beam as beam
import tensorflow as tf

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
