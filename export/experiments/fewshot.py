"""Few-shot accuracy, the Caltech-101/256 protocol: N random training images per class, a fresh
head per draw, every other image a test image. The command is `xfer-fewshot`
(export/cli/fewshot.py).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import logging
from dataclasses import dataclass

import numpy as np

from export.data.dataset import TEST, TRAIN, scan
from export.features.bottleneck_schema import feature_spec
from export.features.sources import TFRecordFeatures
from export.model.backbones import BackboneConfig
from export.training.train import extract_features, fit_head

log = logging.getLogger("xfer-fewshot")


@dataclass
class AllFeatures:
    """Every usable image's features, sorted by its path or URI so that a seed picks the same
    images whatever order the files were listed or the Beam shards were written in."""

    features: np.ndarray  # [N, D]
    label_ids: np.ndarray  # [N]
    items: list[str]  # path or URI of each row
    labels: list[str]
    backbone: dict
    skipped: list[dict]

    def sorted(self) -> AllFeatures:
        order = np.argsort(np.asarray(self.items, dtype=object), kind="stable")
        return dataclasses.replace(
            self,
            features=self.features[order],
            label_ids=self.label_ids[order],
            items=[self.items[i] for i in order],
        )


def features_from_images(config) -> AllFeatures:

    dataset = scan(config.data)
    table, _ = extract_features(config, dataset.examples)
    return AllFeatures(
        table.features,
        np.array([e.label_id for e in table.examples], np.int64),
        [e.path for e in table.examples],
        dataset.labels,
        BackboneConfig.of(config).to_dict(),
        dataset.skipped + table.skipped,
    ).sorted()


def features_from_bottlenecks(prefix: str) -> AllFeatures:
    import tensorflow as tf

    source = TFRecordFeatures(prefix)
    spec = feature_spec(source.feature_dim)
    records = tf.data.TFRecordDataset(source.files, compression_type="GZIP").map(
        lambda s: tf.io.parse_single_example(s, spec)
    )
    features, label_ids, items = [], [], []
    for batch in records.batch(1024).as_numpy_iterator():
        features.append(batch["features"])
        label_ids.append(batch["label_id"])
        items.extend(uri.decode() for uri in batch["image/uri"])
    if len(set(items)) != len(items):
        raise ValueError(
            f"{prefix}: {len(items)} rows for {len(set(items))} images (augmented copies?); the "
            "few-shot protocol needs one row per image: write bottlenecks without augmentation"
        )
    dim = source.feature_dim
    return AllFeatures(
        np.concatenate(features) if features else np.zeros((0, dim), np.float32),
        np.concatenate(label_ids) if label_ids else np.zeros(0, np.int64),
        items,
        source.labels,
        source.metadata["backbone"],
        source.skipped,
    ).sorted()


class ShotSplit:
    """One draw: the interface `fit_head` trains on (train rows, no validation, test rows)."""

    def __init__(self, data: AllFeatures, train_mask: np.ndarray):
        self.data = data
        self.train_mask = train_mask
        self.labels = data.labels

    @property
    def feature_dim(self) -> int:
        return int(self.data.features.shape[1])

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:

        if split == TRAIN:
            mask = self.train_mask
        elif split == TEST:
            mask = ~self.train_mask
        else:
            mask = np.zeros_like(self.train_mask)
        return self.data.features[mask], self.data.label_ids[mask]

    def dataset(self, split: str):
        import tensorflow as tf

        return tf.data.Dataset.from_tensor_slices(self.arrays(split))


def moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0, dtype=np.float64)
    variance = x.var(axis=0, dtype=np.float64)
    # With 1 or 5 images per class many features are constant over the training images:
    # build_head floors the variance (heads.VARIANCE_FLOOR) so they do not blow up on test images.
    return mean.astype(np.float32), variance.astype(np.float32)


def class_permutations(label_ids: np.ndarray, num_classes: int, seed: int) -> list[np.ndarray]:
    """Each class's rows in a random order; the first N are the N-shot training images, so a
    repeat's 5-shot training set contains its 1-shot set."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.flatnonzero(label_ids == c)) for c in range(num_classes)]


def too_small(data: AllFeatures, shots: int) -> dict[str, int]:
    """Classes that cannot give N training images and still keep one test image."""
    counts = np.bincount(data.label_ids, minlength=len(data.labels))
    return {data.labels[c]: int(n) for c, n in enumerate(counts) if n <= shots}


