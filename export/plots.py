"""Plots of a training run, as pure functions: arrays in, PNG bytes out (or a path written).

Figures are drawn on matplotlib's Agg canvas directly, never through pyplot, so plotting needs no
display, sets no global backend and keeps no figure alive after it returns.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from export import fsutil

MAX_TSNE_POINTS = 2000
TSNE_PCA_DIMS = 50
MAX_ANNOTATED_CLASSES = 20  # the similarity heatmap prints its values up to this many classes
RIGHT, WRONG = "#1a7f37", "#cf222e"  # green / red titles in prediction grids


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def write_png(path: str | Path, png: bytes) -> None:
    fsutil.atomic_write_bytes(path, png)


def _message_png(text: str, width: float = 5, height: float = 2) -> bytes:
    """A figure that says why there is no plot, so a report never has a hole."""
    fig = _figure(width, height)
    ax = fig.subplots()
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return figure_png(fig)


# Training curves -------------------------------------------------------------------------------


def curves_png(history: dict) -> bytes:
    fig = _figure(10, 4)
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + metric)
            if values:
                ax.plot(
                    range(1, len(values) + 1),
                    values,
                    style,
                    label=("validation" if prefix else "train"),
                )
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    return figure_png(fig)


def plot_curves(history: dict, path: str | Path) -> None:
    write_png(path, curves_png(history))


# Confusion matrix ------------------------------------------------------------------------------


def confusion_matrix(true_ids, predicted_ids, num_classes: int) -> np.ndarray:
    """[true, predicted] counts."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(true_ids, int), np.asarray(predicted_ids, int)), 1)
    return matrix


def confusion_png(matrix: np.ndarray, labels: Sequence[str], title: str = "confusion matrix"):
    n = len(labels)
    size = max(4.0, 0.45 * n + 2)
    fig = _figure(size, size)
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues", vmin=0)
    ticks = range(n)
    ax.set_xticks(ticks, labels, rotation=90, fontsize=8 if n > 20 else 10)
    ax.set_yticks(ticks, labels, fontsize=8 if n > 20 else 10)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = matrix.max() if matrix.size else 0
    if n <= 30:
        for i in range(n):
            for j in range(n):
                colour = "white" if matrix[i, j] > peak / 2 else "black"
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=colour)
    ax.set_title(title)
    return figure_png(fig)


# Class-mean cosine similarity (the ResNet50 tutorial) ----------------------------------------


def class_means(features: np.ndarray, label_ids, num_classes: int) -> np.ndarray:
    """[num_classes, D]; a class without features gets a row of NaN."""
    features = np.asarray(features, np.float64)
    label_ids = np.asarray(label_ids, int)
    means = np.full((num_classes, features.shape[1]), np.nan)
    for c in range(num_classes):
        rows = features[label_ids == c]
        if len(rows):
            means[c] = rows.mean(axis=0)
    return means


def cosine_similarity_matrix(features: np.ndarray, label_ids, num_classes: int) -> np.ndarray:
    """Cosine similarity between class-mean features: near-1 off the diagonal means two classes
    look alike to the backbone, whatever the head learns."""
    means = class_means(features, label_ids, num_classes)
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    unit = np.divide(means, norms, out=np.full_like(means, np.nan), where=norms > 0)
    return np.clip(unit @ unit.T, -1.0, 1.0)


def cosine_heatmap_png(matrix: np.ndarray, labels: Sequence[str]) -> bytes:
    n = len(labels)
    size = max(4.0, 0.45 * n + 2.5)
    fig = _figure(size + 1, size)
    ax = fig.subplots()
    image = ax.imshow(
        np.ma.masked_invalid(matrix), cmap="viridis", vmin=-1 if (matrix < 0).any() else 0, vmax=1
    )
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = range(n)
    ax.set_xticks(ticks, labels, rotation=90, fontsize=8 if n > 20 else 10)
    ax.set_yticks(ticks, labels, fontsize=8 if n > 20 else 10)
    if n <= MAX_ANNOTATED_CLASSES:
        for i in range(n):
            for j in range(n):
                value = matrix[i, j]
                text = "–" if np.isnan(value) else f"{value:.2f}"
                colour = "black" if not np.isnan(value) and value > 0.6 else "white"
                ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=8)
    ax.set_title("cosine similarity of class-mean features")
    return figure_png(fig)


# t-SNE of the bottlenecks (the Keras bottleneck tutorial) ------------------------------------


