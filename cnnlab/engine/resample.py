"""Changing a feature map's size without weights: zero padding, cropping, nearest-neighbour
up-sampling and global max pooling. ``(N, H, W, C)`` in; each backward is the adjoint of its
forward (what the forward copied, the backward adds back).

    zero_pad      (N, H, W, C) -> (N, H + t + b, W + l + r, C)   backward: the middle slice
    crop          (N, H, W, C) -> (N, H - t - b, W - l - r, C)   backward: pad with zeros
    upsample      (N, H, W, C) -> (N, H*sh, W*sw, C)             backward: sum of each block
    global_max    (N, H, W, C) -> (N, C)                          backward: to the first maximum
"""

from __future__ import annotations

import numpy as np

from cnnlab.engine.shapes import Pads
from cnnlab.engine.windows import pad_images


def zero_pad_forward(x: np.ndarray, pads: Pads):
    return pad_images(x, pads), (pads, x.shape)


def zero_pad_backward(grad_out: np.ndarray, cache) -> np.ndarray:
    ((top, _), (left, _)), (_, h, w, _) = cache
    return grad_out[:, top:top + h, left:left + w, :]


def crop_forward(x: np.ndarray, crops: Pads):
    (top, bottom), (left, right) = crops
    _, h, w, _ = x.shape
    return x[:, top:h - bottom, left:w - right, :], crops


def crop_backward(grad_out: np.ndarray, crops: Pads) -> np.ndarray:
    return pad_images(grad_out, crops)


def upsample_nearest_forward(x: np.ndarray, size: tuple[int, int]):
    """Each pixel repeated ``size[0]`` times down and ``size[1]`` times across."""
    return np.repeat(np.repeat(x, size[0], axis=1), size[1], axis=2), size


def upsample_nearest_backward(grad_out: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    n, h, w, c = grad_out.shape
    blocks = grad_out.reshape(n, h // size[0], size[0], w // size[1], size[1], c)
    return blocks.sum(axis=(2, 4))                                           # (N, H, W, C)


def global_max_pool2d_forward(x: np.ndarray):
    """``out[n, c] = max_{y, x} x[n, y, x, c]``; remembers the first maximum (row-major)."""
    n, h, w, c = x.shape
    flat = x.reshape(n, h * w, c)                                            # (N, H*W, C)
    winner = flat.argmax(axis=1)                                             # (N, C)
    return np.take_along_axis(flat, winner[:, None, :], axis=1)[:, 0, :], (winner, x.shape)


def global_max_pool2d_backward(grad_out: np.ndarray, cache) -> np.ndarray:
    winner, (n, h, w, c) = cache
    grad = np.zeros((n, h * w, c), dtype=grad_out.dtype)                     # (N, H*W, C)
    np.put_along_axis(grad, winner[:, None, :], grad_out[:, None, :], axis=1)
    return grad.reshape(n, h, w, c)
