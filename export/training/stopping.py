"""The one fit loop of the head, the fine-tuning stage and the from-scratch baseline, with their
stops: early stopping on validation accuracy (and which epoch's weights that keeps), and
`--stop-at-accuracy`, the tutorials' 99% callback.

With validation data the target-accuracy callback watches `val_accuracy`: stopping when the
*training* accuracy hits a target rewards memorising the training set, and a head on frozen
features reaches 100% training accuracy long before it generalises. Without validation data it
falls back to the training `accuracy` (logged), since that is the only signal there is.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass
from typing import Protocol

import keras

log = logging.getLogger(__name__)


def training_callbacks(
    patience: int, stop_at_accuracy: float | None, has_validation: bool
) -> list[keras.callbacks.Callback]:
    """Early stopping on validation accuracy (best weights restored) and the target-accuracy
    stop: what the head, the fine-tuning stage and the baseline CNN all train with."""
    callbacks: list[keras.callbacks.Callback] = []
    if has_validation and patience > 0:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_accuracy", mode="max", patience=patience, restore_best_weights=True
            )
        )
    if stop_at_accuracy is not None:
        callbacks.append(StopAtAccuracy(stop_at_accuracy, has_validation))
    return callbacks


@dataclass(frozen=True)
class Fit:
    history: dict[str, list[float]]  # Keras' history: one value per epoch run, per metric
    seconds: float

    @property
    def epochs_run(self) -> int:
        return len(next(iter(self.history.values()), []))


class FitOptions(Protocol):
    """The fields of TrainConfig and BaselineConfig that a fit reads."""

    patience: int
    stop_at_accuracy: float | None
    progress: bool


def fit_with_stops(model: keras.Model, train, validation, epochs: int, options: FitOptions) -> Fit:
    """`model.fit` with `training_callbacks`' stops, timed: the one fit loop of the head, the
    fine-tuning stage and the baseline. `validation` is None when there is no validation data.
    `train` comes shuffled with the run's seed, so fit does not shuffle again; Keras' epoch
    lines go to stderr, since stdout is for results."""
    has_validation = validation is not None
    callbacks = training_callbacks(options.patience, options.stop_at_accuracy, has_validation)
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        history = model.fit(
            train,
            validation_data=validation,
            epochs=epochs,
            callbacks=callbacks,
            shuffle=False,
            verbose=2 if options.progress else 0,
        ).history
    seconds = time.perf_counter() - started
    return Fit({k: [float(v) for v in values] for k, values in history.items()}, seconds)


def monitored_metric(has_validation: bool) -> str:
    return "val_accuracy" if has_validation else "accuracy"


def check_target(target: float | None) -> None:
    if target is not None and not 0 < target <= 1:
        raise ValueError(f"stop_at_accuracy must be in (0, 1]; received {target}")


class StopAtAccuracy(keras.callbacks.Callback):
    """Sets `model.stop_training` at the end of the first epoch whose accuracy >= target."""

    def __init__(self, target: float, has_validation: bool):
        super().__init__()
        check_target(target)
        self.target = target
        self.monitor = monitored_metric(has_validation)
        self.stopped_epoch: int | None = None  # 1-based, None while the target is not reached
        if not has_validation:
            log.warning(
                "stop_at_accuracy %s watches the training accuracy: there is no validation data",
                target,
            )

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and value >= self.target:
            self.stopped_epoch = epoch + 1
            self.model.stop_training = True
            log.info(
                "%s %.4f reached stop_at_accuracy %s after epoch %d",
                self.monitor,
                value,
                self.target,
                self.stopped_epoch,
            )


MIN_VALIDATION_PER_CLASS = 5  # below this, validation accuracy moves in coarse steps and ties


def kept_epoch(history: dict, patience: int) -> dict:
    """metrics.json's `kept_epoch`: which epoch's weights the model ends with, and why.

    With validation data and patience > 0, Keras' EarlyStopping restores the weights of the first
    epoch with the highest `val_accuracy` when training ends (a later epoch must *exceed* it to
    count, so ties keep the earlier epoch); otherwise the last epoch's weights are kept.
    """
    epochs = len(next(iter(history.values()), []))
    values = history.get("val_accuracy", [])
    if not values or patience <= 0:
        why = "no validation images" if not values else "early stopping is off (patience 0)"
        return {"epoch": epochs, "of": epochs, "monitor": None, "value": None, "reason": why}
    best = max(values)
    epoch = values.index(best) + 1
    if epoch == epochs:
        reason = "the best val_accuracy was the last epoch's"
    else:
        tied = sum(1 for v in values[epoch:] if v == best)
        reason = "early stopping restored the best val_accuracy: no later epoch exceeded it" + (
            f" ({tied} later epochs tied it; ties keep the earlier epoch)" if tied else ""
        )
    return {
        "epoch": epoch,
        "of": epochs,
        "monitor": "val_accuracy",
        "value": best,
        "reason": reason,
    }


def log_kept(kept: dict, what: str = "head") -> None:
    if kept["monitor"] is None:
        log.info("%s: kept epoch %d of %d (%s)", what, kept["epoch"], kept["of"], kept["reason"])
    else:
        log.info(
            "%s: kept epoch %d of %d, %s %.4f: %s",
            what,
            kept["epoch"],
            kept["of"],
            kept["monitor"],
            kept["value"],
            kept["reason"],
        )


def warn_small_validation(per_class_count: dict[str, int]) -> list[str]:
    """The classes with fewer than MIN_VALIDATION_PER_CLASS validation images, warned about: with
    so few, early stopping and --stop-at-accuracy act on a coarse, noisy signal."""
    small = sorted(c for c, n in per_class_count.items() if n < MIN_VALIDATION_PER_CLASS)
    if small and sum(per_class_count.values()):
        log.warning(
            "the validation split has fewer than %d images in %d of %d classes (%s): early "
            "stopping picks the kept epoch on a coarse signal; add images or raise "
            "--validation-percent",
            MIN_VALIDATION_PER_CLASS,
            len(small),
            len(per_class_count),
            ", ".join(f"{c}: {per_class_count[c]}" for c in small[:10])
            + (" ..." if len(small) > 10 else ""),
        )
    return small


def stop_record(history: dict, target: float | None) -> dict | None:
    """metrics.json's `stopped_at_accuracy`, derived from the history the callback acted on:
    the first epoch (1-based) whose monitored accuracy reached the target; `epoch` is None when
    the target was never reached (all epochs, or early stopping, ran). None without a target."""
    if target is None:
        return None
    monitor = monitored_metric("val_accuracy" in history)
    values = history.get(monitor, [])
    epoch = next((i + 1 for i, value in enumerate(values) if value >= target), None)
    return {
        "target": target,
        "monitor": monitor,
        "epoch": epoch,
        "accuracy": None if epoch is None else float(values[epoch - 1]),
    }
