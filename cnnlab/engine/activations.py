"""Element-wise non-linearities and softmax; any shape ``(N, ...)``, softmax over the last axis.

Each activation is a forward/backward pair. The backward of each reads what its forward cached:
ReLU and tanh/sigmoid cache their output (cheaper than the input and enough for the derivative).
"""

from __future__ import annotations

import math

import numpy as np

from cnnlab.engine import compiled
from cnnlab.engine.arrays import array_module

_SQRT_PI = math.sqrt(math.pi)


def relu_forward(x: np.ndarray):
    """``max(x, 0)``."""
    xp = array_module(x)
    out = xp.maximum(x, 0)
    return out, out


def relu_backward(grad_out: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Gradient passes where the output was positive; at exactly 0 it is 0, as in PyTorch.
    Compiled (``activations_kernels``) for equal shapes of one float32 or float64 dtype: one
    pass instead of a mask and a product."""
    kernels = compiled.module("activations_kernels", grad_out, out)
    if kernels is not None and grad_out.shape == out.shape and grad_out.dtype == out.dtype \
            and grad_out.dtype in compiled.KERNEL_DTYPES:
        grad_out, out = np.ascontiguousarray(grad_out), np.ascontiguousarray(out)
        grad_in = np.empty_like(grad_out)
        kernels.relu_backward(grad_out.reshape(-1), out.reshape(-1), grad_in.reshape(-1))
        return grad_in
    return grad_out * (out > 0)


def softmax_forward(x: np.ndarray, axis: int = -1):
    """``exp(x_i) / sum_j exp(x_j)``; the max is subtracted first so exp never overflows."""
    xp = array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    exps = xp.exp(shifted)
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
    xp = array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    out = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
    return out, (out, axis)


def log_softmax_backward(grad_out: np.ndarray, cache) -> np.ndarray:
    """``g - softmax * sum(g)``."""
    xp = array_module(grad_out)
    out, axis = cache
    return grad_out - xp.exp(out) * grad_out.sum(axis=axis, keepdims=True)


def tanh_forward(x: np.ndarray):
    xp = array_module(x)
    out = xp.tanh(x)
    return out, out


def tanh_backward(grad_out: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``g * (1 - tanh^2)``."""
    return grad_out * (1 - out * out)


def sigmoid_forward(x: np.ndarray):
    """``1 / (1 + exp(-x))``, written through tanh so large ``|x|`` never overflows exp."""
    xp = array_module(x)
    out = 0.5 * (xp.tanh(0.5 * x) + 1)
    return out, out


def sigmoid_backward(grad_out: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``g * s * (1 - s)``."""
    return grad_out * out * (1 - out)


def leaky_relu_forward(x: np.ndarray, negative_slope: float = 0.2):
    """``x`` where positive, ``negative_slope * x`` elsewhere (Keras' function default 0.2)."""
    xp = array_module(x)
    positive = x > 0
    return xp.where(positive, x, x * xp.asarray(negative_slope, x.dtype)), (positive,
                                                                          negative_slope)


def leaky_relu_backward(grad_out: np.ndarray, cache) -> np.ndarray:
    xp = array_module(grad_out)
    positive, negative_slope = cache
    return xp.where(positive, grad_out, grad_out * xp.asarray(negative_slope, grad_out.dtype))


def elu_forward(x: np.ndarray, alpha: float = 1.0):
    """``x`` where positive, ``alpha * (exp(x) - 1)`` elsewhere; ``expm1`` keeps small negative
    inputs exact, and ``min(x, 0)`` keeps exp from overflowing where the branch is not taken."""
    xp = array_module(x)
    positive = x > 0
    out = xp.where(positive, x, xp.asarray(alpha, x.dtype) * xp.expm1(xp.minimum(x, 0)))
    return out, (positive, out, alpha)


def elu_backward(grad_out: np.ndarray, cache) -> np.ndarray:
    """``g`` where positive, ``g * (out + alpha)`` (= ``g * alpha * exp(x)``) elsewhere."""
    xp = array_module(grad_out)
    positive, out, alpha = cache
    return grad_out * xp.where(positive, 1, out + xp.asarray(alpha, out.dtype))


def silu_forward(x: np.ndarray):
    """SiLU, also called swish: ``x * sigmoid(x)``."""
    s = sigmoid_forward(x)[0]
    return x * s, (x, s)


def silu_backward(grad_out: np.ndarray, cache) -> np.ndarray:
    """``g * s * (1 + x * (1 - s))``."""
    x, s = cache
    return grad_out * s * (1 + x * (1 - s))


def hard_sigmoid_forward(x: np.ndarray):
    """Keras 3's (and torch's) ``relu6(x + 3) / 6``: 0 below -3, 1 above 3, a line between."""
    xp = array_module(x)
    inside = (x > -3) & (x < 3)
    return xp.clip(x / xp.asarray(6, x.dtype) + xp.asarray(0.5, x.dtype), 0, 1), inside


def hard_sigmoid_backward(grad_out: np.ndarray, inside: np.ndarray) -> np.ndarray:
    xp = array_module(grad_out)
    return grad_out * inside / xp.asarray(6, grad_out.dtype)


def erf(x: np.ndarray) -> np.ndarray:
    """The error function to double precision (1.3e-15 relative, checked against ``math.erf``
    from -8 to 8), vectorised; NumPy has none. For ``|x| < 3`` the series
    ``erf(x) = 2/sqrt(pi) exp(-x^2) sum_n (2x^2)^n x / (1*3*...*(2n+1))`` (positive terms, no
    cancellation; 60 terms suffice); beyond, ``erfc`` by its continued fraction
    ``exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + ...))))`` (Lentz's method)."""
    xp = array_module(x)
    z = xp.abs(xp.asarray(x, dtype=xp.float64))
    out = xp.empty_like(z)
    near = z < 3
    zn = z[near]
    term, total, ratio = zn.copy(), zn.copy(), 2 * zn * zn
    for n in range(1, 60):
        term = term * ratio / (2 * n + 1)
        total += term
    out[near] = 2 / _SQRT_PI * xp.exp(-zn * zn) * total
    zf = z[~near]
    fraction, c, d = zf.copy(), zf.copy(), xp.zeros_like(zf)
    for k in range(1, 80):
        d = 1 / (zf + (k / 2) * d)
        c = zf + (k / 2) / c
        fraction = fraction * c * d
    out[~near] = 1 - xp.exp(-zf * zf) / _SQRT_PI / fraction
    return xp.copysign(out, x)


def gelu_forward(x: np.ndarray):
    """GELU, exact (Keras' default): ``x * Phi(x)``, with ``Phi(x) = (1 + erf(x / sqrt 2)) / 2``
    the standard normal's distribution function (Hendrycks & Gimpel, 2016)."""
    phi_cdf = (0.5 * (1 + erf(x / math.sqrt(2)))).astype(x.dtype)
    return x * phi_cdf, (x, phi_cdf)


def gelu_backward(grad_out: np.ndarray, cache) -> np.ndarray:
    """``g * (Phi(x) + x * phi(x))``, ``phi`` the normal density."""
    xp = array_module(grad_out)
    x, phi_cdf = cache
    density = xp.exp(-0.5 * x * x) / xp.asarray(math.sqrt(2 * math.pi), x.dtype)
    return grad_out * (phi_cdf + x * density)


_GELU_C = math.sqrt(2 / math.pi)


def gelu_tanh_forward(x: np.ndarray):
    """GELU's tanh approximation, ``x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``: Keras'
    ``gelu(x, approximate=True)``, torch's ``gelu(x, approximate='tanh')``."""
    xp = array_module(x)
    t = xp.tanh(_GELU_C * (x + 0.044715 * x * x * x))
    return 0.5 * x * (1 + t), (x, t)


def gelu_tanh_backward(grad_out: np.ndarray, cache) -> np.ndarray:
    x, t = cache
    inner = _GELU_C * (1 + 3 * 0.044715 * x * x)
    return grad_out * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * inner)


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
    "leaky_relu": (leaky_relu_forward, leaky_relu_backward),
    "elu": (elu_forward, elu_backward),
    "silu": (silu_forward, silu_backward),
    "swish": (silu_forward, silu_backward),                  # Keras' other name for SiLU
    "hard_sigmoid": (hard_sigmoid_forward, hard_sigmoid_backward),
    "gelu": (gelu_forward, gelu_backward),
    # Keras spells this gelu(x, approximate=True); an activation here is a name, so it has one
    "gelu_tanh": (gelu_tanh_forward, gelu_tanh_backward),
}


def dropout_forward(x: np.ndarray, rate: float, rng: np.random.Generator):
    """Inverted dropout: zero each value with probability ``rate``, scale survivors by ``1/(1-rate)``.

    Scaling at training time (not at inference) keeps each value's expectation unchanged, so the
    trained model runs as is. Returns ``(out, mask)``; the mask already holds the scale. The
    draws come from ``rng``, a NumPy generator, whatever module ``x`` is from (a CuPy ``x`` gets
    its mask copied over): the same seed drops the same values on either.
    """
    keep = rng.random(x.shape, dtype=np.float64 if x.dtype == np.float64 else np.float32) >= rate
    xp = array_module(x)
    mask = xp.asarray(keep).astype(x.dtype) / xp.asarray(1.0 - rate, dtype=x.dtype)
    return x * mask, mask


def dropout_backward(grad_out: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return grad_out * mask
