"""What caching bottlenecks buys: a head epoch on cached features vs an epoch through the backbone.

cached_head_epoch_vs_e2e   seconds of one head epoch on the Beam job's TFRecord bottlenecks
                           ÷ seconds of one epoch of the same head trained end to end on the
                           image files through the frozen backbone (decode, resize, backbone
                           forward every epoch: what a user does without the cache). Goal ≤ 1/50.

Both train the same head (build_head, softmax, Adam) on the training split of the digits, batch
size 32, no validation pass, for EPOCHS epochs; an epoch's time is the median of epochs 2..EPOCHS
(the first one includes tracing). The backbone is the demo's EfficientNet-Lite0 at 224 with its
ImageNet weights, so the end-to-end epoch costs what it would for a user.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from beam_bench import DEMO_FLAGS, beam  # noqa: E402
from common import record  # noqa: E402

EPOCHS = 4
BATCH = 32


class EpochTimer:
    """A Keras callback (built lazily: keras is imported after the arguments are parsed)."""

    def __new__(cls):
        import keras

        class _Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.seconds: list[float] = []

            def on_epoch_begin(self, epoch, logs=None):
                self._started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self._started)

        return _Timer()


def steady_epoch(seconds: list[float]) -> float:
    """Median of the epochs after the first (which also traces the graphs)."""
    return statistics.median(seconds[1:])


def fit(model, dataset, epochs: int) -> list[float]:
    timer = EpochTimer()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(dataset, epochs=epochs, callbacks=[timer], verbose=0)
    return timer.seconds


def cached_epochs(bottlenecks: Path, epochs: int) -> tuple[list[float], int]:
    """xfer-train's own datasets (epoch_datasets) over the Beam job's TFRecords."""
    from export.data.dataset import TRAIN
    from export.features.sources import TFRecordFeatures
    from export.model.heads import build_head
    from export.training.evaluation import split_dataset
    from export.training.train import epoch_datasets

    source = TFRecordFeatures(str(bottlenecks))
    rows = sum(1 for _ in split_dataset(source, TRAIN))
    train, _ = epoch_datasets(source, BATCH, seed=0)
    head = build_head(source.feature_dim, len(source.labels), "softmax")
    return fit(head, train, epochs), rows


def end_to_end_epochs(images: Path, epochs: int) -> tuple[list[float], int]:
    """The training split's files → the contract's preprocessing → frozen backbone → head."""
    import keras
    import tensorflow as tf

    from export.data.dataset import TRAIN, scan
    from export.model.backbones import BackboneConfig, build_feature_extractor
    from export.model.heads import build_head
    from export.model.preprocessing import Preprocessor

    config = BackboneConfig(name="efficientnet_lite0", weights="imagenet")
    dataset = scan(images)
    train = [e for e in dataset.examples if e.split == TRAIN]
    paths = [e.path for e in train]
    labels = [e.label_id for e in train]
    preprocess = Preprocessor(config)
    data = (
        tf.data.Dataset.from_tensor_slices((paths, labels))
        .shuffle(4096, seed=0, reshuffle_each_iteration=True)
        .map(lambda p, y: (tf.io.read_file(p), y), num_parallel_calls=tf.data.AUTOTUNE)
        .batch(BATCH)
        .map(lambda b, y: (preprocess.batch(b), y), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    extractor = build_feature_extractor(config)
    extractor.trainable = False
    head = build_head(int(extractor.output.shape[-1]), len(dataset.labels), "softmax")
    inputs = keras.Input((config.input_size, config.input_size, 3))
    model = keras.Model(inputs, head(extractor(inputs, training=False)))
    return fit(model, data, epochs), len(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="epochs per path (≥ 2)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch also traces the graphs")
    from export.data.sample_data import write_digits

    with tempfile.TemporaryDirectory(prefix="xfer-bench-train-") as tmp:
        images = write_digits(Path(tmp) / "digits")
        bottlenecks = Path(tmp) / "bottlenecks"
        started = time.perf_counter()
        beam(images, bottlenecks, flags=DEMO_FLAGS)
        cache_seconds = time.perf_counter() - started
        cached, cached_rows = cached_epochs(bottlenecks, args.epochs)
        e2e, e2e_rows = end_to_end_epochs(images, args.epochs)
    cached_epoch, e2e_epoch = steady_epoch(cached), steady_epoch(e2e)
    record(
        "training",
        {"cached_head_epoch_vs_e2e": cached_epoch / e2e_epoch},
        {
            "cached_head_epoch_seconds": cached_epoch,
            "e2e_frozen_epoch_seconds": e2e_epoch,
            "e2e_epochs_per_cached_epoch": e2e_epoch / cached_epoch,
            "bottleneck_job_seconds": cache_seconds,
            "bottleneck_job_in_e2e_epochs": cache_seconds / e2e_epoch,
            "training_rows_cached": cached_rows,
            "training_rows_e2e": e2e_rows,
            "epochs": args.epochs,
        },
    )


if __name__ == "__main__":
    main()
