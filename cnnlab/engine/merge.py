"""Joining branches of a graph: element-wise merges and concatenation.

Shapes: every input ``x_i (N, ...)``; element-wise merges need equal shapes and return the same
shape; ``concatenate`` joins along ``axis`` (every other axis equal).

    add       y = sum_i x_i                     dx_i = dy
    subtract  y = x_0 - x_1                     dx_0 = dy, dx_1 = -dy
    multiply  y = prod_i x_i                    dx_i = dy * prod_{j != i} x_j
    average   y = sum_i x_i / k                 dx_i = dy / k
    maximum   y = max_i x_i                     dx_i = dy where x_i is the first maximum, else 0
    concat    y = [x_0 | x_1 | ...] on axis     dx_i = the slice of dy x_i filled
"""

from __future__ import annotations

import numpy as np


def add_forward(xs: list[np.ndarray]):
    out = xs[0] + xs[1]
    for x in xs[2:]:
        out += x
    return out, len(xs)


def add_backward(grad: np.ndarray, count: int) -> list[np.ndarray]:
    return [grad] * count


def subtract_forward(xs: list[np.ndarray]):
    return xs[0] - xs[1], None


def subtract_backward(grad: np.ndarray, _cache) -> list[np.ndarray]:
    return [grad, -grad]


def multiply_forward(xs: list[np.ndarray]):
    out = xs[0] * xs[1]
    for x in xs[2:]:
        out = out * x
    return out, xs


def multiply_backward(grad: np.ndarray, xs) -> list[np.ndarray]:
    grads = []
    for i in range(len(xs)):
        g = grad
        for j, x in enumerate(xs):
            if j != i:
                g = g * x
        grads.append(g)
    return grads


def average_forward(xs: list[np.ndarray]):
    out, count = add_forward(xs)
    return out / np.asarray(count, out.dtype), count


def average_backward(grad: np.ndarray, count: int) -> list[np.ndarray]:
    return [grad / np.asarray(count, grad.dtype)] * count


def maximum_forward(xs: list[np.ndarray]):
    """At a tie the whole gradient goes to the first input holding the maximum, as in max
    pooling (a subgradient; nothing in between is more right)."""
    stacked = np.stack(xs)                                   # (k, N, ...)
    winner = stacked.argmax(axis=0)                          # (N, ...)
    return np.take_along_axis(stacked, winner[None], 0)[0], (winner, len(xs))


def maximum_backward(grad: np.ndarray, cache) -> list[np.ndarray]:
    winner, count = cache
    return [grad * (winner == i) for i in range(count)]


def concatenate_forward(xs: list[np.ndarray], axis: int):
    return np.concatenate(xs, axis=axis), ([x.shape[axis] for x in xs], axis)


def concatenate_backward(grad: np.ndarray, cache) -> list[np.ndarray]:
    sizes, axis = cache
    return np.split(grad, np.cumsum(sizes)[:-1], axis=axis)
