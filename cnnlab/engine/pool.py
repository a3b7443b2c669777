"""Pooling: max and average over KH x KW windows, and global average pooling.

Shapes (letters defined in ``cnnlab.engine``)::

    x    (N, H, W, C)
    out  (N, Ho, Wo, C)   Ho = floor((Hp - KH) / sh) + 1, the same formula as convolution

Pooling works on each channel on its own, so no matrix multiply is involved: windows are read
through the same strided view as im2col (``sliding_windows``) and reduced.
"""

from __future__ import annotations

import numpy as np

from cnnlab.engine.conv import col2im, pad_images, sliding_windows
from cnnlab.engine.shapes import Pads, output_hw


def max_pool2d_forward(x: np.ndarray, pool: tuple[int, int], strides: tuple[int, int],
                       pads: Pads = ((0, 0), (0, 0))):
    """``out[n, y, x, c] = max over the window of xp[n, y*sh + i, x*sw + j, c]``.

    'same' padding pads with -inf, so a padded cell never wins. Returns ``(out, cache)``.
    """
    n, h, w, c = x.shape
    ho, wo = output_hw((h, w), pool, strides, pads)
    xp = pad_images(x, pads, value=-np.inf)                                 # (N, Hp, Wp, C)
    windows = sliding_windows(xp, pool, strides, (1, 1), (ho, wo))          # (N, Ho, Wo, KH, KW, C)
    flat = windows.reshape(n, ho, wo, pool[0] * pool[1], c)                 # (N, Ho, Wo, KH*KW, C)
    # argmax returns the first maximum in row-major window order: the same cell PyTorch picks,
    # so the gradient goes to exactly one position per window even when values tie.
    winner = flat.argmax(axis=3)                                            # (N, Ho, Wo, C)
    out = np.take_along_axis(flat, winner[:, :, :, None, :], axis=3)[:, :, :, 0, :]
    winner = winner.astype(np.uint8 if pool[0] * pool[1] <= 255 else np.int32)  # 8x smaller cache
    return out, (winner, x.shape, pool, strides, pads)


def max_pool2d_backward(grad_out: np.ndarray, cache) -> np.ndarray:
    """Each window's gradient goes to its (first) maximum; every other cell gets zero.

    ``grad_out (N, Ho, Wo, C) -> grad_x (N, H, W, C)``.
    """
    winner, x_shape, pool, strides, pads = cache
    n, ho, wo, c = grad_out.shape
    grad_windows = np.zeros((n, ho, wo, pool[0], pool[1], c), dtype=grad_out.dtype)
    for i in range(pool[0]):
        for j in range(pool[1]):
            grad_windows[:, :, :, i, j, :] = np.where(winner == i * pool[1] + j, grad_out, 0)
    return col2im(grad_windows, x_shape, strides, pads)


def _real_cells_per_window(size: int, window: int, stride: int, pad_before: int,
                           out_size: int) -> np.ndarray:
    """How many of a window's cells along one axis lie on the image, not on padding: ``(O,)``."""
    starts = np.arange(out_size) * stride - pad_before
    return np.minimum(starts + window, size) - np.maximum(starts, 0)


def avg_pool2d_forward(x: np.ndarray, pool: tuple[int, int], strides: tuple[int, int],
                       pads: Pads = ((0, 0), (0, 0))):
    """``out = mean of the window's real cells``: padding is not counted (Keras 'same' semantics).

    Returns ``(out (N, Ho, Wo, C), cache)``.
    """
    n, h, w, c = x.shape
    ho, wo = output_hw((h, w), pool, strides, pads)
    xp = pad_images(x, pads)                                                # (N, Hp, Wp, C)
    windows = sliding_windows(xp, pool, strides, (1, 1), (ho, wo))          # (N, Ho, Wo, KH, KW, C)
    counts = np.outer(_real_cells_per_window(h, pool[0], strides[0], pads[0][0], ho),
                      _real_cells_per_window(w, pool[1], strides[1], pads[1][0], wo))  # (Ho, Wo)
    counts = counts.astype(x.dtype)[None, :, :, None]                       # (1, Ho, Wo, 1)
    out = windows.sum(axis=(3, 4)) / counts                                 # (N, Ho, Wo, C)
    return out, (counts, x.shape, pool, strides, pads)


def avg_pool2d_backward(grad_out: np.ndarray, cache) -> np.ndarray:
    """Each cell of a window gets ``grad / count``: ``(N, Ho, Wo, C) -> (N, H, W, C)``."""
    counts, x_shape, pool, strides, pads = cache
    share = grad_out / counts                                               # (N, Ho, Wo, C)
    grad_windows = np.broadcast_to(share[:, :, :, None, None, :],
                                   share.shape[:3] + tuple(pool) + share.shape[3:])
    return col2im(grad_windows, x_shape, strides, pads)


def global_avg_pool2d_forward(x: np.ndarray):
    """``(N, H, W, C) -> (N, C)``: the mean of each feature map."""
    return x.mean(axis=(1, 2)), x.shape


def global_avg_pool2d_backward(grad_out: np.ndarray, x_shape) -> np.ndarray:
    """``(N, C) -> (N, H, W, C)``: every pixel of a map gets ``grad / (H * W)``."""
    n, h, w, c = x_shape
    return np.broadcast_to((grad_out / (h * w))[:, None, None, :], x_shape).copy()
