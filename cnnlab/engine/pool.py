"""Pooling: max and average over KH x KW windows, and global average pooling.

Shapes (letters defined in ``cnnlab.engine``)::

    x    (N, H, W, C)
    out  (N, Ho, Wo, C)   Ho = floor((Hp - KH) / sh) + 1, the same formula as convolution

Pooling works on each channel on its own, so no matrix multiply is involved: windows are read
through the same strided view as im2col (``sliding_windows``) and reduced. Max pooling runs
compiled (``pool_kernels``) when ``config.kernels()`` is 'numba'; the NumPy code here is its
reference, and takes its array module from its input (``engine.arrays``: CuPy's arrays run it
on CuPy).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cnnlab.engine import compiled
from cnnlab.engine.arrays import FreeList, array_module, empty
from cnnlab.engine.shapes import Pads, output_hw
from cnnlab.engine.windows import col2im, pad_images, sliding_windows, tap_slices


def window_tap(xp: np.ndarray, i: int, j: int, strides: tuple[int, int],
               out_hw: tuple[int, int]) -> np.ndarray:
    """Tap ``(i, j)`` of every window at once, as a view: ``(N, Ho, Wo, C)``."""
    rows, cols = tap_slices(i, j, strides, (1, 1), out_hw)
    return xp[:, rows, cols, :]


def winner_dtype(pool: tuple[int, int]):
    """The type that holds a tap index 0 .. KH*KW - 1: a byte up to 16x16 windows."""
    return np.uint8 if pool[0] * pool[1] <= 256 else np.int32


class MaxPoolCache(NamedTuple):
    """What :func:`max_pool2d_backward` needs of its forward pass."""
    winner: np.ndarray | None     # (N, Ho, Wo, C): each window's first maximum's tap i*KW + j
    x_shape: tuple                # (N, H, W, C)
    pool: tuple
    strides: tuple
    pads: Pads
    free: FreeList | None         # where the compiled backward takes its gradient from


def max_pool2d_forward(x: np.ndarray, pool: tuple[int, int], strides: tuple[int, int],
                       pads: Pads = ((0, 0), (0, 0)), keep_cache: bool = True,
                       free: FreeList | None = None):
    """``out[n, y, x, c] = max over the window of xp[n, y*sh + i, x*sw + j, c]``.

    Walks the KH*KW taps of all windows at once (one elementwise max per tap over the output's
    size) instead of copying every window out: for the article's 2x2 pools that is 4 passes over
    a quarter of the input, about 15x faster than copy-then-argmax (kept as
    :func:`max_pool2d_forward_reference`). A later tap wins only if strictly greater, so the
    remembered position is the *first* maximum in row-major window order, the cell PyTorch picks.
    'same' padding pads with -inf, so a padded cell never wins. Returns ``(out, cache)``;
    ``keep_cache=False`` (inference) skips tracking the winners. ``free``: the free list
    (``arrays.FreeList``) the compiled passes take their outputs and the input gradient from;
    None: new arrays.
    """
    n, h, w, c = x.shape
    out_hw = output_hw((h, w), pool, strides, pads)
    kernels = compiled.module("pool_kernels", x)
    if kernels is not None:
        best = empty((n, *out_hw, c), x.dtype, free)
        winner = empty(best.shape, winner_dtype(pool), free) if keep_cache \
            else np.empty(best.shape, winner_dtype(pool))   # never touched: no pages faulted
        kernels.max_pool(np.ascontiguousarray(x), *pool, *strides, pads[0][0], pads[1][0], best,
                         winner, keep_cache)
        return best, MaxPoolCache(winner if keep_cache else None, x.shape, pool, strides, pads,
                                  free)
    xp = pad_images(x, pads, value=-np.inf)                                 # (N, Hp, Wp, C)
    module = array_module(x)
    best = window_tap(xp, 0, 0, strides, out_hw).copy()                     # (N, Ho, Wo, C)
    winner = module.zeros(best.shape, winner_dtype(pool)) if keep_cache else None  # tap index
    for tap in range(1, pool[0] * pool[1]):
        candidate = window_tap(xp, tap // pool[1], tap % pool[1], strides, out_hw)
        if keep_cache:
            # Taps come in increasing order, so the winner is the largest tap that was strictly
            # better than everything before it. Arithmetic, not np.where or boolean indexing,
            # which are 30x slower here.
            better = (candidate > best).view(np.uint8)
            module.maximum(winner, better * winner.dtype.type(tap), out=winner)
        module.maximum(best, candidate, out=best)
    return best, MaxPoolCache(winner, x.shape, pool, strides, pads, None)


def max_pool2d_backward(grad_out: np.ndarray, cache) -> np.ndarray:
    """Each window's gradient goes to its (first) maximum; every other cell gets zero.

    ``grad_out (N, Ho, Wo, C) -> grad_x (N, H, W, C)``: one masked, strided add per tap.
    """
    winner, x_shape, pool, strides, pads, free = cache
    n, h, w, c = x_shape
    (top, bottom), (left, right) = pads
    kernels = compiled.module("pool_kernels", grad_out)
    if kernels is not None:             # every cell is written, so a reused array will do
        grad_x = empty(x_shape, grad_out.dtype, free)
        kernels.max_pool_backward(np.ascontiguousarray(grad_out), winner, *pool, *strides, top,
                                  left, grad_x)
        return grad_x
    module = array_module(grad_out)
    grad_xp = module.zeros((n, h + top + bottom, w + left + right, c), dtype=grad_out.dtype)
    out_hw = grad_out.shape[1:3]
    overlapping = strides[0] < pool[0] or strides[1] < pool[1]
    for tap in range(pool[0] * pool[1]):
        target = window_tap(grad_xp, tap // pool[1], tap % pool[1], strides, out_hw)
        if overlapping:           # a cell may be the maximum of several windows: add
            target += grad_out * (winner == tap)
        else:                     # each cell is in at most one window: write in place
            module.multiply(grad_out, winner == tap, out=target)
    return grad_xp[:, top:top + h, left:left + w, :]


def max_pool2d_forward_reference(x, pool, strides, pads=((0, 0), (0, 0))):
    """The plain version the fast path is tested against: copy each window, take its argmax."""
    n, h, w, c = x.shape
    ho, wo = output_hw((h, w), pool, strides, pads)
    xp = pad_images(x, pads, value=-np.inf)
    windows = sliding_windows(xp, pool, strides, (1, 1), (ho, wo))          # (N, Ho, Wo, KH, KW, C)
    flat = windows.reshape(n, ho, wo, pool[0] * pool[1], c)                 # (N, Ho, Wo, KH*KW, C)
    winner = flat.argmax(axis=3)                                            # first maximum
    out = np.take_along_axis(flat, winner[:, :, :, None, :], axis=3)[:, :, :, 0, :]
    return out, (winner.astype(winner_dtype(pool)), x.shape, pool, strides, pads, None)


def _real_cells_per_window(size: int, window: int, stride: int, pad_before: int,
                           out_size: int) -> list[int]:
    """How many of a window's cells along one axis lie on the image, not on padding: ``O``."""
    return [min(o * stride - pad_before + window, size) - max(o * stride - pad_before, 0)
            for o in range(out_size)]


