"""xfer-export's typed config: TrainConfig's fields plus the publishing ones; they are its flags.

No TensorFlow here: `xfer-export --help` reads this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from export.cliargs import opt
from export.training.config import TrainConfig


@dataclass(frozen=True)
class ExportConfig(TrainConfig):
    model_name: str = opt("classifier", "model name (TF Serving's --model_name)")
    model_base_path: str | None = opt(None, "versions go in <this>/<N>/; default models/<name>")
    version: int | None = opt(None, "publish exactly this version; an existing one is an error")
    top_k: int = opt(5, "labels/top_scores width of serving_default")
    warmup_images: int = opt(5, "validation images replayed as TF Serving warmup requests")
    gate_images: int = opt(32, "validation images the gate queries the loaded model with")
    parity_tolerance: float = opt(1e-5, "max |scores(SavedModel) - scores(Keras)| to publish")
    max_regression: float = opt(
        0.5, "refuse a candidate whose accuracy is this many points below the champion's"
    )
    max_class_regression: float = opt(
        5.0, "refuse a candidate whose recall of any class is this many points below the champion's"
    )
    force: bool = opt(
        False, "publish even when the champion comparison refuses (recorded in the model card)"
    )
    ood_fpr: float = opt(
        0.01,
        "share of validation images flagged is_ood: the OOD threshold is their (1 - this) quantile",
    )
    imagenet_head: bool = opt(
        False,
        "publish the pretrained ImageNet classifier (efficientnet_lite0) untrained, with the "
        "center crop it was evaluated with unless --resize says otherwise; --data, if given, "
        "only supplies gate/warmup images",
    )

    @property
    def base_path(self) -> Path:
        return Path(self.model_base_path or Path("models") / self.model_name)
