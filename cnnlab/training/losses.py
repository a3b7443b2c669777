"""Keras-named losses. Each wraps a forward/backward pair from ``cnnlab.engine.losses``.

A loss object is called Keras' way, ``loss(y_true, y_pred) -> float``. ``Sequential`` also uses
its ``forward``/``backward`` pair, and, for cross-entropy after a softmax output, the fused
``forward_logits``/``backward_logits`` pair (see ``engine.losses``).

>>> import numpy as np
>>> round(CategoricalCrossentropy()(np.array([[0., 1.]]), np.array([[0.5, 0.5]])), 4)
0.6931
"""

from __future__ import annotations

import difflib

import numpy as np

from cnnlab.engine import losses as ops
from cnnlab.engine.activations import softmax_forward
from cnnlab.errors import ConfigError, DataError

#: what ``cnnlab.losses`` (the public module) exports
__all__ = ["Loss", "CategoricalCrossentropy", "SparseCategoricalCrossentropy", "MeanSquaredError",
           "categorical_crossentropy", "sparse_categorical_crossentropy", "mean_squared_error",
           "mse", "smooth_labels", "get", "serialize", "deserialize", "LOSSES"]


class Loss:
    name = "loss"
    #: True if this loss has a fused softmax path: the model then feeds it logits
    fuses_softmax = False

    def __init__(self, from_logits: bool = False):
        self.from_logits = bool(from_logits)

    def __call__(self, y_true, y_pred) -> float:
        y_pred = np.asarray(y_pred)
        y_true = self.prepare_targets(y_true, y_pred.shape)
        if self.from_logits:
            return float(self.forward_logits(y_pred, y_true)[0])
        return float(self.forward(y_pred, y_true)[0])

    def prepare_targets(self, y, output_shape) -> np.ndarray:
        """Check targets against the model's output shape; return them in the loss's dtype."""
        raise NotImplementedError

    def forward(self, y_pred, y_true):
        raise NotImplementedError

    def backward(self, cache):
        raise NotImplementedError

    def forward_logits(self, logits, y_true):
        raise NotImplementedError

    def backward_logits(self, cache):
        raise NotImplementedError

    def get_config(self) -> dict:
        return {"from_logits": self.from_logits}


def smooth_labels(onehot: np.ndarray, label_smoothing: float) -> np.ndarray:
    """``y * (1 - s) + s / K``: every class keeps a little probability (Szegedy et al., 2016),
    the same targets as Keras' and torch's ``label_smoothing``."""
    k = onehot.shape[-1]
    return onehot * (1 - label_smoothing) + label_smoothing / k


