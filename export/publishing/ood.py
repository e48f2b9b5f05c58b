"""The out-of-distribution detector baked into the exported model, fitted in numpy.

Squared Mahalanobis distance of an image's pooled features (the `embedding` output) to the
nearest class mean, with one covariance shared by all classes (within-class scatter, Ledoit-Wolf
shrinkage: 1280-d features from ~1,400 images need it to be invertible and stable). Stored as a
whitening matrix W (W Wᵀ = Σ⁻¹) and the whitened class means, so the graph needs only a matmul:
ood_score = min_k ||f W − μ_k W||². The threshold is the (1 − fpr) quantile of the validation
split's scores: on images like the training data, `is_ood` is true for about `fpr` of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METHOD = "mahalanobis_tied_ledoit_wolf"
DEFAULT_FPR = 0.01


@dataclass(frozen=True)
class OodDetector:
    whitening: np.ndarray  # [D, D] float32: z = f @ whitening
    means: np.ndarray  # [K, D] float32: class means, whitened
    shrinkage: float
    threshold: float = float("inf")
    fpr: float = DEFAULT_FPR
    calibrated_on: str = ""  # the split the threshold comes from

    @property
    def feature_dim(self) -> int:
        return int(self.whitening.shape[0])

    def card(self, fitted_on: int) -> dict:
        """The model card's `ood` section."""
        return {
            "method": METHOD,
            "score": "squared Mahalanobis distance to the nearest class mean (higher = less "
            "like the training data)",
            "feature_dim": self.feature_dim,
            "shrinkage": round(self.shrinkage, 6),
            "fitted_on": {"split": "train", "images": fitted_on},
            "threshold": self.threshold,
            "fpr": self.fpr,
            "calibrated_on": self.calibrated_on,
        }


def ledoit_wolf(centered: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf shrunk covariance of rows already centred: (covariance, shrinkage in [0, 1])."""
    x = np.asarray(centered, np.float64)
    n, d = x.shape
    cov = x.T @ x / n
    mu = np.trace(cov) / d
    squares = x**2
    beta = (np.sum(squares.T @ squares) / n - np.sum(cov**2)) / (d * n)
    delta = (np.sum(cov**2) - 2 * mu * np.trace(cov) + d * mu**2) / d
    shrinkage = 0.0 if delta <= 0 else float(min(beta, delta) / delta)
    return (1 - shrinkage) * cov + shrinkage * mu * np.eye(d), shrinkage


def fit(features: np.ndarray, labels: np.ndarray, num_classes: int) -> OodDetector:
    """Class means and the shared within-class covariance of the training features."""
    x = np.asarray(features, np.float64)
    y = np.asarray(labels)
    if len(x) < 2:
        raise ValueError(f"cannot fit the OOD detector on {len(x)} training image(s)")
    means = np.zeros((num_classes, x.shape[1]))
    present = [k for k in range(num_classes) if np.any(y == k)]
    for k in present:
        means[k] = x[y == k].mean(axis=0)
    cov, shrinkage = ledoit_wolf(x - means[y])
    eigenvalues, vectors = np.linalg.eigh(cov)
    floor = max(float(eigenvalues.max()), 1e-12) * 1e-10
    whitening = vectors / np.sqrt(np.maximum(eigenvalues, floor))
    # A class without training images has no mean: it is never the nearest.
    means = means[present] @ whitening
    return OodDetector(whitening.astype(np.float32), means.astype(np.float32), shrinkage)


def scores(detector: OodDetector, features: np.ndarray) -> np.ndarray:
    """ood_score of each row, in float64: what the graph computes in float32."""
    z = np.asarray(features, np.float64) @ detector.whitening.astype(np.float64)
    means = detector.means.astype(np.float64)
    return np.maximum(squared_distances(z, means).min(axis=1), 0.0) if len(z) else np.zeros(0)


def squared_distances(z: np.ndarray, means: np.ndarray) -> np.ndarray:
    """‖z − μ‖² of every row to every mean, [N, K], as ‖z‖² − 2 z·μ + ‖μ‖²: memory N·K, not
    the N·K·D of subtracting (a validation split of 10,000 images and 100 classes of 1,280
    features would be 10 GB)."""
    return (z**2).sum(axis=1)[:, None] - 2.0 * (z @ means.T) + (means**2).sum(axis=1)[None, :]


def calibrate(detector: OodDetector, features: np.ndarray, fpr: float, split: str) -> OodDetector:
    """The detector with its threshold at the (1 − fpr) quantile of `features`' scores."""
    if not 0 < fpr < 1:
        raise ValueError(f"--ood-fpr must be in (0, 1), got {fpr}")
    if len(features) == 0:
        raise ValueError(f"no {split} images to choose the OOD threshold on")
    threshold = float(np.quantile(scores(detector, features), 1 - fpr, method="higher"))
    return OodDetector(
        detector.whitening, detector.means, detector.shrinkage, threshold, fpr, split
    )


def parity_problems(
    arrays: dict[str, np.ndarray],
    detector: OodDetector,
    features: np.ndarray,
    signatures: tuple[str, ...],
    tolerance: float,
) -> list[str]:
    """How the exported model's ood_score/is_ood differ from this detector on `features`:
    ood_score within `tolerance` relative, is_ood equal except within that of the threshold."""
    expected = scores(detector, features)
    problems = []
    for name in signatures:
        got = arrays[f"{name}/ood_score"].astype(np.float64)
        rel = np.abs(got - expected) / np.maximum(np.abs(expected), 1.0)
        if rel.size and not float(rel.max()) <= tolerance:
            problems.append(f"{name}/ood_score differs by {float(rel.max()):.3g} relative")
        near = np.abs(expected - detector.threshold) <= tolerance * max(1.0, detector.threshold)
        flags = arrays[f"{name}/is_ood"].astype(bool)
        if np.any((flags != (expected > detector.threshold)) & ~near):
            problems.append(f"{name}/is_ood disagrees with ood_score > {detector.threshold:.6g}")
    return problems
