"""The OOD detector's numpy fit on Gaussians whose answers are known."""

import numpy as np
import pytest

from export.publishing import ood


def _classes(rng, n=2000, d=8, k=3):
    means = rng.normal(0, 5, (k, d))
    y = rng.integers(0, k, n)
    return means[y] + rng.normal(0, 1, (n, d)), y, means


def test_identity_covariance_gives_squared_euclidean_distance():
    rng = np.random.default_rng(0)
    x, y, means = _classes(rng)
    detector = ood.fit(x, y, 3)
    probe = means[1] + np.array([2.0, 0, 0, 0, 0, 0, 0, 0])
    # Σ ≈ I: the distance to the nearest mean is about 2² = 4.
    assert ood.scores(detector, probe[None])[0] == pytest.approx(4.0, rel=0.15)
    assert ood.scores(detector, means)[:, None] == pytest.approx(np.zeros((3, 1)), abs=0.05)


def test_scores_follow_chi_square_and_threshold_meets_the_fpr():
    rng = np.random.default_rng(1)
    d = 6
    mix = np.eye(d) + 0.3 * rng.normal(0, 1, (d, d))  # well conditioned: shrinkage ~ 0
    means = rng.normal(0, 60, (4, d))
    y = rng.integers(0, 4, 20000)
    x = means[y] + rng.normal(0, 1, (20000, d)) @ mix.T  # Σ = mix mixᵀ, shared
    detector = ood.fit(x[:10000], y[:10000], 4)
    assert detector.shrinkage < 0.01  # many rows, few dimensions: hardly any shrinkage
    s = ood.scores(detector, x[10000:15000])
    assert np.mean(s) == pytest.approx(d, rel=0.05)  # min over classes of χ²(d): ≈ d when apart
    detector = ood.calibrate(detector, x[10000:15000], 0.05, "validation")
    flagged = ood.scores(detector, x[15000:]) > detector.threshold
    assert flagged.mean() == pytest.approx(0.05, abs=0.01)
    far = means[0] + 8 * (mix @ np.ones(d)) / np.sqrt(d)
    assert ood.scores(detector, far[None])[0] > detector.threshold
    card = detector.card(10000)
    assert card["threshold"] == detector.threshold and card["feature_dim"] == d


def test_few_rows_many_dimensions_shrink_and_stay_finite():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (50, 200))
    y = rng.integers(0, 5, 50)
    detector = ood.fit(x, y, 6)  # class 5 has no images: never the nearest
    assert 0.5 < detector.shrinkage <= 1
    assert detector.means.shape == (5, 200)
    assert np.all(np.isfinite(ood.scores(detector, rng.normal(0, 1, (10, 200)))))


def test_ledoit_wolf_matches_the_known_shrinkage_on_isotropic_data():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 2, (100, 50))
    cov, shrinkage = ood.ledoit_wolf(x - x.mean(axis=0))
    assert shrinkage > 0.8  # the truth is 4·I: the target
    assert np.trace(cov) / 50 == pytest.approx(4.0, rel=0.1)


def test_calibrate_refuses_a_bad_rate_or_no_images():
    rng = np.random.default_rng(4)
    x, y, _ = _classes(rng, n=100)
    detector = ood.fit(x, y, 3)
    with pytest.raises(ValueError, match="ood-fpr"):
        ood.calibrate(detector, x, 0.0, "validation")
    with pytest.raises(ValueError, match="no validation images"):
        ood.calibrate(detector, x[:0], 0.01, "validation")


def test_graph_and_numpy_scores_match_subtraction_on_many_classes():
    """Both forms avoid the [N, K, D] difference; both must equal it (1,280 features, as
    EfficientNet-Lite0's, 200 classes, rows near a mean, far away and tied between two)."""
    import tensorflow as tf

    from export.publishing.savedmodel import _ood_outputs

    rng = np.random.default_rng(1)
    d, k = 1280, 200
    means = rng.normal(0, 3, (k, d))
    y = rng.integers(0, k, 1500)
    fitted = ood.fit(means[y] + rng.normal(0, 1, (1500, d)), y, k)
    detector = ood.calibrate(fitted, means[y[:300]] + rng.normal(0, 1, (300, d)), 0.01, "val")
    probes = np.concatenate([
        means[:20] + rng.normal(0, 1, (20, d)),
        rng.normal(0, 30, (10, d)),
        (means[:5] + means[5:10]) / 2,
    ])  # fmt: skip
    z = probes @ detector.whitening.astype(np.float64)
    subtracted = ((z[:, None, :] - detector.means[None].astype(np.float64)) ** 2).sum(-1).min(1)
    assert ood.scores(detector, probes) == pytest.approx(subtracted, rel=1e-9)
    graph = _ood_outputs(detector)(tf.constant(probes, tf.float32))
    assert graph["ood_score"].numpy() == pytest.approx(subtracted, rel=1e-5)
    assert list(graph["is_ood"].numpy()) == list(subtracted > detector.threshold)
