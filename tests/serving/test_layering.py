"""serving/ stands alone: it imports nothing from export/, and what it shares with the exporter
(file names, TensorFlow's tag and signature names) is checked equal here, where both may be read."""

from __future__ import annotations

import tensorflow as tf

from export import contract
from serving import inference, loader


def test_warmup_file_is_the_name_the_exporter_writes():
    assert loader.WARMUP_FILE == contract.WARMUP_FILE


def test_tensorflow_constants_are_the_names_the_exporter_writes():
    assert tf.saved_model.SERVING == contract.SERVE_TAG
    assert inference.DEFAULT_SIGNATURE == contract.SERVING_DEFAULT
    assert inference.PREDICT_METHOD == contract.PREDICT_METHOD
    assert inference.CLASSIFY_METHOD == contract.CLASSIFY_METHOD
