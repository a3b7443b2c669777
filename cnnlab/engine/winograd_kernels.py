"""Compiled Winograd transforms for any tiling F(m x m, 3x3), beside their NumPy references in
``winograd.py`` (whose docstring has the shapes and formulas). ``bt (alpha, alpha)`` and
``at (m, alpha)`` are the tiling's matrices, ``alpha = m + 2``; ``T = N * th * tw`` tiles, tile
``t = (n * th + ty) * tw + tx`` covering outputs ``(ty*m .. ty*m + m-1, tx*m .. tx*m + m-1)``.

    input_tiles          x (N, H, W, C)   -> V (alpha^2, T, C)    V = B^T d B, d the tile's patch
    output_tiles         M (alpha^2, T, F) -> y (N, Ho, Wo, F)    y = A^T M A + bias (ReLU'd)
    output_tiles_adjoint dy (N, Ho, Wo, F) -> dM (alpha^2, T, F)  dM = A dy A^T

What they save. The NumPy path pads the image into a copy, then makes one pass over the
(alpha, alpha, T, C) arrays for each row of B^T, again for B, and the same for A^T. These
kernels read the image straight (the padding is a bounds test, no copy), keep a tile row's
intermediate results in a scratch that stays in cache, and write V once, laid out for the
batched GEMMs. Matrix entries that are zero are skipped, so the generic loop does the additions
a hand-written transform would.

Why the loops are shaped as they are. Every update is ``target = coef * source`` or
``target += coef * source`` on 1-D rows (:func:`_scaled_row`), and its cost is per row as much as
per value: each loop's entry (LLVM's checks that its rows do not overlap, the vector loop's
set-up and its remainder) costs as much as a few dozen values. A tile's own rows are short (C
values, 16 in ResNet-20's first stage), so the kernels work on a whole tile row at once: the
patch columns ``j`` of all the row's tiles are gathered side by side (:func:`_deinterleaved`,
``tiles_w * C`` values), and each row update then covers every tile of the row. Each image row
is transformed along its columns once, though two tile rows read it, and kept in a ring of
``alpha`` rows (a scratch the size of one tile row's, whatever the image's height: for a
640-wide face detection level, 478 x 638 x 24, it took the input transform from 41.5 to 17.8 ms
against a scratch of the whole image's rows). Measured on 64 images of
32 x 32 x 16 (1 thread, float32): input 3.0 -> 2.0 ms, output 2.2 -> 1.4 ms, adjoint
2.6 -> 1.7 ms against the per-tile loops these replaced. Where a tile row is two tiles
(8 x 8 x 64) the gathering is pure cost: 0.01-0.14 ms slower each, far less than the first
stage gains (``benchmarks/kernels.py`` has whole convolutions and steps).

Tried and dropped (one-off scripts, best of 20-30, 1 thread, float32, against these kernels,
on pieces of 7 images at ResNet-20's three stages and of 2 images at 16 x 16 x 256): F(4x4)'s
own formulas with their shared sums, all six outputs of a point in one loop (that loop has
twelve arrays, and LLVM vectorised it only once the constants were typed as the data's):
input 1.14-1.40x, output 0.57-0.89x; the input's column pass first, over whole image rows,
with no gathering: 0.77-1.25x; every output row as one loop over all its terms (one
expression, at most seven arrays, vectorised; two variants, timed while another benchmark
ran): input 0.36-1.50x, output 0.29-1.02x, adjoint 0.33-1.13x. The transforms take half of
ResNet-20's inference and a third of its training step (py-spy, batch 128, 2 threads), so a
faster shape for them is worth finding.
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


@numba.njit(inline="always")
def _deinterleaved(image_row, first_column, m, tiles_w, out):
    """``out[j, tx*C + c] = image_row[tx*m + j + first_column, c]``, zero outside the row: column
    ``j`` of every tile's patch row, side by side, so the transforms run along whole tile rows."""
    width, channels = image_row.shape
    for j in range(out.shape[0]):
        target = out[j]
        for tx in range(tiles_w):
            column = tx * m + j + first_column
            if 0 <= column < width:
                source = image_row[column]
                for c in range(channels):
                    target[tx * channels + c] = source[c]
            else:
                for c in range(channels):
                    target[tx * channels + c] = 0


