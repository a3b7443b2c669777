"""Element-wise non-linearities and softmax; any shape ``(N, ...)``, softmax over the last axis.

Each activation is a forward/backward pair. The backward of each reads what its forward cached:
ReLU and tanh/sigmoid cache their output (cheaper than the input and enough for the derivative).
"""

from __future__ import annotations

import numpy as np


def relu_forward(x: np.ndarray):
    """``max(x, 0)``."""
    out = np.maximum(x, 0)
    return out, out


def relu_backward(grad_out: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Gradient passes where the output was positive; at exactly 0 it is 0, as in PyTorch."""
    return grad_out * (out > 0)


def softmax_forward(x: np.ndarray, axis: int = -1):
    """``exp(x_i) / sum_j exp(x_j)``; the max is subtracted first so exp never overflows."""
    shifted = x - x.max(axis=axis, keepdims=True)
    exps = np.exp(shifted)
    out = exps / exps.sum(axis=axis, keepdims=True)
    return out, (out, axis)


def softmax_backward(grad_out: np.ndarray, cache) -> np.ndarray:
    """``s * (g - sum(g * s))``: the Jacobian-vector product without building the Jacobian."""
    out, axis = cache
    return out * (grad_out - (grad_out * out).sum(axis=axis, keepdims=True))


def log_softmax_forward(x: np.ndarray, axis: int = -1):
    """``x_i - log(sum_j exp(x_j))``, computed as ``(x - max) - log(sum(exp(x - max)))``.

    Stays finite for logits of any size: the largest term of the sum is exactly ``exp(0) = 1``.
    """
    shifted = x - x.max(axis=axis, keepdims=True)
    out = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
    return out, (out, axis)


def log_softmax_backward(grad_out: np.ndarray, cache) -> np.ndarray:
    """``g - softmax * sum(g)``."""
    out, axis = cache
    return grad_out - np.exp(out) * grad_out.sum(axis=axis, keepdims=True)


def tanh_forward(x: np.ndarray):
    out = np.tanh(x)
    return out, out


def tanh_backward(grad_out: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``g * (1 - tanh^2)``."""
    return grad_out * (1 - out * out)


def sigmoid_forward(x: np.ndarray):
    """``1 / (1 + exp(-x))``, written through tanh so large ``|x|`` never overflows exp."""
    out = 0.5 * (np.tanh(0.5 * x) + 1)
    return out, out


def sigmoid_backward(grad_out: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``g * s * (1 - s)``."""
    return grad_out * out * (1 - out)


def linear_forward(x: np.ndarray):
    return x, None


def linear_backward(grad_out: np.ndarray, _cache) -> np.ndarray:
    return grad_out


# name -> (forward, backward). Layers look activations up here, so 'relu' in Conv2D(activation=...)
# and the ReLU layer run the very same code.
ACTIVATIONS = {
    "linear": (linear_forward, linear_backward),
    "relu": (relu_forward, relu_backward),
    "softmax": (softmax_forward, softmax_backward),
    "log_softmax": (log_softmax_forward, log_softmax_backward),
    "tanh": (tanh_forward, tanh_backward),
    "sigmoid": (sigmoid_forward, sigmoid_backward),
}


def dropout_forward(x: np.ndarray, rate: float, rng: np.random.Generator):
    """Inverted dropout: zero each value with probability ``rate``, scale survivors by ``1/(1-rate)``.

    Scaling at training time (not at inference) keeps each value's expectation unchanged, so the
    trained model runs as is. Returns ``(out, mask)``; the mask already holds the scale.
    """
    keep = rng.random(x.shape, dtype=np.float64 if x.dtype == np.float64 else np.float32) >= rate
    mask = keep.astype(x.dtype) / np.asarray(1.0 - rate, dtype=x.dtype)
    return x * mask, mask


def dropout_backward(grad_out: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return grad_out * mask
