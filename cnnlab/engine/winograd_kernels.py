"""Compiled Winograd transforms for any tiling F(m x m, 3x3), beside their NumPy references in
``winograd.py`` (whose docstring has the shapes and formulas). ``bt (alpha, alpha)`` and
``at (m, alpha)`` are the tiling's matrices, ``alpha = m + 2``; ``T = N * th * tw`` tiles, tile
``t = (n * th + ty) * tw + tx`` covering outputs ``(ty*m .. ty*m + m-1, tx*m .. tx*m + m-1)``.

    input_tiles          x (N, H, W, C)   -> V (alpha^2, T, C)    V = B^T d B, d the tile's patch
    output_tiles         M (alpha^2, T, F) -> y (N, Ho, Wo, F)    y = A^T M A + bias
    output_tiles_adjoint dy (N, Ho, Wo, F) -> dM (alpha^2, T, F)  dM = A dy A^T

What they save. The NumPy path pads the image into a copy, then makes a pass over the
(alpha, alpha, T, C) arrays for each row of B^T and again for B, and the same for A^T; each of
these reads one tile's patch from the image (the padding is a bounds test, no copy), transforms
it in a scratch of ``alpha * alpha * C`` values that stays in L1, and writes V once, laid out for
the batched GEMMs. Matrix entries that are zero are skipped, so the generic loop does the
additions a hand-written transform would.

Why the loops are shaped as they are (measured, float32, 64 images of 32 x 32 x 16): LLVM
vectorises a loop only past ~32 floats, and each loop entry pays Numba's alias checks, so the
pass along an image row runs over whole rows of the patch (``alpha * C`` contiguous values),
and each kernel indexes flat arrays instead of making a view per tile (a view costs reference
counting). The other pass runs over C alone; at C = 16 that is what the transform's time is.
"""

from __future__ import annotations

import numba
import numpy as np


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
                        coef = bt[a, i]
                        if coef == 0:
                            continue
                        if first:
                            for k in range(span):
                                rows_rows[a, k] = coef * patch_rows[i, k]
                            first = False
                        else:
                            for k in range(span):
                                rows_rows[a, k] += coef * patch_rows[i, k]
                for a in range(alpha):                         # V = (B^T d) B
                    for b in range(alpha):
                        point = a * alpha + b
                        first = True
                        for j in range(alpha):
                            coef = bt[b, j]
                            if coef == 0:
                                continue
                            if first:
                                for c in range(channels):
                                    v[point, t, c] = coef * rows[a, j, c]
                                first = False
                            else:
                                for c in range(channels):
                                    v[point, t, c] += coef * rows[a, j, c]


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
                            coef = at[b, j]
                            if coef == 0:
                                continue
                            point = i * alpha + j
                            if first:
                                for f in range(filters):
                                    half[i, b, f] = coef * mt[point, t, f]
                                first = False
                            else:
                                for f in range(filters):
                                    half[i, b, f] += coef * mt[point, t, f]
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
                        coef = at[a, i]
                        if coef != 0:
                            for k in range(width):
                                target[k] += coef * half_rows[i, k]


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
                        row = ty * m + a
                        coef = at[a, i]
                        if coef == 0 or row >= out_h:
                            continue
                        source = flat[n, row, start:start + width]
                        if first:
                            for k in range(width):
                                half_rows[i, k] = coef * source[k]
                            first = False
                        else:
                            for k in range(width):
                                half_rows[i, k] += coef * source[k]
                    for k in range(0 if first else width, span):
                        half_rows[i, k] = 0
                for i in range(alpha):                         # dM = (A dy) A^T
                    for j in range(alpha):
                        point = i * alpha + j
                        first = True
                        for b in range(m):
                            coef = at[b, j]
                            if coef == 0:
                                continue
                            if first:
                                for f in range(filters):
                                    dm[point, t, f] = coef * half[i, b, f]
                                first = False
                            else:
                                for f in range(filters):
                                    dm[point, t, f] += coef * half[i, b, f]