@numba.njit(cache=True, nogil=True)
def input_tiles(x, bt, top, left, tiles_h, tiles_w, v):
    """``v[a*alpha + b, t, c] = sum_{i, j} bt[a, i] * d[i, j, c] * bt[b, j]``, where
    ``d[i, j, c] = x[n, ty*m + i - top, tx*m + j - left, c]``, zero outside the image.
    ``x`` C-contiguous."""
    batch, height, _, channels = x.shape
    alpha = bt.shape[0]
    m = alpha - 2
    span = tiles_w * channels
    columns = np.empty((alpha, span), x.dtype)         # d[r, j] of a tile row, j = 0 .. alpha-1
    # (d B)[r, b] of the alpha patch rows a tile row reads, image row y = r - top in slot
    # r % alpha: the next tile row starts m rows down, so its first two rows are still here
    half = np.empty((alpha, alpha, span), x.dtype)
    for n in range(batch):
        for ty in range(tiles_h):
            for r in range(0 if ty == 0 else ty * m + 2, ty * m + alpha):
                y, slot = r - top, r % alpha
                if not 0 <= y < height:
                    half[slot] = 0
                    continue
                _deinterleaved(x[n, y], -left, m, tiles_w, columns)
                for b in range(alpha):                 # (d B)[r, b] = sum_j d[r, j] B[j, b]
                    first = True
                    for j in range(alpha):
                        if bt[b, j] != 0:
                            _scaled_row(half[slot, b], bt[b, j], columns[j], first)
                            first = False
            t = (n * tiles_h + ty) * tiles_w
            for a in range(alpha):                     # V[a, b] = sum_i B^T[a, i] (d B)[i, b]
                for b in range(alpha):
                    target = v[a * alpha + b, t:t + tiles_w].reshape(span)
                    first = True
                    for i in range(alpha):
                        if bt[a, i] != 0:
                            _scaled_row(target, bt[a, i], half[(ty * m + i) % alpha, b], first)
                            first = False


@numba.njit(cache=True, nogil=True)
def output_tiles(mt, at, bias, tiles_h, tiles_w, y, relu):
    """``y[n, ty*m + a, tx*m + b, f] = bias[f] + sum_{i, j} at[a, i] * M[i*alpha + j, t, f] *
    at[b, j]``, then ``max(y, 0)`` if ``relu`` (an inference epilogue: no second pass over y),
    the tiles' overhang past ``y``'s edge dropped. ``M`` and ``y`` C-contiguous."""
    batch, out_h, out_w, filters = y.shape
    m, alpha = at.shape
    span = tiles_w * filters
    rows = mt.reshape(alpha * alpha, -1)               # M[k, t*F + f]
    half = np.empty((alpha, span), y.dtype)            # (A^T M)[a, j] for one a
    block = np.empty((m, span), y.dtype)               # (A^T M A)[a, b] for that a
    for n in range(batch):
        for ty in range(tiles_h):
            t = (n * tiles_h + ty) * tiles_w
            for a in range(m):
                row = ty * m + a
                if row >= out_h:
                    break
                for j in range(alpha):                 # (A^T M)[a, j] = sum_i A^T[a, i] M[i, j]
                    first = True
                    for i in range(alpha):
                        if at[a, i] != 0:
                            _scaled_row(half[j], at[a, i],
                                        rows[i * alpha + j, t * filters:t * filters + span], first)
                            first = False
                for b in range(m):                     # (A^T M A)[a, b] = sum_j .[a, j] A[j, b]
                    first = True
                    for j in range(alpha):
                        if at[b, j] != 0:
                            _scaled_row(block[b], at[b, j], half[j], first)
                            first = False
                target = y[n, row]
                for tx in range(tiles_w):              # the tiles' columns in place, + bias
                    for b in range(min(m, out_w - tx * m)):
                        source = block[b, tx * filters:(tx + 1) * filters]
                        out = target[tx * m + b]
                        if relu:
                            for f in range(filters):
                                out[f] = max(source[f] + bias[f], 0)
                        else:
                            for f in range(filters):
                                out[f] = source[f] + bias[f]


@numba.njit(cache=True, nogil=True)
def output_tiles_adjoint(dy, at, tiles_h, tiles_w, dm):
    """``dM[i*alpha + j, t, f] = sum_{a, b} at[a, i] * dy[n, ty*m + a, tx*m + b, f] * at[b, j]``,
    with ``dy`` zero past its edge (the overhang had no gradient). ``dy`` C-contiguous."""
    batch, out_h, _, filters = dy.shape
    m, alpha = at.shape
    span = tiles_w * filters
    columns = np.empty((m, span), dy.dtype)            # dy[a, b] of a tile row, b = 0 .. m-1
    half = np.empty((m, alpha, span), dy.dtype)        # (dy A^T)[a, j]
    for n in range(batch):
        for ty in range(tiles_h):
            t = (n * tiles_h + ty) * tiles_w
            for a in range(m):
                row = ty * m + a
                if row >= out_h:
                    half[a] = 0
                    continue
                _deinterleaved(dy[n, row], 0, m, tiles_w, columns)
                for j in range(alpha):                 # (dy A^T)[a, j] = sum_b dy[a, b] A^T[b, j]
                    first = True
                    for b in range(m):
                        if at[b, j] != 0:
                            _scaled_row(half[a, j], at[b, j], columns[b], first)
                            first = False
            for i in range(alpha):                     # dM[i, j] = sum_a A[i, a] (dy A^T)[a, j]
                for j in range(alpha):
                    target = dm[i * alpha + j, t:t + tiles_w].reshape(span)
                    first = True
                    for a in range(m):
                        if at[a, i] != 0:
                            _scaled_row(target, at[a, i], half[a, j], first)
                            first = False
