"""Activations and kernels laid out as image grids (NumPy only), so their pixels *are* the data.

    feature_map_grid(maps (H, W, C))  ->  (rows*(H+1)-1, cols*(W+1)-1), every map min-max scaled
                                         to [0, 1] on its own; separators are NaN (drawn blank)
"""

from __future__ import annotations

import math

import numpy as np


def scale_each(maps: np.ndarray):
    """``(C, H, W)`` maps -> ``(scaled (C, H, W), low (C,), high (C,))``: each map scaled on its
    own from its lowest value (0) to its highest (1); a constant map becomes all zeros (nothing
    to show)."""
    maps = np.asarray(maps, dtype=np.float64)
    low, high = maps.min(axis=(1, 2)), maps.max(axis=(1, 2))                 # (C,)
    span = np.where(high > low, high - low, 1.0)
    return (maps - low[:, None, None]) / span[:, None, None], low, high


def grid_shape(count: int) -> tuple[int, int]:
    """Rows and columns for ``count`` tiles, as square as possible, wider than tall."""
    cols = math.ceil(math.sqrt(count))
    return math.ceil(count / cols), cols


def tile_position(index: int, tile_hw, count: int) -> tuple[slice, slice]:
    """Where tile ``index`` sits in the grid (one pixel of separator between tiles)."""
    _, cols = grid_shape(count)
    row, col = divmod(index, cols)
    top, left = row * (tile_hw[0] + 1), col * (tile_hw[1] + 1)
    return slice(top, top + tile_hw[0]), slice(left, left + tile_hw[1])


def feature_map_grid(maps: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` feature maps, or ``(D,)`` dense activations, as one grid image.

    Dense activations become a single ``(1, D)`` strip, scaled like a map.
    """
    maps = np.asarray(maps)
    if maps.ndim == 1:
        maps = maps[None, :, None]
    h, w, count = maps.shape
    rows, cols = grid_shape(count)
    grid = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan)
    scaled, _, _ = scale_each(maps.transpose(2, 0, 1))                      # (C, H, W)
    for c in range(count):
        grid[tile_position(c, (h, w), count)] = scaled[c]
    return grid


def kernel_grid(kernel: np.ndarray) -> np.ndarray:
    """A conv kernel ``(KH, KW, C, F)`` as a grid of F tiles, one scale for all (so filters can be
    compared), centred on zero: 0.5 is a zero weight. RGB kernels (C == 3) give an RGB grid;
    other channel counts show the mean over input channels."""
    kh, kw, c, f = kernel.shape
    bound = np.abs(kernel).max() or 1.0
    scaled = 0.5 + 0.5 * kernel / bound                         # [-bound, bound] -> [0, 1]
    rows, cols = grid_shape(f)
    depth = 3 if c == 3 else 1
    grid = np.full((rows * (kh + 1) - 1, cols * (kw + 1) - 1, depth), np.nan)
    for i in range(f):
        tile = scaled[:, :, :, i] if depth == 3 else scaled[:, :, :, i].mean(axis=2, keepdims=True)
        grid[tile_position(i, (kh, kw), f)] = tile
    return grid if depth == 3 else grid[:, :, 0]