class _DropMessage(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


@contextlib.contextmanager
def _quiet_no_validation():
    """fit_head warns about the missing validation split on every run; it is the protocol."""
    logger = logging.getLogger("export.training.train")
    drop = _DropMessage("no validation images")
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def run_protocol(data: AllFeatures, config, shots: list[int], repeats: int, seed: int) -> dict:
    from tqdm.auto import tqdm

    num_classes = len(data.labels)
    results, skipped = [], []
    runnable = []
    for n in shots:
        small = too_small(data, n)
        if small:
            named = ", ".join(f"{label} ({count})" for label, count in small.items())
            log.warning(
                "%d-shot skipped: these classes have <= %d images, none left to test: %s",
                n,
                n,
                named,
            )
            skipped.append({"shots": n, "classes": small})
        else:
            runnable.append(n)
            results.append(
                {"shots": n, "accuracies": [], "seeds": [], "test_images": [], "train_indices": []}
            )
    head_config = dataclasses.replace(config, patience=0, stop_at_accuracy=None, progress=False)
    bar = tqdm(total=len(runnable) * repeats, desc="few-shot", disable=not config.progress)
    with _quiet_no_validation():
        for r in range(repeats):
            perms = class_permutations(data.label_ids, num_classes, seed + r)
            for n, result in zip(runnable, results):
                train_idx = np.sort(np.concatenate([p[:n] for p in perms]))
                mask = np.zeros(len(data.items), bool)
                mask[train_idx] = True
                split = ShotSplit(data, mask)
                mean, variance = moments(data.features[mask])
                run_config = dataclasses.replace(head_config, seed=seed + r)
                head, _, _ = fit_head(run_config, split, mean, variance)
                x_test, y_test = split.arrays("test")
                probs = np.concatenate(
                    [
                        np.asarray(head(x_test[i : i + 1024], training=False))
                        for i in range(0, len(x_test), 1024)
                    ]
                )
                accuracy = float(np.mean(np.argmax(probs, axis=1) == y_test))
                log.debug("%d-shot repeat %d: accuracy %.4f", n, r, accuracy)
                result["accuracies"].append(accuracy)
                result["seeds"].append(seed + r)
                result["test_images"].append(int(len(y_test)))
                result["train_indices"].append(train_idx.tolist())
                bar.update(1)
    bar.close()
    for result in results:
        acc = np.asarray(result["accuracies"])
        result["mean"] = float(acc.mean())
        result["std"] = float(acc.std(ddof=1)) if len(acc) > 1 else 0.0
        result["repeats"] = len(acc)
        result["train_images"] = result["shots"] * num_classes
    return {"results": results, "skipped_shots": skipped}


def markdown_table(results: list[dict], skipped: list[dict]) -> str:
    lines = [
        "| N (training images per class) | test accuracy (mean ± std) | repeats | test images |",
        "|---|---|---|---|",
    ]
    for r in results:
        tests = sorted(set(r["test_images"]))
        test_images = str(tests[0]) if len(tests) == 1 else f"{tests[0]}-{tests[-1]}"
        lines.append(
            f"| {r['shots']} | {r['mean']:.4f} ± {r['std']:.4f} | {r['repeats']} | {test_images} |"
        )
    for s in skipped:
        classes = ", ".join(f"{k} ({v})" for k, v in s["classes"].items())
        lines.append(
            f"| {s['shots']} | skipped: classes with <= {s['shots']} images: {classes} | 0 | |"
        )
    return "\n".join(lines) + "\n"


def results_csv(results: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["shots", "repeat", "seed", "accuracy", "train_images", "test_images"])
    for r in results:
        for i, (acc, seed, tests) in enumerate(zip(r["accuracies"], r["seeds"], r["test_images"])):
            writer.writerow([r["shots"], i, seed, acc, r["train_images"], tests])
    return buf.getvalue()


def fewshot_png(results: list[dict], title: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    shots = [r["shots"] for r in results]
    for r in results:
        ax.scatter([r["shots"]] * r["repeats"], r["accuracies"], color="#9ecae1", s=12, zorder=2)
    ax.errorbar(
        shots,
        [r["mean"] for r in results],
        yerr=[r["std"] for r in results],
        fmt="o-",
        color="#2171b5",
        capsize=4,
        label="mean ± std",
        zorder=3,
    )
    ax.set_xscale("log")
    ax.set_xticks(shots, [str(n) for n in shots])
    ax.minorticks_off()
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("training images per class (N)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()
