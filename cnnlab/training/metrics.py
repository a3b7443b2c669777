"""Metrics accumulated over an epoch, Keras-named.

``'accuracy'`` resolves the way Keras does: sparse labels use ``sparse_categorical_accuracy``,
one-hot targets ``categorical_accuracy``, a single output ``binary_accuracy``.
"""

from __future__ import annotations

import numpy as np

from cnnlab.errors import ConfigError

#: what ``cnnlab.metrics`` (the public module) exports
__all__ = ["MeanMetric", "binary_accuracy", "categorical_accuracy", "sparse_categorical_accuracy",
           "get"]


def categorical_accuracy(y_true, y_pred) -> np.ndarray:
    """1 where the predicted class (argmax) equals the one-hot target's, per sample."""
    return (np.argmax(y_pred, axis=-1) == np.argmax(y_true, axis=-1)).astype(np.float64)


def sparse_categorical_accuracy(y_true, y_pred) -> np.ndarray:
    return (np.argmax(y_pred, axis=-1) == np.asarray(y_true).reshape(-1)).astype(np.float64)


def binary_accuracy(y_true, y_pred, threshold=0.5) -> np.ndarray:
    return ((np.asarray(y_pred) > threshold) == (np.asarray(y_true) > 0.5)).mean(axis=-1)


class MeanMetric:
    """Running mean of a per-sample function, weighted by sample count."""

    def __init__(self, name: str, fn):
        self.name, self.fn = name, fn
        self.reset()

    def reset(self):
        self.total, self.count = 0.0, 0

    def update(self, y_true, y_pred):
        values = self.fn(y_true, y_pred)
        self.total += float(values.sum())
        self.count += values.size

    def result(self) -> float:
        return self.total / self.count if self.count else 0.0


_BY_NAME = {"categorical_accuracy": categorical_accuracy,
            "sparse_categorical_accuracy": sparse_categorical_accuracy,
            "binary_accuracy": binary_accuracy}


def get(identifier, loss_name: str, output_units: int) -> MeanMetric:
    """Resolve a metric name; ``'accuracy'``/``'acc'`` follow the loss, as in Keras."""
    if identifier in ("accuracy", "acc"):
        if loss_name == "sparse_categorical_crossentropy":
            fn = sparse_categorical_accuracy
        elif output_units == 1:
            fn = binary_accuracy
        else:
            fn = categorical_accuracy
        return MeanMetric("accuracy", fn)
    if identifier in _BY_NAME:
        return MeanMetric(identifier, _BY_NAME[identifier])
    if callable(identifier):
        return MeanMetric(getattr(identifier, "__name__", "metric"), identifier)
    raise ConfigError(f"Unknown metric {identifier!r}. Expected 'accuracy' or one of "
                      f"{sorted(_BY_NAME)}.")
