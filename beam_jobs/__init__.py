"""Apache Beam pipelines: bottlenecks into TFRecords, batch inference (see issue 4)."""
