"""A published version of the ImageNet classifier itself: no training, the pretrained head.

`xfer-export --imagenet-head` publishes EfficientNet-Lite0 with its 1,000-class ImageNet
classifier through the same writer and gate as a trained model, so it can be queried through
TF Serving (e.g. "giant panda" over gRPC).
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timezone
from pathlib import Path

from export.contract import IMAGE_EXTENSIONS
from export.data.dataset import SPLITS, TRAIN
from export.model.backbones import BackboneConfig, build_feature_extractor
from export.model.resize_mode import IMAGENET_DEFAULT
from export.pretrained.efficientnet_lite import build_imagenet_head
from export.pretrained.imagenet import imagenet_labels
from export.training.config import TrainConfig
from export.training.runs import library_versions
from export.training.train import TrainResult

log = logging.getLogger(__name__)
PRETRAINED_BACKBONE = "efficientnet_lite0"


def sample_photos() -> list[str]:
    """A real photograph that an installed package ships (matplotlib's sample data)."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return [str(path)] if path.exists() else []


@dataclasses.dataclass
class ImageListSource:
    """Gate and warmup images for a model that was not trained on a dataset."""

    images: list[str]
    labels: list[str]
    feature_dim: int

    def uris(self, split: str, limit: int) -> list[str]:
        return self.images[:limit] if split == TRAIN else []

    def rows(self):
        return iter(())


def _images_under(root: str | None) -> list[str]:
    if not root:
        return sample_photos()
    found = sorted(str(p) for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not found:
        raise ValueError(f"{root}: no images to check the ImageNet model with")
    return found


def imagenet_result(config: TrainConfig) -> TrainResult:
    """A TrainResult whose head is the pretrained ImageNet classifier; `data`, if given, only
    supplies images for the gate and the warmup file. Without --resize, the center crop the
    classifier was evaluated with."""
    config = dataclasses.replace(
        config, backbone=PRETRAINED_BACKBONE, feature_layer=None, image_size=None, alpha=1.0
    )
    resize = BackboneConfig.of(config, default_resize=IMAGENET_DEFAULT).resize
    config = dataclasses.replace(config, **resize.flags())
    if config.weights != "imagenet":
        raise ValueError("--imagenet-head needs --weights imagenet: it is the pretrained model")
    extractor = build_feature_extractor(BackboneConfig.of(config))
    head = build_imagenet_head(config.weights)
    labels = list(imagenet_labels())
    images = _images_under(config.data)
    if not images:
        raise ValueError("no images for the gate: pass --data with a few photos")
    run_dir = Path(
        config.run_dir
        or Path("runs") / "imagenet" / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = {
        "splits": {s: {"count": 0, "accuracy": None, "loss": None} for s in SPLITS},
        "labels": labels,
        "source": "ImageNet-1k (pretrained classifier, not trained here)",
        "images_used": 0,
        "skipped_count": 0,
        "skipped": [],
        "feature_dim": int(extractor.output.shape[-1]),
        "epochs_run": 0,
        "train_seconds": 0.0,
        "data_hash": None,
        "versions": library_versions(),
    }
    source = ImageListSource(images, labels, metrics["feature_dim"])
    return TrainResult(config, run_dir, labels, head, source, metrics, extractor)
