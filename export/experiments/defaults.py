"""Defaults of the experiments that their command lines show in `--help` (no TensorFlow here)."""

MAX_PER_SPLIT = (
    5000  # report: feature rows read per split (bounds memory for Beam-sized bottlenecks)
)
