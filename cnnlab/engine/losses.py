"""Losses, averaged over the batch. Each forward returns ``(loss, cache)``; backward ``-> grad``.

Shapes::

    logits / probs / pred   (N, K)       K classes (MSE accepts any shape)
    target one-hot          (N, K)
    labels                  (N,)         integers in [0, K)

Softmax followed by cross-entropy has the *fused* gradient ``(softmax(z) - y) / N``: it never
divides by a probability, so it stays exact and finite even when a probability underflows to 0
(logits of +-1e4). ``Sequential`` takes this path whenever a softmax output meets a cross-entropy
loss. The probability-space versions below exist for models that end in something else.
"""

from __future__ import annotations

import numpy as np

from cnnlab.engine.activations import log_softmax_forward
from cnnlab.engine.arrays import array_module

# Keras clips probabilities into [EPSILON, 1 - EPSILON] before taking logs.
EPSILON = 1e-7


def softmax_cross_entropy_forward(logits: np.ndarray, target: np.ndarray):
    """``mean_n( -sum_k target[n, k] * log_softmax(logits)[n, k] )``."""
    log_probs, _ = log_softmax_forward(logits)                     # (N, K)
    loss = -(target * log_probs).sum() / logits.shape[0]
    return loss, (log_probs, target)


def softmax_cross_entropy_backward(cache) -> np.ndarray:
    """``(softmax(z) * sum_k y_k - y) / N``; for one-hot targets simply ``(p - y) / N``."""
    log_probs, target = cache
    xp = array_module(log_probs)
    probs = xp.exp(log_probs)
    return (probs * target.sum(axis=1, keepdims=True) - target) / log_probs.shape[0]


def sparse_softmax_cross_entropy_forward(logits: np.ndarray, labels: np.ndarray):
    """``mean_n( -log_softmax(logits)[n, labels[n]] )``: PyTorch's ``F.cross_entropy``."""
    xp = array_module(logits)
    log_probs, _ = log_softmax_forward(logits)                     # (N, K)
    picked = log_probs[xp.arange(logits.shape[0]), labels]         # (N,)
    return -picked.sum() / logits.shape[0], (log_probs, labels)


def sparse_softmax_cross_entropy_backward(cache) -> np.ndarray:
    """``(p - onehot(labels)) / N`` without building the one-hot matrix."""
    log_probs, labels = cache
    xp = array_module(log_probs)
    grad = xp.exp(log_probs)
    grad[xp.arange(grad.shape[0]), labels] -= 1
    return grad / grad.shape[0]


def categorical_crossentropy_forward(probs: np.ndarray, target: np.ndarray):
    """``mean_n( -sum_k y log(clip(p)) )`` on probabilities, clipped as Keras does."""
    xp = array_module(probs)
    clipped = xp.clip(probs, EPSILON, 1 - EPSILON)
    loss = -(target * xp.log(clipped)).sum() / probs.shape[0]
    return loss, (probs, clipped, target)


def categorical_crossentropy_backward(cache) -> np.ndarray:
    """``-y / p / N`` where p was not clipped; a clipped probability passes no gradient."""
    probs, clipped, target = cache
    inside = (probs == clipped)
    return -target / clipped * inside / probs.shape[0]


def sparse_categorical_crossentropy_forward(probs: np.ndarray, labels: np.ndarray):
    """Probability-space cross-entropy with integer labels."""
    xp = array_module(probs)
    rows = xp.arange(probs.shape[0])
    picked = probs[rows, labels]
    clipped = xp.clip(picked, EPSILON, 1 - EPSILON)
    return -xp.log(clipped).sum() / probs.shape[0], (probs.shape, probs.dtype, labels,
                                                      picked, clipped)


def sparse_categorical_crossentropy_backward(cache) -> np.ndarray:
    shape, dtype, labels, picked, clipped = cache
    xp = array_module(picked)
    grad = xp.zeros(shape, dtype=dtype)
    grad[xp.arange(shape[0]), labels] = -1 / clipped * (picked == clipped) / shape[0]
    return grad


def mse_forward(pred: np.ndarray, target: np.ndarray):
    """``mean( (pred - target)^2 )`` over every element."""
    diff = pred - target
    return (diff * diff).mean(), diff


def mse_backward(diff: np.ndarray) -> np.ndarray:
    """``2 (pred - target) / size``."""
    return 2 * diff / diff.size