def subsample(n: int, limit: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most `limit` of n items; the same for the same (n, limit, seed)."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def tsne_embedding(
    features: np.ndarray, label_ids, max_points: int = MAX_TSNE_POINTS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """2-D t-SNE of at most max_points features (PCA to 50 dims first when wider, as t-SNE's
    authors recommend); returns (points [n, 2], their label ids)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    features = np.asarray(features, np.float32)
    label_ids = np.asarray(label_ids)
    keep = subsample(len(features), max_points, seed)
    x, y = features[keep], label_ids[keep]
    if len(x) < 4:
        raise ValueError(f"t-SNE needs at least 4 points; have {len(x)}")
    # One thread: the same picture on any machine (threaded Barnes-Hut sums in varying order),
    # and OpenMP threads spinning against a busy machine made small t-SNEs 10x slower.
    with threadpool_limits(1):
        if x.shape[1] > TSNE_PCA_DIMS:
            x = PCA(min(TSNE_PCA_DIMS, len(x)), random_state=seed).fit_transform(x)
        perplexity = min(30.0, (len(x) - 1) / 3)
        points = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    return points, y


def _class_colours(n: int):
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["turbo"](i / max(1, n - 1)) for i in range(n)]


def tsne_png(
    features: np.ndarray,
    label_ids,
    labels: Sequence[str],
    max_points: int = MAX_TSNE_POINTS,
    seed: int = 0,
) -> bytes:
    try:
        points, ids = tsne_embedding(features, label_ids, max_points, seed)
    except ValueError as exc:
        return _message_png(f"no t-SNE: {exc}")
    fig = _figure(7, 6)
    ax = fig.subplots()
    colours = _class_colours(len(labels))
    for c, label in enumerate(labels):
        mine = ids == c
        if mine.any():
            ax.scatter(points[mine, 0], points[mine, 1], s=10, color=colours[c], label=label)
    if len(labels) <= MAX_ANNOTATED_CLASSES:
        ax.legend(markerscale=2, fontsize=8, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"t-SNE of bottleneck features ({len(points)} images)")
    return figure_png(fig)


# Image grids -----------------------------------------------------------------------------------


def image_grid_png(
    images: Sequence[np.ndarray | None],
    titles: Sequence[str],
    colours: Sequence[str] | None = None,
    title: str = "",
    columns: int = 5,
    empty: str = "no images",
) -> bytes:
    """Images (uint8 [H, W, 3], or None for one that could not be read) with a title each."""
    if not images:
        return _message_png(empty)
    columns = max(1, min(columns, len(images)))
    lines = math.ceil(len(images) / columns)
    fig = _figure(2.6 * columns, 2.8 * lines + (0.4 if title else 0))
    axes = np.atleast_1d(fig.subplots(lines, columns, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for i, (ax, pixels) in enumerate(zip(axes, images)):
        if pixels is not None:
            ax.imshow(pixels)
        else:
            ax.text(0.5, 0.5, "(unreadable)", ha="center", va="center")
        ax.set_title(titles[i], fontsize=8, color=colours[i] if colours else "black")
    if title:
        fig.suptitle(title)
    return figure_png(fig)


def prediction_grid_png(
    images: Sequence[np.ndarray | None],
    true_ids,
    predicted_ids,
    scores,
    labels: Sequence[str],
    title: str = "predictions (green right, red wrong)",
    columns: int = 5,
) -> bytes:
    titles, colours = [], []
    for t, p, s in zip(true_ids, predicted_ids, scores):
        titles.append(f"true: {labels[t]}\npred: {labels[p]} ({s:.2f})")
        colours.append(RIGHT if t == p else WRONG)
    return image_grid_png(images, titles, colours, title, columns, empty="no images to show")


def misclassified_grid_png(
    images: Sequence[np.ndarray | None],
    true_ids,
    predicted_ids,
    scores,
    labels: Sequence[str],
    limit: int = 25,
    columns: int = 5,
) -> bytes:
    """The first `limit` wrong predictions among the images given."""
    wrong = [i for i, (t, p) in enumerate(zip(true_ids, predicted_ids)) if t != p][:limit]
    return image_grid_png(
        [images[i] for i in wrong],
        [
            f"true: {labels[true_ids[i]]}\npred: {labels[predicted_ids[i]]} ({scores[i]:.2f})"
            for i in wrong
        ],
        [WRONG] * len(wrong),
        "misclassified (true / predicted)",
        columns,
        empty="no misclassified images",
    )
