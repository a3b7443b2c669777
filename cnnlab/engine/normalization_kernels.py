"""Compiled kernels for batch normalization in training, beside its NumPy reference
(``normalization.py``, whose docstring has the formulas). Shapes: ``x, y, dy, dx (M, C)``,
``M = N*H*W`` rows of ``C`` channels; per-channel vectors ``(C,)``.

What they save, per training step of one BatchNormalization: the reference makes 8 passes over
``(M, C)`` arrays (x*x, two column sums, y = x*scale, y += shift; dy's and dy*x's column sums,
dy*scale, += x*slope, += constant); these make 4, and accumulate the sums in float64 as they go.
``python benchmarks/kernels.py`` on 2 cores, float32, forward and backward together: 12.95 ms ->
2.78 ms at M = 131,072, C = 16 (ResNet-20's first stage, batch 128), 5.50 -> 1.42 ms at
32,768 x 32, 2.81 -> 0.69 ms at 8,192 x 64.

    forward                                     backward
    sums[0, c] = sum_m x[m, c]                  sums[0, c] = sum_m dy[m, c]
    sums[1, c] = sum_m x[m, c]^2                sums[1, c] = sum_m dy[m, c] * x[m, c]
    y[m, c] = x[m, c] * scale[c] + shift[c]     dx[m, c] = dy[m, c] * a[c] + x[m, c] * b[c] + k[c]

A ReLU after the normalisation (``relu=True``) runs inside the same passes: forward writes
``max(y, 0)``; backward takes ``dy`` where ``y > 0`` and 0 elsewhere, with ``y`` recomputed from
``x`` by the forward's own arithmetic (one multiply, one add, never fused into an FMA: Numba
compiles without fastmath), so the mask is bit for bit the forward's and no map-sized array is
read or written for it. That saves the ReLU's pass forward and its pass backward.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def channel_sums(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(2, C)`` float64: each channel's sum of a and of a * b, in one pass (forward: x and
    x^2 with ``b = a = x``; backward: dy and dy * x)."""
    rows, channels = a.shape
    sums = np.zeros((2, channels), np.float64)
    for m in range(rows):
        for c in range(channels):
            value = np.float64(a[m, c])
            sums[0, c] += value
            sums[1, c] += value * b[m, c]
    return sums


@numba.njit(cache=True, nogil=True)
def masked_sums(dy: np.ndarray, x: np.ndarray, scale: np.ndarray,
                shift: np.ndarray) -> np.ndarray:
    """:func:`channel_sums` of ``dy`` and ``dy * x`` with ``dy`` taken as 0 where the ReLU cut
    ``x * scale + shift``."""
    rows, channels = x.shape
    sums = np.zeros((2, channels), np.float64)
    for m in range(rows):
        for c in range(channels):
            if x[m, c] * scale[c] + shift[c] > 0:
                value = np.float64(dy[m, c])
                sums[0, c] += value
                sums[1, c] += value * x[m, c]
    return sums


@numba.njit(cache=True, nogil=True)
def scale_shift(x: np.ndarray, scale: np.ndarray, shift: np.ndarray, relu: bool,
                y: np.ndarray) -> np.ndarray:
    """``y = x * scale + shift`` per channel, then ``max(y, 0)`` if ``relu``, in one pass, into
    ``y`` (x's shape and dtype)."""
    rows, channels = x.shape
    zero = np.zeros(1, y.dtype)[0]                  # in y's dtype, so nothing is widened
    if relu:                                        # two loops, so each one vectorises
        for m in range(rows):
            for c in range(channels):
                y[m, c] = max(x[m, c] * scale[c] + shift[c], zero)
    else:
        for m in range(rows):
            for c in range(channels):
                y[m, c] = x[m, c] * scale[c] + shift[c]
    return y


@numba.njit(cache=True, nogil=True)
def input_grad(dy: np.ndarray, x: np.ndarray, a: np.ndarray, b: np.ndarray,
               k: np.ndarray, into_dy: bool, dx: np.ndarray) -> None:
    """``dx = dy * a + x * b + k`` per channel, in one pass, into ``dx``; ``into_dy``: into
    ``dy`` itself (``dx`` is then ``dy``). Said so, not by passing ``dy`` twice: LLVM cannot
    rule out that two arrays overlap, and for ones that do it runs the scalar loop it keeps for
    that case (65,536 x 64 float32: 3.42 ms passed twice, 1.28 ms into dy, 2.10 ms into a new
    array). A flag, not ``dx=None``, so that both run in one compiled signature (a second one
    cost 0.2-0.5 s of a first training step's compile)."""
    if into_dy:
        _input_grad(dy, x, a, b, k, dy)
    else:
        _input_grad(dy, x, a, b, k, dx)


