"""Filters built to detect known patterns, for checking that feature visualisation finds them
(tests/test_viz_sequel.py asserts it, benchmarks/sequel.py prints the numbers)."""

import numpy as np

from cnnlab import Input, Model, layers

NAMES = ("plus", "bar", "ring")


def pattern_detector(size: int, n: int):
    """``(model, patterns)``: a ``size`` x ``size`` greyscale input, one 'valid' ``n`` x ``n``
    conv layer named 'detector' whose three filters are a plus, a diagonal bar and a ring
    (each pattern minus its mean), ReLU, no bias."""
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    patterns = [((np.abs(yy) <= 1) | (np.abs(xx) <= 1)), np.abs(yy + xx) <= 1.5,
                np.abs(np.hypot(yy, xx) - n / 3) <= 1.2]
    patterns = [p.astype(float) for p in patterns]
    inputs = Input((size, size, 1))
    conv = layers.Conv2D(3, n, activation="relu", name="detector")
    model = Model(inputs, conv(inputs))
    kernel = np.stack([p - p.mean() for p in patterns], -1)[:, :, None, :]
    conv.set_weights([kernel.astype(model.dtype), np.zeros(3, model.dtype)])
    return model, patterns


def best_window_correlation(image: np.ndarray, pattern: np.ndarray) -> float:
    """The highest Pearson correlation of ``pattern`` with any window of ``image``."""
    n = pattern.shape[0]
    h, w = image.shape
    return max(np.corrcoef(image[i:i + n, j:j + n].ravel(), pattern.ravel())[0, 1]
               for i in range(h - n + 1) for j in range(w - n + 1))
