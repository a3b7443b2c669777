"""Image augmentations as pure functions, forward and backward. Shapes: ``x (N, H, W, C)``.

Geometric ones (translation, rotation, zoom) share one op: each output pixel ``(i, j)`` of image
``n`` reads the input at ``A_n @ (i, j, 1)``, interpolated bilinearly from the 4 neighbours.
Where that point leaves the image, ``fill_mode`` decides (Keras' modes): 'reflect' (mirror at the
edge), 'nearest' (repeat the edge), 'wrap' (tile), or 'constant' (``fill_value``). The backward
pass is the exact adjoint: each output gradient goes back to the 4 pixels it was read from, with
the same weights.
"""

from __future__ import annotations

import numpy as np


def _fold(index: np.ndarray, size: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Map integer coordinates into [0, size); returns (index, inside mask for 'constant')."""
    inside = (index >= 0) & (index < size)
    if mode == "constant":
        return np.clip(index, 0, size - 1), inside
    if mode == "nearest":
        return np.clip(index, 0, size - 1), np.ones_like(inside)
    if mode == "wrap":
        return np.mod(index, size), np.ones_like(inside)
    period = 2 * size                                # 'reflect': d c b a | a b c d | d c b a
    folded = np.mod(index, period)
    return np.where(folded >= size, period - 1 - folded, folded), np.ones_like(inside)


def affine_sample_forward(x: np.ndarray, matrices: np.ndarray, fill_mode="reflect",
                          fill_value=0.0):
    """``out[n, i, j] = bilinear(x[n], A_n @ (i, j, 1))``; ``matrices (N, 2, 3)``."""
    n, h, w, c = x.shape
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                             indexing="ij")
    grid = np.stack([rows, cols, np.ones_like(rows)])                    # (3, H, W)
    source = np.einsum("nkl,lhw->nkhw", matrices, grid)                  # (N, 2, H, W)
    y0, x0 = np.floor(source[:, 0]), np.floor(source[:, 1])
    fy, fx = source[:, 0] - y0, source[:, 1] - x0
    batch = np.arange(n)[:, None, None]
    corners = []
    out = np.zeros_like(x)
    for dy, dx, weight in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                           (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        yi, inside_y = _fold((y0 + dy).astype(np.int64), h, fill_mode)
        xi, inside_x = _fold((x0 + dx).astype(np.int64), w, fill_mode)
        weight = weight * (inside_y & inside_x)                          # (N, H, W)
        out += weight[..., None].astype(x.dtype) * x[batch, yi, xi]
        corners.append((yi, xi, weight))
    if fill_mode == "constant" and fill_value:
        covered = sum(weight for _, _, weight in corners)
        out += ((1 - covered) * fill_value)[..., None].astype(x.dtype)
    return out, (corners, x.shape)


def affine_sample_backward(grad_out: np.ndarray, cache) -> np.ndarray:
    """Scatter each output gradient back to its 4 source pixels, with the forward's weights."""
    corners, shape = cache
    grad = np.zeros(shape, dtype=grad_out.dtype)
    batch = np.broadcast_to(np.arange(shape[0])[:, None, None], corners[0][0].shape)
    for yi, xi, weight in corners:
        np.add.at(grad, (batch, yi, xi), weight[..., None].astype(grad.dtype) * grad_out)
    return grad


def translation_matrices(dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Shift image n down by ``dy[n]`` and right by ``dx[n]`` pixels: read at ``(i - dy, j - dx)``."""
    m = np.zeros((len(dy), 2, 3))
    m[:, 0, 0] = m[:, 1, 1] = 1
    m[:, 0, 2], m[:, 1, 2] = -dy, -dx
    return m


def rotation_matrices(angles: np.ndarray, h: int, w: int) -> np.ndarray:
    """Rotate counter-clockwise by ``angles`` (radians) about the image centre."""
    cy, cx = (h - 1) / 2, (w - 1) / 2
    cos, sin = np.cos(angles), np.sin(angles)
    m = np.zeros((len(angles), 2, 3))
    # an output pixel reads the input point rotated back (clockwise) about the centre; rows
    # grow downwards, so a counter-clockwise turn on screen is this sign pattern
    m[:, 0, 0], m[:, 0, 1] = cos, sin
    m[:, 1, 0], m[:, 1, 1] = -sin, cos
    m[:, 0, 2] = cy - cos * cy - sin * cx
    m[:, 1, 2] = cx + sin * cy - cos * cx
    return m


def zoom_matrices(zy: np.ndarray, zx: np.ndarray, h: int, w: int) -> np.ndarray:
    """Read at ``centre + z * (p - centre)``: z > 1 zooms out (the image shrinks), as in Keras."""
    cy, cx = (h - 1) / 2, (w - 1) / 2
    m = np.zeros((len(zy), 2, 3))
    m[:, 0, 0], m[:, 1, 1] = zy, zx
    m[:, 0, 2], m[:, 1, 2] = cy * (1 - zy), cx * (1 - zx)
    return m


def flip_forward(x: np.ndarray, horizontal: np.ndarray, vertical: np.ndarray):
    """Mirror the chosen images left-right and/or top-bottom. Returns ``(out, cache)``."""
    out = x.copy()
    out[horizontal] = out[horizontal, :, ::-1]
    out[vertical] = out[vertical, ::-1]
    return out, (horizontal, vertical)


def flip_backward(grad_out: np.ndarray, cache) -> np.ndarray:
    """A flip is its own inverse and its own transpose."""
    return flip_forward(grad_out, *cache)[0]


def contrast_forward(x: np.ndarray, factors: np.ndarray, value_range=(0.0, 255.0)):
    """``clip((x - mean) * f + mean)``, the mean per image and channel over H and W."""
    mean = x.mean(axis=(1, 2), keepdims=True)                           # (N, 1, 1, C)
    f = factors.reshape(-1, 1, 1, 1).astype(x.dtype)
    raw = (x - mean) * f + mean
    out = np.clip(raw, *value_range)
    return out, (f, out == raw)


def contrast_backward(grad_out: np.ndarray, cache) -> np.ndarray:
    """``f * (g - mean(g)) + mean(g)`` where the output was not clipped."""
    f, unclipped = cache
    g = grad_out * unclipped
    mean_g = g.mean(axis=(1, 2), keepdims=True)
    return f * (g - mean_g) + mean_g


def brightness_forward(x: np.ndarray, deltas: np.ndarray, value_range=(0.0, 255.0)):
    """``clip(x + delta)``: ``x`` (N, H, W, C), ``deltas`` (N,), one per image, added to every
    pixel and channel; clipped to ``value_range``."""
    delta = deltas.reshape(-1, 1, 1, 1).astype(x.dtype)
    raw = x + delta
    out = np.clip(raw, *value_range)
    return out, (delta, out == raw)


def brightness_backward(grad_out: np.ndarray, cache) -> np.ndarray:
    """The gradient passes where the output was not clipped."""
    _, unclipped = cache
    return grad_out * unclipped


def crop_forward(x: np.ndarray, tops: np.ndarray, lefts: np.ndarray, size: tuple[int, int]):
    """Image ``n`` cropped to ``size`` from row ``tops[n]``, column ``lefts[n]``:
    ``(N, H, W, C) -> (N, h, w, C)``, gathered for the whole batch at once."""
    h, w = size
    rows = tops[:, None] + np.arange(h)                                     # (N, h)
    cols = lefts[:, None] + np.arange(w)                                    # (N, w)
    batch = np.arange(len(x))[:, None, None]
    return x[batch, rows[:, :, None], cols[:, None, :]], (rows, cols, x.shape)


def crop_backward(grad_out: np.ndarray, cache) -> np.ndarray:
    """Each crop's gradient back in its place, zeros elsewhere."""
    rows, cols, shape = cache
    grad = np.zeros(shape, dtype=grad_out.dtype)                            # (N, H, W, C)
    batch = np.arange(shape[0])[:, None, None]
    grad[batch, rows[:, :, None], cols[:, None, :]] = grad_out
    return grad
