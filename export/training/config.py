"""A training run's typed config: its fields are xfer-train's flags, its defaults the defaults.

No TensorFlow here: `xfer-train --help` reads this module. The result of a run, `TrainResult`, is
in export/training/train.py next to `train()`.
"""

from __future__ import annotations

from dataclasses import dataclass

from export.cliargs import opt
from export.data.dataset import SplitConfig
from export.model.names import DEFAULT_MAX_PIXELS, Head, Optimizer
from export.model.resize_mode import (
    DEFAULT_CROP_PADDING,
    DEFAULT_INTERPOLATION,
    TRANSFER_DEFAULT,
    Interpolation,
    ResizeName,
)


class QualityBarError(RuntimeError):
    """A trained or exported model is below the accuracy the user asked for."""


@dataclass(frozen=True)
class TrainConfig:
    data: str | None = opt(None, "class-folder root (or a root with train/, test/ class folders)")
    bottlenecks: str | None = opt(None, "train from xfer-bottlenecks output instead of images")
    run_dir: str | None = opt(None, "where config.json, metrics.json, curves.png go")
    backbone: str = opt("mobilenet_v2", "registry name (xfer-backbones lists them)")
    weights: str = opt("imagenet", "imagenet, none, or a path to a weights file")
    image_size: int | None = opt(None, "backbone input size; default: the registry's")
    feature_layer: str | None = opt(None, "cut the backbone at this layer (e.g. mixed7)")
    alpha: float = opt(1.0, "mobilenet_v2 width multiplier")
    resize: ResizeName | None = opt(
        None,
        "how an image becomes the input square: squash (the whole image, aspect ratio not kept) "
        "or center_crop (aspect ratio kept, the shorter side scaled to image_size + "
        "--crop-padding, the central square kept); default: the bottlenecks' mode with "
        f"--bottlenecks, else {TRANSFER_DEFAULT}",
    )
    crop_padding: int = opt(
        DEFAULT_CROP_PADDING,
        "center_crop: the crop is image_size/(image_size + this) of the shorter side",
    )
    crop_interpolation: Interpolation = opt(
        DEFAULT_INTERPOLATION, "center_crop: bicubic or bilinear (both antialiased)"
    )
    head: Head = opt("softmax", "softmax or mlp")
    hidden_units: int = opt(256, "units of the mlp head's hidden layer")
    dropout: float = opt(0.2, "dropout rate before the head's dense layers")
    l2: float = opt(0.0, "L2 weight penalty on the head's dense layers")
    optimizer: Optimizer = opt("adam", "adam, sgd (momentum 0.9) or rmsprop")
    learning_rate: float = opt(1e-3, "learning rate")
    batch_size: int = opt(32, "batch size, for features and for training")
    epochs: int = opt(20, "maximum epochs")
    patience: int = opt(10, "early stopping on validation accuracy; 0 disables it")
    stop_at_accuracy: float | None = opt(
        None, "stop once validation accuracy (train accuracy without validation) reaches this"
    )
    seed: int = opt(42, "random seed for the head's initialisation and shuffling")
    validation_percent: float = opt(10.0, "hash split: percent of images for validation")
    test_percent: float = opt(10.0, "hash split: percent of images for test")
    max_pixels: int = opt(DEFAULT_MAX_PIXELS, "refuse images with more pixels than this")
    min_accuracy: float | None = opt(None, "fail (exit 1) when test accuracy is below this")
    progress: bool = opt(True, "show progress bars")
    report: bool = opt(True, "write report.html (metrics, plots, Grad-CAM) into the run dir")
    fine_tune_from: str | None = opt(
        None,
        "after the head, train end to end from this backbone layer (a name or a prefix such "
        "as block_13, mixed7, conv5_block1) onward; earlier layers stay frozen",
    )
    fine_tune_epochs: int = opt(5, "maximum fine-tuning epochs (early stopping: --patience)")
    fine_tune_learning_rate: float = opt(1e-4, "fine-tuning learning rate (SGD with momentum)")
    fine_tune_momentum: float = opt(0.9, "fine-tuning SGD momentum")
    augment_rotation: float = opt(40.0, "augmentation: max rotation in degrees; 0 disables")
    augment_shift: float = opt(0.2, "augmentation: max shift, fraction of width/height; 0 off")
    augment_shear: float = opt(0.2, "augmentation: max horizontal shear factor; 0 disables")
    augment_zoom: float = opt(0.2, "augmentation: max zoom in/out per axis (fraction); 0 off")
    augment_flip: bool = opt(True, "augmentation: random horizontal flips")

    def split_config(self) -> SplitConfig:
        return SplitConfig(self.validation_percent, self.test_percent)
