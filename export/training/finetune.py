"""Fine-tuning: after the head converged on frozen features, train backbone + head end to end.

The backbone is unfrozen from one layer (`fine_tune_from`) onward; every layer before it keeps
its weights. Training runs on images, not cached features: the training split decoded by the
shared Preprocessor (so the pixels are exactly those the exported model sees) and augmented;
validation and test are never augmented. A low learning rate and SGD with momentum keep the
pretrained features from being destroyed by the first large gradients (the Keras transfer-learning
guide's recipe).

Batch normalisation stays in inference mode in two ways, on purpose:
- the backbone runs with training=False inside the fine-tuning model (the guide's way), so its
  BN layers normalise with the moving statistics and never update them: a small, augmented,
  few-class batch would otherwise replace ImageNet's statistics and shift the features the head
  was fitted to. Keras 3 overrides a nested `backbone(x, training=False)` with fit()'s
  training=True, so the call is pinned by the `InferenceMode` wrapper instead;
- the BN layers are also trainable=False, so gamma and beta stay put too: they remain matched to
  the frozen statistics, and the trainable set is exactly the conv/dense weights from the named
  layer on. (A non-trainable BN also normalises with moving statistics in Keras 3, so either
  mechanism alone keeps the statistics; the tests check the outcome on every BN layer.)
"""

from __future__ import annotations

import difflib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from export import fsutil
from export.data.dataset import SPLITS, TRAIN, VALIDATION
from export.model.backbones import BackboneConfig, build_feature_extractor
from export.model.heads import build_classifier
from export.model.preprocessing import Preprocessor
from export.plots import plot_curves
from export.training.augment import AugmentConfig, build_augmentation
from export.training.config import TrainConfig
from export.training.evaluation import evaluate_splits
from export.training.runs import BACKBONE_WEIGHTS_FILE, HEAD_ONLY_FILE, history_csv
from export.training.stopping import fit_with_stops, kept_epoch, log_kept

log = logging.getLogger(__name__)
HISTORY_FILE = "fine_tune_history.csv"
CURVES_FILE = "fine_tune_curves.png"