class _CrossEntropy(Loss):
    """Shared by the two cross-entropies: ``from_logits`` and ``label_smoothing``."""

    fuses_softmax = True

    def __init__(self, from_logits: bool = False, label_smoothing: float = 0.0):
        super().__init__(from_logits)
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
                or not 0 <= label_smoothing < 1:
            raise ConfigError(f"{type(self).__name__}: label_smoothing must be in [0, 1). "
                              f"Received: label_smoothing={label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


class CategoricalCrossentropy(_CrossEntropy):
    """Cross-entropy with one-hot (or soft) targets of shape ``(N, K)``."""

    name = "categorical_crossentropy"

    def prepare_targets(self, y, output_shape):
        y = _numeric(y, "categorical_crossentropy")
        if y.ndim != 2 or y.shape[1] != output_shape[-1]:
            hint = (" Integer labels need loss='sparse_categorical_crossentropy', or convert them "
                    "with cnnlab.utils.to_categorical(y, num_classes)." if y.ndim == 1 else "")
            raise DataError(f"categorical_crossentropy expects one-hot targets of shape "
                            f"(N, {output_shape[-1]}) to match the model's output; received "
                            f"targets of shape {y.shape}.{hint}")
        return y

    def _targets(self, y_true, dtype):
        y = y_true.astype(dtype, copy=False)
        return smooth_labels(y, self.label_smoothing) if self.label_smoothing else y

    def forward(self, y_pred, y_true):
        return ops.categorical_crossentropy_forward(y_pred, self._targets(y_true, y_pred.dtype))

    def backward(self, cache):
        return ops.categorical_crossentropy_backward(cache)

    def forward_logits(self, logits, y_true):
        return ops.softmax_cross_entropy_forward(logits, self._targets(y_true, logits.dtype))

    def backward_logits(self, cache):
        return ops.softmax_cross_entropy_backward(cache)


class SparseCategoricalCrossentropy(_CrossEntropy):
    """Cross-entropy with integer labels of shape ``(N,)`` (or ``(N, 1)``), values in [0, K).
    With ``label_smoothing`` the labels become smoothed one-hot targets."""

    name = "sparse_categorical_crossentropy"

    def prepare_targets(self, y, output_shape):
        y = _numeric(y, "sparse_categorical_crossentropy")
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            hint = (" One-hot targets need loss='categorical_crossentropy'." if y.ndim == 2
                    else "")
            raise DataError(f"sparse_categorical_crossentropy expects integer labels of shape "
                            f"(N,); received shape {y.shape}.{hint}")
        if y.size and (np.any(y != np.round(y))):
            raise DataError("sparse_categorical_crossentropy expects integer class labels; "
                            "received non-integer values.")
        num_classes = output_shape[-1]
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(f"Labels must be in [0, {num_classes}) for a model with "
                            f"{num_classes} outputs; received labels from {int(y.min())} to "
                            f"{int(y.max())}.")
        return y.astype(np.intp, copy=False)

    def _smoothed(self, y_true, like):
        onehot = np.zeros(like.shape, dtype=like.dtype)                      # (N, K)
        onehot[np.arange(len(y_true)), y_true] = 1
        return smooth_labels(onehot, self.label_smoothing)

    # each forward's cache names the backward that undoes it, so backward never re-decides
    def forward(self, y_pred, y_true):
        if self.label_smoothing:
            loss, cache = ops.categorical_crossentropy_forward(
                y_pred, self._smoothed(y_true, y_pred))
            return loss, (ops.categorical_crossentropy_backward, cache)
        loss, cache = ops.sparse_categorical_crossentropy_forward(y_pred, y_true)
        return loss, (ops.sparse_categorical_crossentropy_backward, cache)

    def backward(self, cache):
        backward, cache = cache
        return backward(cache)

    def forward_logits(self, logits, y_true):
        if self.label_smoothing:
            loss, cache = ops.softmax_cross_entropy_forward(logits, self._smoothed(y_true, logits))
            return loss, (ops.softmax_cross_entropy_backward, cache)
        loss, cache = ops.sparse_softmax_cross_entropy_forward(logits, y_true)
        return loss, (ops.sparse_softmax_cross_entropy_backward, cache)

    backward_logits = backward


class MeanSquaredError(Loss):
    """``mean((y_pred - y_true)^2)``; targets have the model's output shape."""

    name = "mean_squared_error"

    def __init__(self):
        super().__init__(from_logits=False)

    def prepare_targets(self, y, output_shape):
        y = _numeric(y, "mean_squared_error")
        if y.shape[1:] != tuple(output_shape[1:]) and y.shape[1:] != tuple(output_shape):
            raise DataError(f"mean_squared_error expects targets shaped like the model's output "
                            f"(N, {', '.join(map(str, output_shape[1:]))}); received {y.shape}.")
        return y

    def forward(self, y_pred, y_true):
        return ops.mse_forward(y_pred, y_true.astype(y_pred.dtype, copy=False))

    def backward(self, cache):
        return ops.mse_backward(cache)

    def get_config(self):
        return {}


def _numeric(y, loss_name) -> np.ndarray:
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.number) and y.dtype != np.bool_:
        raise DataError(f"{loss_name}: targets must be numeric; received dtype {y.dtype}.")
    if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
        raise DataError(f"{loss_name}: targets contain NaN or Inf.")
    return y


# --- Keras' function spellings: per-sample losses ---------------------------------------------
def categorical_crossentropy(y_true, y_pred, from_logits=False) -> np.ndarray:
    """Per-sample cross-entropy, ``(N,)``."""
    y_pred = np.asarray(y_pred, dtype=np.float64)
    probs = softmax_forward(y_pred)[0] if from_logits else y_pred
    return -(np.asarray(y_true) * np.log(np.clip(probs, ops.EPSILON, 1 - ops.EPSILON))).sum(-1)


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False) -> np.ndarray:
    y_pred = np.asarray(y_pred, dtype=np.float64)
    onehot = np.eye(y_pred.shape[-1])[np.asarray(y_true).astype(int).reshape(-1)]
    return categorical_crossentropy(onehot, y_pred, from_logits)


def mean_squared_error(y_true, y_pred) -> np.ndarray:
    return ((np.asarray(y_pred) - np.asarray(y_true)) ** 2).mean(axis=-1)


mse = mean_squared_error

LOSSES = {
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError,
}
_FUNCTIONS = {categorical_crossentropy: CategoricalCrossentropy,
              sparse_categorical_crossentropy: SparseCategoricalCrossentropy,
              mean_squared_error: MeanSquaredError}


def get(identifier) -> Loss:
    """A loss from a Keras name, a function of this module, a Loss class or an instance."""
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Loss):
        return identifier()
    if callable(identifier) and identifier in _FUNCTIONS:
        return _FUNCTIONS[identifier]()
    if isinstance(identifier, str) and identifier.lower() in LOSSES:
        return LOSSES[identifier.lower()]()
    hint = difflib.get_close_matches(str(identifier).lower(), LOSSES, n=1)
    raise ConfigError(f"Unknown loss {identifier!r}. Expected one of {sorted(LOSSES)}, a function "
                      f"of cnnlab.losses or a Loss instance"
                      + (f"; did you mean {hint[0]!r}?" if hint else "."))


def serialize(loss: Loss) -> dict:
    return {"class_name": type(loss).__name__, "config": loss.get_config()}


def deserialize(config: dict) -> Loss:
    classes = {cls.__name__: cls for cls in set(LOSSES.values())}
    if not isinstance(config, dict) or config.get("class_name") not in classes:
        raise ConfigError(f"Unknown loss in configuration: {config!r}")
    return classes[config["class_name"]](**config.get("config", {}))