@numba.njit(inline="always")
def _input_grad(dy, x, a, b, k, dx):
    rows, channels = x.shape
    for m in range(rows):
        for c in range(channels):
            dx[m, c] = dy[m, c] * a[c] + x[m, c] * b[c] + k[c]


@numba.njit(cache=True, nogil=True)
def masked_input_grad(dy: np.ndarray, x: np.ndarray, scale: np.ndarray, shift: np.ndarray,
                      a: np.ndarray, b: np.ndarray, k: np.ndarray, into_dy: bool,
                      dx: np.ndarray) -> None:
    """:func:`input_grad` with ``dy`` taken as 0 where the ReLU cut ``x * scale + shift``."""
    if into_dy:
        _masked_input_grad(dy, x, scale, shift, a, b, k, dy)
    else:
        _masked_input_grad(dy, x, scale, shift, a, b, k, dx)


@numba.njit(inline="always")
def _masked_input_grad(dy, x, scale, shift, a, b, k, dx):
    rows, channels = x.shape
    zero = np.zeros(1, dy.dtype)[0]
    for m in range(rows):
        for c in range(channels):
            passed = dy[m, c] if x[m, c] * scale[c] + shift[c] > 0 else zero
            dx[m, c] = passed * a[c] + x[m, c] * b[c] + k[c]


# --- the per-channel arithmetic between the passes ------------------------------------------------
# A (C,) vector's worth of work, but a dozen NumPy calls of ~1-2 us each in Python: one call here
# instead, with the reference's operations in its order and dtypes (float32 stays float32 where
# NumPy keeps it, float64 where NumPy promotes), so the results are the same.

@numba.njit(inline="always")
def _variance(mean_square: float, mean: float) -> float:
    """``np.maximum(mean_square - mean^2, 0)``: NaN stays NaN, as in NumPy (Python's max would
    give 0)."""
    var = mean_square - mean * mean
    return 0.0 if var < 0.0 else var


@numba.njit(cache=True, nogil=True)
def statistics(totals: np.ndarray, gamma: np.ndarray, beta: np.ndarray, epsilon,
               ratio: float, stats: np.ndarray) -> bool:
    """From the whole batch's ``totals`` (float64: the row count M, then the C sums of x, then
    the C sums of x^2), the rows of ``stats`` (5, C), in its dtype: ``mean = sum / M``,
    ``var = max(sum_sq / M - mean^2, 0)`` (both in float64, then rounded), ``inv_std = 1 /
    sqrt(var + epsilon)``, ``scale = gamma * inv_std``, ``shift = beta - mean * scale``.
    ``epsilon``: in stats' dtype. False where a channel's ``mean^2 > ratio * var`` (stats then
    half written, and of no use): the reference's two passes are needed there."""
    channels = stats.shape[1]
    count = totals[0]
    one = np.ones(1, stats.dtype)[0]
    for c in range(channels):
        mean = totals[1 + c] / count
        var = _variance(totals[1 + channels + c] / count, mean)
        if mean * mean > ratio * var:
            return False
        stats[0, c] = mean
        stats[1, c] = var
        stats[2, c] = one / np.sqrt(stats[1, c] + epsilon)
        stats[3, c] = gamma[c] * stats[2, c]
        stats[4, c] = beta[c] - stats[0, c] * stats[3, c]
    return True


@numba.njit(cache=True, nogil=True)
def parameter_grads(sums: np.ndarray, mean: np.ndarray, inv_std: np.ndarray,
                    grads: np.ndarray) -> None:
    """From the float64 ``sums`` (2, C) of dy and of dy * x: ``grads[0] = dbeta = sum dy`` and
    ``grads[1] = dgamma = inv_std * (sum dy*x - mean * dbeta)``, in grads' dtype (the sums
    rounded to it first)."""
    for c in range(grads.shape[1]):
        grads[0, c] = sums[0, c]
        grads[1, c] = sums[1, c]
        grads[1, c] = inv_std[c] * (grads[1, c] - mean[c] * grads[0, c])


@numba.njit(cache=True, nogil=True)
def input_grad_terms(totals: np.ndarray, gamma: np.ndarray, inv_std: np.ndarray,
                     mean: np.ndarray, count: float, terms: np.ndarray) -> None:
    """``a, b, k`` of :func:`input_grad` into the rows of ``terms`` (3, C), from the whole
    batch's ``totals`` (2, C) = (sum dy, dgamma): ``a = gamma * inv_std``, ``b = -a * inv_std
    * dgamma / M`` and ``k = -a * sum dy / M - b * mean``, divided by M in float64."""
    for c in range(terms.shape[1]):
        scale = gamma[c] * inv_std[c]
        slope = (-scale * inv_std[c] * totals[1, c]) / count
        terms[0, c] = scale
        terms[1, c] = slope
        terms[2, c] = (-scale * totals[0, c]) / count - slope * mean[c]
