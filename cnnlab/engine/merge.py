"""Joining branches of a graph: element-wise merges and concatenation.

Shapes: every input ``x_i (N, ...)``; element-wise merges need equal shapes and return the same
shape; ``concatenate`` joins along ``axis`` (every other axis equal).

    add       y = sum_i x_i                     dx_i = dy
    add+relu  y = max(sum_i x_i, 0)             dx_i = dy * (y > 0)   (ResNet's join, fused)
    subtract  y = x_0 - x_1                     dx_0 = dy, dx_1 = -dy
    multiply  y = prod_i x_i                    dx_i = dy * prod_{j != i} x_j
    average   y = sum_i x_i / k                 dx_i = dy / k
    maximum   y = max_i x_i                     dx_i = dy where x_i is the first maximum, else 0
    concat    y = [x_0 | x_1 | ...] on axis     dx_i = the slice of dy x_i filled
"""

from __future__ import annotations

import itertools

import numpy as np

from cnnlab.engine import compiled
from cnnlab.engine.activations import relu_backward
from cnnlab.engine.arrays import FreeList, array_module, empty


def add_forward(xs: list[np.ndarray], relu: bool = False, free: FreeList | None = None):
    """The sum, and with ``relu`` its ReLU in the same pass where the kernels are compiled (two
    inputs of one float32 or float64 dtype and shape); the cache is the input count and, with
    ``relu``, the output. ``free``: the free list (``arrays.FreeList``) the sum takes its output
    from; None: a new array."""
    xp = array_module(*xs)
    kernels = compiled.module("merge_kernels", *xs) if relu and len(xs) == 2 else None
    if kernels is not None and xs[0].dtype == xs[1].dtype and xs[0].dtype in compiled.KERNEL_DTYPES \
            and xs[0].shape == xs[1].shape:
        a, b = np.ascontiguousarray(xs[0]), np.ascontiguousarray(xs[1])
        out = empty(a.shape, a.dtype, free)
        kernels.add_relu(a.reshape(-1), b.reshape(-1), out.reshape(-1))
        return out, (len(xs), out)
    if xp is np and xs[0].shape == xs[1].shape:
        out = np.add(xs[0], xs[1], out=empty(xs[0].shape, np.result_type(xs[0], xs[1]), free))
    else:
        out = xs[0] + xs[1]
    for x in xs[2:]:
        out += x
    if relu:
        xp.maximum(out, 0, out=out)
    return out, (len(xs), out if relu else None)


def add_backward(grad: np.ndarray, cache) -> list[np.ndarray]:
    count, relu_out = cache
    if relu_out is not None:
        grad = relu_backward(grad, relu_out)
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
    out, (count, _) = add_forward(xs)
    return out / array_module(out).asarray(count, out.dtype), count


def average_backward(grad: np.ndarray, count: int) -> list[np.ndarray]:
    return [grad / array_module(grad).asarray(count, grad.dtype)] * count


def maximum_forward(xs: list[np.ndarray]):
    """At a tie the whole gradient goes to the first input holding the maximum, as in max
    pooling (a subgradient; nothing in between is more right)."""
    xp = array_module(*xs)
    stacked = xp.stack(xs)                                   # (k, N, ...)
    winner = stacked.argmax(axis=0)                          # (N, ...)
    return xp.take_along_axis(stacked, winner[None], 0)[0], (winner, len(xs))


def maximum_backward(grad: np.ndarray, cache) -> list[np.ndarray]:
    winner, count = cache
    return [grad * (winner == i) for i in range(count)]


def concatenate_forward(xs: list[np.ndarray], axis: int):
    return array_module(*xs).concatenate(xs, axis=axis), ([x.shape[axis] for x in xs], axis)


def concatenate_backward(grad: np.ndarray, cache) -> list[np.ndarray]:
    sizes, axis = cache
    return array_module(grad).split(grad, list(itertools.accumulate(sizes))[:-1], axis=axis)