def avg_pool2d_forward(x: np.ndarray, pool: tuple[int, int], strides: tuple[int, int],
                       pads: Pads = ((0, 0), (0, 0))):
    """``out = mean of the window's real cells``: padding is not counted (Keras 'same' semantics).

    Returns ``(out (N, Ho, Wo, C), cache)``.
    """
    n, h, w, c = x.shape
    ho, wo = output_hw((h, w), pool, strides, pads)
    xp = pad_images(x, pads)                                                # (N, Hp, Wp, C)
    windows = sliding_windows(xp, pool, strides, (1, 1), (ho, wo))          # (N, Ho, Wo, KH, KW, C)
    along_h = _real_cells_per_window(h, pool[0], strides[0], pads[0][0], ho)
    along_w = _real_cells_per_window(w, pool[1], strides[1], pads[1][0], wo)
    counts = array_module(x).asarray([[[[a * b] for b in along_w] for a in along_h]],
                                     dtype=x.dtype)                         # (1, Ho, Wo, 1)
    out = windows.sum(axis=(3, 4)) / counts                                 # (N, Ho, Wo, C)
    return out, (counts, x.shape, pool, strides, pads)


def avg_pool2d_backward(grad_out: np.ndarray, cache) -> np.ndarray:
    """Each cell of a window gets ``grad / count``: ``(N, Ho, Wo, C) -> (N, H, W, C)``."""
    counts, x_shape, pool, strides, pads = cache
    share = grad_out / counts                                               # (N, Ho, Wo, C)
    grad_windows = array_module(share).broadcast_to(share[:, :, :, None, None, :],
                                   share.shape[:3] + tuple(pool) + share.shape[3:])
    return col2im(grad_windows, x_shape, strides, pads)


def global_avg_pool2d_forward(x: np.ndarray):
    """``(N, H, W, C) -> (N, C)``: the mean of each feature map."""
    return x.mean(axis=(1, 2)), x.shape


def global_avg_pool2d_backward(grad_out: np.ndarray, x_shape) -> np.ndarray:
    """``(N, C) -> (N, H, W, C)``: every pixel of a map gets ``grad / (H * W)``."""
    n, h, w, c = x_shape
    return array_module(grad_out).broadcast_to((grad_out / (h * w))[:, None, None, :],
                                               x_shape).copy()
