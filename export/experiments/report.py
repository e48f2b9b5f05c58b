"""`<run_dir>/report.html`: everything about one training run in a single self-contained file.

The entry points: after training (`write_run_report`, `train_and_report`) and for an existing run
directory (`rebuild_report`, xfer-report). Gathering is in report_data.py, drawing in
report_html.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from export import plots
from export.data.dataset import SPLITS, SplitConfig, scan
from export.experiments.gradcam import Explainer, GradCam, RunModel, load_run
from export.experiments.report_data import (
    MAX_PER_SPLIT,
    ReportInputs,
    SplitData,
    featurize,
    splits_from_source,
)
from export.experiments.report_html import REPORT_FILE, write_report
from export.features.extraction import compute_features
from export.features.sources import TFRecordFeatures
from export.model.preprocessing import Preprocessor
from export.training.config import TrainConfig
from export.training.evaluation import check_min_accuracy
from export.training.train import TrainResult, train

log = logging.getLogger(__name__)
__all__ = ["REPORT_FILE", "rebuild_report", "train_and_report", "write_run_report"]


def train_and_report(config: TrainConfig) -> TrainResult:
    """`train(config)`, then the run's report.html when `config.report` (xfer-train, xfer-export
    and xfer-compare train through here)."""
    result = train(config, check_quality=False)
    if config.report:
        write_run_report(result)
    check_min_accuracy(result.metrics, config.min_accuracy)
    return result


def write_run_report(result: TrainResult) -> Path | None:
    """After training: a report failure is logged, never loses the trained run."""
    try:
        run_dir = Path(result.run_dir)
        config = result.config
        preprocessor = Preprocessor.of(config)
        splits = splits_from_source(result.source)
        if "fine_tune" in result.metrics:
            # The cached features are the frozen backbone's; the final model's are not.
            splits = featurize(splits, result.extractor, preprocessor)
        inputs = ReportInputs(
            run_dir,
            json.loads((run_dir / "config.json").read_text()),
            result.metrics,
            list(result.labels),
            result.head,
            splits,
            preprocessor,
            lambda: Explainer(GradCam(result.extractor, result.head), preprocessor, result.labels),
            seed=config.seed,
        )
        return write_report(inputs)
    except Exception:  # noqa: BLE001
        log.exception("report.html not written (rebuild it with xfer-report --run-dir)")
        return None


def _splits_from_images(model: RunModel, limit: int) -> dict[str, SplitData]:
    config = model.config
    split_config = SplitConfig(
        config.get("validation_percent", 10.0), config.get("test_percent", 10.0)
    )
    dataset = scan(config["data"], split_config)
    if dataset.labels != model.labels:
        raise ValueError(
            f"{config['data']}: classes {dataset.labels} differ from the run's {model.labels}"
        )
    chosen = []
    for split in SPLITS:
        examples = [e for e in dataset.examples if e.split == split]
        chosen += [examples[i] for i in plots.subsample(len(examples), limit)]
    table = compute_features(chosen, model.extractor, model.preprocessor, progress=False)
    out = {}
    for split in SPLITS:
        rows = [i for i, e in enumerate(table.examples) if e.split == split]
        ids = np.asarray([table.examples[i].label_id for i in rows], np.int64)
        out[split] = SplitData(table.features[rows], ids, [table.examples[i].path for i in rows])
    return out


def rebuild_report(run_dir: str | Path, limit: int = MAX_PER_SPLIT) -> Path:
    """The report of an existing run dir: the model from the run dir, the features recomputed
    from the run's images (or read from its bottlenecks)."""
    run = Path(run_dir)
    model = load_run(run)
    metrics_path = run / "metrics.json"
    if not metrics_path.exists():
        raise FileNotFoundError(f"{run}: no metrics.json; not a finished training run")
    metrics = json.loads(metrics_path.read_text())
    tuned = "fine_tune" in metrics
    if model.config.get("data"):
        splits = _splits_from_images(model, limit)
    elif model.config.get("bottlenecks"):
        splits = splits_from_source(TFRecordFeatures(model.config["bottlenecks"]), limit)
        if tuned:
            splits = featurize(splits, model.extractor, model.preprocessor)
    else:
        raise ValueError(f"{run}/config.json names neither data nor bottlenecks")
    inputs = ReportInputs(
        run,
        model.config,
        metrics,
        model.labels,
        model.head,
        splits,
        model.preprocessor,
        model.explainer,
        seed=int(model.config.get("seed", 0)),
    )
    return write_report(inputs)
