"""Beam building blocks that know nothing of images or features: per-bundle chunking and
de-duplication, and a combiner for a sorted set. Kept apart so the job's own modules read as the
job, and so another pipeline can reuse them."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows


class Chunk(beam.DoFn):
    """Elements -> lists of up to `size` of them (per bundle). Reshuffling file names one by one
    cost ~40 us a file on the DirectRunner, as much as a small backbone's batch share."""

    def __init__(self, size: int):
        self.size = size
        self._chunk: list = []

    def start_bundle(self):
        self._chunk = []

    def process(self, element):
        self._chunk.append(element)
        if len(self._chunk) >= self.size:
            chunk, self._chunk = self._chunk, []
            yield chunk

    def finish_bundle(self):
        if self._chunk:
            yield GlobalWindows.windowed_value(self._chunk)


class DistinctPerBundle(beam.DoFn):
    """The distinct non-empty values of fn(element), once per bundle: a class name per class and
    bundle rather than per file, where a per-element Distinct would cost a step per file."""

    def __init__(self, fn):
        self.fn = fn
        self._seen: set = set()

    def start_bundle(self):
        self._seen = set()

    def process(self, element):
        value = self.fn(element)
        if value:
            self._seen.add(value)

    def finish_bundle(self):
        for value in sorted(self._seen):
            yield GlobalWindows.windowed_value(value)


class SortedUnion(beam.CombineFn):
    """The sorted distinct values of all inputs: the class names, as one element."""

    def create_accumulator(self):
        return set()

    def add_input(self, accumulator, value):
        accumulator.add(value)
        return accumulator

    def merge_accumulators(self, accumulators):
        return set().union(*accumulators)

    def extract_output(self, accumulator):
        return sorted(accumulator)
