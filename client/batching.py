"""Requests bounded by image count and by bytes: pure functions, no I/O.

gRPC refuses a message over the channel's limit (4 MB by default, on both the client and TF
Serving's side unless raised), so a batch is closed before its encoded PredictRequest would pass
`max_bytes`; one image that cannot fit even alone is reported, not sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

# A PredictRequest is the images plus framing: model spec, input key, tensor dtype and shape,
# and a few bytes of length prefix per image. These bounds are generous on purpose.
REQUEST_OVERHEAD = 1024
PER_IMAGE_OVERHEAD = 16


def request_bytes(sizes: Iterable[int]) -> int:
    """Upper bound of the encoded request size for images of these byte sizes."""
    return REQUEST_OVERHEAD + sum(size + PER_IMAGE_OVERHEAD for size in sizes)


def fits_alone(size: int, max_bytes: int) -> bool:
    return request_bytes([size]) <= max_bytes


def batches(items: Iterable[T], max_images: int, max_bytes: int, size=len) -> Iterator[list[T]]:
    """Consecutive runs of `items`: at most `max_images` each, encoded size at most `max_bytes`.

    An item too large to fit alone is yielded alone (the caller checks `fits_alone` first and
    turns it into an error record). Lazy: holds one batch at a time.
    """
    batch: list[T] = []
    total = REQUEST_OVERHEAD
    for item in items:
        cost = size(item) + PER_IMAGE_OVERHEAD
        if batch and (len(batch) >= max_images or total + cost > max_bytes):
            yield batch
            batch, total = [], REQUEST_OVERHEAD
        batch.append(item)
        total += cost
    if batch:
        yield batch


def bisect(batch: list[T]) -> tuple[list[T], list[T]]:
    """Halves of a batch the server refused, to find the bad image(s) in log2(n) rounds."""
    middle = len(batch) // 2
    return batch[:middle], batch[middle:]
