import numpy as np
from pngcheck import has_colour, png_pixels

from export import plots


def _clusters(n_per_class=100, dim=64, classes=3, seed=0):
    """Well-separated Gaussian clusters: any sound embedding keeps them apart."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (classes, dim))
    x = np.concatenate([c + rng.normal(0, 1, (n_per_class, dim)) for c in centres])
    return x.astype(np.float32), np.repeat(np.arange(classes), n_per_class)


def test_cosine_similarity_of_class_means():
    rng = np.random.default_rng(0)
    directions = np.array([[5, 0, 0, 0], [0, 5, 0, 0], [5, 5, 0, 0]], float)
    x = np.concatenate([d + rng.normal(0, 0.01, (20, 4)) for d in directions])
    y = np.repeat([0, 1, 2], 20)
    m = plots.cosine_similarity_matrix(x, y, num_classes=4)  # class 3 has no features
    np.testing.assert_allclose(np.diag(m)[:3], 1.0, atol=1e-12)
    np.testing.assert_allclose(m[:3, :3], m[:3, :3].T)
    assert abs(m[0, 1]) < 0.01
    np.testing.assert_allclose(m[0, 2], np.sqrt(0.5), atol=0.01)
    assert np.isnan(m[3]).all() and np.isnan(m[:, 3]).all()


def test_cosine_similarity_diagonal_is_one_for_any_features():
    x = np.random.default_rng(1).normal(size=(200, 32))
    y = np.arange(200) % 7
    np.testing.assert_allclose(np.diag(plots.cosine_similarity_matrix(x, y, 7)), 1.0, atol=1e-12)


def test_confusion_matrix_counts():
    m = plots.confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], 3)
    assert m.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_subsample_is_deterministic_bounded_and_sorted():
    a = plots.subsample(10_000, 2000, seed=3)
    assert len(a) == len(set(a.tolist())) == 2000 and (np.diff(a) > 0).all()
    assert np.array_equal(a, plots.subsample(10_000, 2000, seed=3))
    assert not np.array_equal(a, plots.subsample(10_000, 2000, seed=4))
    assert np.array_equal(plots.subsample(5, 2000), np.arange(5))


def test_tsne_subsamples_after_pca_and_keeps_labels_with_their_points():
    x, y = _clusters()  # 300 points, 64 dims: the PCA-to-50 path
    points, ids = plots.tsne_embedding(x, y, max_points=150, seed=0)
    assert points.shape == (150, 2) and len(ids) == 150
    again, _ = plots.tsne_embedding(x, y, max_points=150, seed=0)
    np.testing.assert_allclose(points, again)
    # Each point's nearest neighbour in the embedding is of its class: labels stayed aligned.
    d = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert np.mean(ids[d.argmin(axis=1)] == ids) > 0.95


def test_tsne_and_heatmap_pngs_are_real_pictures():
    x, y = _clusters(n_per_class=40)
    labels = ["cat", "dog", "fox"]
    png_pixels(plots.tsne_png(x, y, labels))
    png_pixels(plots.cosine_heatmap_png(plots.cosine_similarity_matrix(x, y, 3), labels))
    many = [f"class_{i}" for i in range(25)]  # over the annotation limit
    xs = np.random.default_rng(0).normal(size=(250, 8))
    m = plots.cosine_similarity_matrix(xs, np.arange(250) % 25, 25)
    png_pixels(plots.cosine_heatmap_png(m, many))
    # Too few points for t-SNE: a picture saying so, not an exception.
    png_pixels(plots.tsne_png(x[:3], y[:3], labels), min_colours=2)


def test_confusion_and_curves_pngs(tmp_path):
    png_pixels(plots.confusion_png(np.array([[5, 1], [0, 7]]), ["a", "b"]))
    history = {"loss": [1.0, 0.5, 0.2], "val_loss": [1.1, 0.7, 0.4], "accuracy": [0.5, 0.8, 0.9]}
    plots.plot_curves(history, tmp_path / "curves.png")
    png_pixels((tmp_path / "curves.png").read_bytes())
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file


def _grey_images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(100, 156, (40, 40, 3), dtype=np.uint8) for _ in range(n)]


def test_prediction_grid_colours_right_green_and_wrong_red():
    labels = ["a", "b", "c"]
    mixed = plots.prediction_grid_png(
        _grey_images(4), [0, 1, 2, 0], [0, 2, 2, 1], [0.9, 0.6, 0.8, 0.7], labels
    )
    pixels = png_pixels(mixed)
    assert has_colour(pixels, plots.RIGHT) and has_colour(pixels, plots.WRONG)
    all_right = png_pixels(
        plots.prediction_grid_png(_grey_images(3), [0, 1, 2], [0, 1, 2], [0.9] * 3, labels)
    )
    assert has_colour(all_right, plots.RIGHT) and not has_colour(all_right, plots.WRONG)
    # An unreadable image (None) leaves a labelled cell rather than failing the grid.
    png_pixels(plots.prediction_grid_png([None, *_grey_images(1)], [0, 1], [0, 1], [1, 1], labels))


def test_misclassified_grid_shows_only_wrong_predictions():
    labels = ["a", "b"]
    images = _grey_images(3)
    pixels = png_pixels(
        plots.misclassified_grid_png(images, [0, 1, 1], [0, 0, 1], [0.9, 0.8, 0.7], labels)
    )
    assert has_colour(pixels, plots.WRONG) and not has_colour(pixels, plots.RIGHT)
    none_wrong = plots.misclassified_grid_png(images, [0, 1, 1], [0, 1, 1], [1, 1, 1], labels)
    png_pixels(none_wrong, min_colours=2)
