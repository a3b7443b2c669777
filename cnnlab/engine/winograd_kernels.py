"""Compiled Winograd transforms for any tiling F(m x m, 3x3), beside their NumPy references in
``winograd.py`` (whose docstring has the shapes and formulas). ``bt (alpha, alpha)`` and
``at (m, alpha)`` are the tiling's matrices, ``alpha = m + 2``; ``T = N * th * tw`` tiles, tile
``t = (n * th + ty) * tw + tx`` covering outputs ``(ty*m .. ty*m + m-1, tx*m .. tx*m + m-1)``.

    input_tiles          x (N, H, W, C)   -> V (alpha^2, T, C)    V = B^T d B, d the tile's patch
    output_tiles         M (alpha^2, T, F) -> y (N, Ho, Wo, F)    y = A^T M A + bias
    output_tiles_adjoint dy (N, Ho, Wo, F) -> dM (alpha^2, T, F)  dM = A dy A^T

What they save. The NumPy path pads the image into a copy, then makes one pass over the
(alpha, alpha, T, C) arrays for each row of B^T, again for B, and the same for A^T. These
kernels read each tile's patch straight from the image (the padding is a bounds test, no copy),
transform it in a scratch of ``alpha * alpha * C`` values that stays in L1, and write V once,
laid out for the batched GEMMs. Matrix entries that are zero are skipped, so the generic loop
does the additions a hand-written transform would.

Why the loops are shaped as they are. Every update is ``target = coef * source`` or
``target += coef * source`` on 1-D rows (:func:`_scaled_row`), and its cost is per row as much as
per value: measured, a 16-float update costs 17 ns indexed as ``flat[base + c]`` and 3.4 ns on a
row indexed from 0. So the pass along the image's rows runs over whole rows of the patch
(``alpha * C`` contiguous values); the pass along its columns runs over C alone, and at
ResNet-20's C = 16 that pass is most of a transform's time (64 images of 32 x 32 x 16: 3.0 ms
for ``input_tiles`` against 1.4 ms for its 36 GEMMs).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(inline="always")
def _scaled_row(target, coef, source, first):
    """``target = coef * source`` (the first term of a sum) or ``target += coef * source``."""
    if first:
        for k in range(target.shape[0]):
            target[k] = coef * source[k]
    else:
        for k in range(target.shape[0]):
            target[k] += coef * source[k]


@numba.njit(cache=True, nogil=True)
def input_tiles(x, bt, top, left, tiles_h, tiles_w, v):
    """``v[a*alpha + b, t, c] = sum_{i, j} bt[a, i] * d[i, j, c] * bt[b, j]``, where
    ``d[i, j, c] = x[n, ty*m + i - top, tx*m + j - left, c]``, zero outside the image.
    ``x`` C-contiguous."""
    batch, height, width, channels = x.shape
    alpha = bt.shape[0]
    m = alpha - 2
    span = alpha * channels
    flat = x.reshape(batch, height, width * channels)
    patch = np.zeros((alpha, alpha, channels), x.dtype)        # d
    rows = np.empty((alpha, alpha, channels), x.dtype)         # B^T d
    patch_rows, rows_rows = patch.reshape(alpha, span), rows.reshape(alpha, span)
    for n in range(batch):
        for ty in range(tiles_h):
            for tx in range(tiles_w):
                t = (n * tiles_h + ty) * tiles_w + tx
                y0, x0 = ty * m - top, tx * m - left
                for i in range(alpha):
                    y = y0 + i
                    if 0 <= y < height and x0 >= 0 and x0 + alpha <= width:
                        source = flat[n, y, x0 * channels:x0 * channels + span]
                        for k in range(span):
                            patch_rows[i, k] = source[k]
                    else:                                      # the patch crosses the border
                        for j in range(alpha):
                            inside = 0 <= y < height and 0 <= x0 + j < width
                            for c in range(channels):
                                patch[i, j, c] = x[n, y, x0 + j, c] if inside else 0
                for a in range(alpha):                         # rows = B^T d, whole rows
                    first = True
                    for i in range(alpha):
                        if bt[a, i] != 0:
                            _scaled_row(rows_rows[a], bt[a, i], patch_rows[i], first)
                            first = False
                for a in range(alpha):                         # V = (B^T d) B
                    for b in range(alpha):
                        first = True
                        for j in range(alpha):
                            if bt[b, j] != 0:
                                _scaled_row(v[a * alpha + b, t], bt[b, j], rows[a, j], first)
                                first = False


@numba.njit(cache=True, nogil=True)
def output_tiles(mt, at, bias, tiles_h, tiles_w, y):
    """``y[n, ty*m + a, tx*m + b, f] = bias[f] + sum_{i, j} at[a, i] * M[i*alpha + j, t, f] *
    at[b, j]``, the tiles' overhang past ``y``'s edge dropped. ``y`` C-contiguous."""
    batch, out_h, out_w, filters = y.shape
    m, alpha = at.shape
    span = m * filters
    flat = y.reshape(batch, out_h, out_w * filters)
    half = np.empty((alpha, m, filters), y.dtype)              # M A
    half_rows = half.reshape(alpha, span)
    shift = np.empty(span, y.dtype)                            # the bias, once per column
    for k in range(span):
        shift[k] = bias[k % filters]
    for n in range(batch):
        for ty in range(tiles_h):
            for tx in range(tiles_w):
                t = (n * tiles_h + ty) * tiles_w + tx
                for i in range(alpha):                         # half = M A
                    for b in range(m):
                        first = True
                        for j in range(alpha):
                            if at[b, j] != 0:
                                _scaled_row(half[i, b], at[b, j], mt[i * alpha + j, t], first)
                                first = False
                start = tx * m * filters
                width = min(m, out_w - tx * m) * filters
                for a in range(m):                             # y = A^T (M A) + bias, whole rows
                    row = ty * m + a
                    if row >= out_h:
                        break
                    target = flat[n, row, start:start + width]
                    for k in range(width):
                        target[k] = shift[k]
                    for i in range(alpha):
                        if at[a, i] != 0:
                            _scaled_row(target, at[a, i], half_rows[i], False)


@numba.njit(cache=True, nogil=True)
def output_tiles_adjoint(dy, at, tiles_h, tiles_w, dm):
    """``dM[i*alpha + j, t, f] = sum_{a, b} at[a, i] * dy[n, ty*m + a, tx*m + b, f] * at[b, j]``,
    with ``dy`` zero past its edge (the overhang had no gradient). ``dy`` C-contiguous."""
    batch, out_h, out_w, filters = dy.shape
    m, alpha = at.shape
    span = m * filters
    flat = dy.reshape(batch, out_h, out_w * filters)
    half = np.zeros((alpha, m, filters), dy.dtype)             # A dy
    half_rows = half.reshape(alpha, span)
    for n in range(batch):
        for ty in range(tiles_h):
            for tx in range(tiles_w):
                t = (n * tiles_h + ty) * tiles_w + tx
                start = tx * m * filters
                width = min(m, out_w - tx * m) * filters
                for i in range(alpha):                         # half = A dy, whole rows
                    first = True
                    for a in range(m):
                        if at[a, i] != 0 and ty * m + a < out_h:
                            _scaled_row(half_rows[i, :width], at[a, i],
                                        flat[n, ty * m + a, start:start + width], first)
                            first = False
                    for k in range(0 if first else width, span):   # past the edge, or no row
                        half_rows[i, k] = 0
                for i in range(alpha):                         # dM = (A dy) A^T
                    for j in range(alpha):
                        first = True
                        for b in range(m):
                            if at[b, j] != 0:
                                _scaled_row(dm[i * alpha + j, t], at[b, j], half[i, b], first)
                                first = False
