import numpy as np

from export.model.heads import VARIANCE_FLOOR, build_head, floor_variance


def test_a_feature_constant_in_training_is_not_amplified_when_it_wakes_up():
    variance = np.array([0.0, 1e-12, 0.5, 1.5], np.float32)
    floored = floor_variance(variance)
    assert floored[0] == floored[1] == np.float32(VARIANCE_FLOOR * 0.5)
    assert floored[2] == 0.5 and floored[3] == 1.5
    head = build_head(4, 3, feature_mean=np.zeros(4, np.float32), feature_variance=variance)
    standardized = head.get_layer("standardize")(np.array([[1.0, 1.0, 0.0, 0.0]], np.float32))
    # 1 / sqrt(0.05) = 4.5, where the raw variance would have given 1 / sqrt(1e-7) = 3162
    assert float(np.max(np.abs(standardized))) < 5
