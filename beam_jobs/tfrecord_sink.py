"""TFRecord shards gzip-compressed at a chosen level, written through Beam's FileBasedSink.

Beam's WriteToTFRecord compresses at zlib's default level 6. Backbone features are floats that
barely compress: on MobileNetV2 features level 1 is 2.4x faster than level 6 for 6% more bytes
(88 vs 211 us per 5 KB row, 57% vs 54% of the raw size), and the compression ran inline at about
a quarter of the bottleneck job's per-image time. The files are ordinary gzip TFRecords: any
reader (tf.data with compression_type="GZIP", Beam's ReadFromTFRecord) reads them.
"""

from __future__ import annotations

import gzip
import struct

import google_crc32c
from apache_beam import coders
from apache_beam.io import filebasedsink
from apache_beam.io.filesystem import CompressionTypes

DEFAULT_LEVEL = 1


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_frame(data: bytes) -> bytes:
    """One TFRecord: length, masked CRC-32C of the length, data, masked CRC-32C of the data."""
    length = struct.pack("<Q", len(data))
    return (
        length
        + struct.pack("<I", _masked_crc(length))
        + data
        + struct.pack("<I", _masked_crc(data))
    )


class _GzipWriter:
    """A gzip stream over the sink's raw file; closing it closes both."""

    def __init__(self, raw, level: int):
        self._raw = raw
        self._gzip = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=level, mtime=0)

    def write(self, data: bytes) -> None:
        self._gzip.write(data)

    def close(self) -> None:
        self._gzip.close()
        self._raw.close()


class GzipTFRecordSink(filebasedsink.FileBasedSink):
    def __init__(
        self,
        file_path_prefix: str,
        file_name_suffix: str = "",
        num_shards: int = 0,
        level: int = DEFAULT_LEVEL,
    ):
        super().__init__(
            file_path_prefix,
            coder=coders.BytesCoder(),
            file_name_suffix=file_name_suffix,
            num_shards=num_shards,
            shard_name_template=None,
            mime_type="application/octet-stream",
            compression_type=CompressionTypes.UNCOMPRESSED,
        )
        self.level = level

    def open(self, temp_path):
        return _GzipWriter(super().open(temp_path), self.level)

    def write_encoded_record(self, file_handle, encoded_value: bytes) -> None:
        file_handle.write(tfrecord_frame(encoded_value))
