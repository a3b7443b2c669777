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
def scale_shift(x: np.ndarray, scale: np.ndarray, shift: np.ndarray, relu: bool) -> np.ndarray:
    """``y = x * scale + shift`` per channel, then ``max(y, 0)`` if ``relu``, in one pass."""
    rows, channels = x.shape
    y = np.empty_like(x)
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
               k: np.ndarray) -> np.ndarray:
    """``dx = dy * a + x * b + k`` per channel, in one pass."""
    rows, channels = x.shape
    dx = np.empty_like(dy)
    for m in range(rows):
        for c in range(channels):
            dx[m, c] = dy[m, c] * a[c] + x[m, c] * b[c] + k[c]
    return dx


@numba.njit(cache=True, nogil=True)
def masked_input_grad(dy: np.ndarray, x: np.ndarray, scale: np.ndarray, shift: np.ndarray,
                      a: np.ndarray, b: np.ndarray, k: np.ndarray) -> np.ndarray:
    """:func:`input_grad` with ``dy`` taken as 0 where the ReLU cut ``x * scale + shift``."""
    rows, channels = x.shape
    dx = np.empty_like(dy)
    zero = np.zeros(1, dy.dtype)[0]
    for m in range(rows):
        for c in range(channels):
            passed = dy[m, c] if x[m, c] * scale[c] + shift[c] > 0 else zero
            dx[m, c] = passed * a[c] + x[m, c] * b[c] + k[c]
    return dx