def resolve_layer(extractor: keras.Model, name: str, backbone: str | None = None) -> int:
    """Index in extractor.layers of the layer named `name`, or else of the first layer whose name
    starts with it (a block: block_13, mixed7, conv5_block1)."""
    names = [layer.name for layer in extractor.layers]
    if name in names:
        return names.index(name)
    for index, candidate in enumerate(names):
        if candidate.startswith(name):
            return index
    close = difflib.get_close_matches(name, names, n=8, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise ValueError(
        f"fine_tune_from: {extractor.name} has no layer named or starting with {name!r} "
        f"({len(names)} layers{hint}); list them with: xfer-backbones --layers "
        f"{backbone or extractor.name.removesuffix('_features')}"
    )


def unfreeze_from(extractor: keras.Model, start: int) -> list[str]:
    """Make layers [start:] trainable except batch norms; returns the layers that will train."""
    extractor.trainable = True
    for index, layer in enumerate(extractor.layers):
        layer.trainable = index >= start and not isinstance(layer, keras.layers.BatchNormalization)
    return [layer.name for layer in extractor.layers[start:] if layer.trainable_weights]


class InferenceMode(keras.layers.Layer):
    """Runs a model with training=False whatever the enclosing call says.

    The transfer-learning guide writes `base_model(inputs, training=False)` inside a functional
    model; in Keras 3 (checked on 3.15) fit()'s training=True overrides that nested argument, so
    batch norms would normalise with batch statistics and update their moving averages. This
    layer's call takes no `training` argument, so nothing can switch it on.
    """

    def __init__(self, model: keras.Model, **kwargs):
        super().__init__(name=f"{model.name}_inference", **kwargs)
        self.model = model

    def call(self, inputs):
        return self.model(inputs, training=False)

    def compute_output_shape(self, input_shape):
        return self.model.compute_output_shape(input_shape)


def fine_tune_model(extractor: keras.Model, head: keras.Model) -> keras.Model:
    """Images -> scores for training: the backbone in inference mode (batch norm, dropout), the
    head in training mode (its dropout stays on). Shares its layers with `extractor` and `head`,
    so training it trains them."""
    size = extractor.input.shape[1:]
    inputs = keras.Input(size, name="image")
    features = InferenceMode(extractor)(inputs)
    return keras.Model(inputs, head(features), name="fine_tune")


@dataclass
class ImageSource:
    """The images behind a feature source, as the shared Preprocessor decodes them.

    Same interface as the feature sources for evaluation (labels, dataset(split) of unbatched
    (x, label_id)), so evaluate_splits measures the image model exactly as it measures a head.
    Files that fail to read or decode are dropped: they were already reported as skipped.
    """

    labels: list[str]
    examples: dict[str, list[tuple[str, int]]]
    preprocessor: Preprocessor

    def __post_init__(self):
        # Traced once and called from every split's pipeline (tracing the decoder is slow).
        self._preprocess = tf.function(
            lambda uri: self.preprocessor(tf.io.read_file(uri)),
            input_signature=[tf.TensorSpec([], tf.string)],
        )

    @classmethod
    def of(cls, source, preprocessor: Preprocessor) -> ImageSource:
        return cls(source.labels, {s: source.labelled_uris(s) for s in SPLITS}, preprocessor)

    def _listed(self, split: str) -> tf.data.Dataset:
        rows = self.examples[split]
        uris = tf.constant([uri for uri, _ in rows], tf.string, shape=[len(rows)])
        label_ids = tf.constant([label for _, label in rows], tf.int64, shape=[len(rows)])
        return tf.data.Dataset.from_tensor_slices((uris, label_ids))

    def _decoded(self, listed: tf.data.Dataset) -> tf.data.Dataset:
        preprocess = self._preprocess
        return listed.map(
            lambda uri, label: (preprocess(uri), label),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        ).ignore_errors()

    def dataset(self, split: str) -> tf.data.Dataset:
        """Unbatched, in listed order, never augmented."""
        return self._decoded(self._listed(split))

    def training_batches(
        self, batch_size: int, augment: AugmentConfig, seed: int
    ) -> tf.data.Dataset:
        """The training split, reshuffled every epoch, batched, then augmented per image."""
        listed = self._listed(TRAIN)
        count = len(self.examples[TRAIN])
        # The whole URI list is shuffled: strings are cheap, and no window biases the order.
        listed = listed.shuffle(max(count, 1), seed=seed, reshuffle_each_iteration=True)
        batches = self._decoded(listed).batch(batch_size)
        if augment.enabled:
            augmentation = build_augmentation(augment, seed)
            # Sequential on purpose: the layers' random state advances in a fixed order.
            batches = batches.map(lambda x, y: (augmentation(x, training=True), y))
        return batches.prefetch(tf.data.AUTOTUNE)

    def batches(self, split: str, batch_size: int) -> tf.data.Dataset:
        return self.dataset(split).batch(batch_size).prefetch(tf.data.AUTOTUNE)


@dataclass
class FineTuner:
    """The fine-tuning stage of one training run; prepared before the head trains so that a bad
    layer name or augmentation range fails in seconds, not after the head's epochs."""

    config: TrainConfig
    extractor: keras.Model
    start: int
    augment: AugmentConfig
    metrics: dict = field(default_factory=dict)

    @classmethod
    def prepare(cls, config, extractor: keras.Model | None = None) -> FineTuner:
        if config.fine_tune_epochs < 1:
            raise ValueError(f"fine_tune_epochs must be >= 1; received {config.fine_tune_epochs}")
        if config.fine_tune_learning_rate <= 0:
            raise ValueError(
                f"fine_tune_learning_rate must be > 0; received {config.fine_tune_learning_rate}"
            )
        augment = AugmentConfig.of(config)
        if extractor is None:  # trained from bottlenecks: the Beam job's backbone, rebuilt
            extractor = build_feature_extractor(BackboneConfig.of(config))
        try:
            start = resolve_layer(extractor, config.fine_tune_from, config.backbone)
        except ValueError as exc:
            if config.feature_layer:  # layers past the cut are not in the extractor
                raise ValueError(f"{exc} (the backbone ends at {config.feature_layer})") from None
            raise
        return cls(config, extractor, start, augment)

    @property
    def layer(self) -> str:
        return self.extractor.layers[self.start].name

    def run(self, run_dir: Path, source, head: keras.Model, head_splits: dict):
        """Fine-tune `self.extractor` and `head` in place; returns (extractor, splits of the
        fine-tuned classifier). `self.metrics` then holds metrics.json's "fine_tune" entry."""
        config = self.config
        head.save(run_dir / HEAD_ONLY_FILE)
        images = ImageSource.of(source, Preprocessor.of(config))
        trainable = unfreeze_from(self.extractor, self.start)
        head.trainable = True
        model = fine_tune_model(self.extractor, head)
        keras.utils.set_random_seed(config.seed)
        model.compile(
            optimizer=keras.optimizers.SGD(
                config.fine_tune_learning_rate, momentum=config.fine_tune_momentum
            ),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        validation = images.batches(VALIDATION, config.batch_size)
        has_validation = bool(images.examples[VALIDATION])
        log.info(
            "fine-tuning from %s: %d layers with weights train, %d epochs at lr %g",
            self.layer,
            len(trainable),
            config.fine_tune_epochs,
            config.fine_tune_learning_rate,
        )
        with warnings.catch_warnings():
            # Skipping undecodable files leaves the epoch length unknown until the first epoch
            # ends; Keras then warns that the input "ran out of data", which is expected here.
            warnings.filterwarnings("ignore", "Your input ran out of data", UserWarning)
            # The same stops as the head: --patience and --stop-at-accuracy.
            fit = fit_with_stops(
                model,
                images.training_batches(config.batch_size, self.augment, config.seed),
                validation if has_validation else None,
                config.fine_tune_epochs,
                config,
            )
        history = fit.history
        splits = evaluate_splits(
            _graph(build_classifier(self.extractor, head)), images, batch_size=config.batch_size
        )
        self.extractor.save_weights(run_dir / BACKBONE_WEIGHTS_FILE)
        fsutil.atomic_write_text(run_dir / HISTORY_FILE, history_csv(history))
        plot_curves(history, run_dir / CURVES_FILE)
        self.metrics = {
            "from": self.layer,
            "requested": config.fine_tune_from,
            "trainable_layers": trainable,
            "frozen_layers": self.start,
            "batch_norm": "inference mode (backbone run with training=False) and frozen",
            "learning_rate": config.fine_tune_learning_rate,
            "momentum": config.fine_tune_momentum,
            "augmentation": self.augment.to_dict(),
            "epochs_run": fit.epochs_run,
            "kept_epoch": kept_epoch(history, config.patience),
            "train_seconds": fit.seconds,
            "head_only_splits": head_splits,
            "history": history,
        }
        log_kept(self.metrics["kept_epoch"], "fine-tuning")
        for split in SPLITS:
            before, after = head_splits[split]["accuracy"], splits[split]["accuracy"]
            if after is not None:
                log.info(
                    "%s accuracy: head only %s, fine-tuned %.4f",
                    split,
                    "n/a" if before is None else f"{before:.4f}",
                    after,
                )
        return self.extractor, splits


@dataclass
class BackboneFeatures:
    """A split's features as `extractor` (the fine-tuned backbone) computes them on its images,
    decoded by the shared Preprocessor: what the exported graph's OOD detector sees. The cached
    bottlenecks are the backbone's before fine-tuning, so a detector fitted on them would measure
    distances in another space than the one it is served in. `arrays(split)` as a feature
    source has it, computed once per split."""

    extractor: keras.Model
    images: ImageSource
    batch_size: int = 32
    progress: bool = True
    _done: dict = field(default_factory=dict)

    @classmethod
    def of(cls, extractor: keras.Model, source, config) -> BackboneFeatures:
        images = ImageSource.of(source, Preprocessor.of(config))
        return cls(extractor, images, config.batch_size, config.progress)

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in self._done:
            from tqdm.auto import tqdm

            call = _graph(self.extractor)
            xs, ys = [], []
            count = len(self.images.examples[split])
            with tqdm(
                total=count, desc=f"{split} features", unit="img", disable=not self.progress
            ) as bar:
                for x, y in self.images.batches(split, self.batch_size):
                    xs.append(np.asarray(call(x)))
                    ys.append(y.numpy())
                    bar.update(len(y))
            dim = int(self.extractor.output.shape[-1])
            self._done[split] = (
                np.concatenate(xs).astype(np.float32) if xs else np.zeros((0, dim), np.float32),
                np.concatenate(ys).astype(np.int64) if ys else np.zeros(0, np.int64),
            )
        return self._done[split]


def _graph(model: keras.Model):
    """`model(x, training=False)` as one traced graph: a backbone run eagerly, batch by batch,
    is several times slower."""
    size = model.input.shape[1:]
    call = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec([None, *size], tf.float32)],
    )
    return lambda x, training=False: call(x)
