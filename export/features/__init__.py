"""Bottleneck features: in-process extraction, the TFRecord row format the Beam job writes, and the
sources the trainer reads (in memory or TFRecords)."""
