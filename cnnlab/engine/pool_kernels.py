"""Compiled max pooling, beside its NumPy reference (``pool.py``, whose docstring has the
shapes). ``x (N, H, W, C)``, ``out, winner, dy (N, Ho, Wo, C)``; the window of output
``(oy, ox)`` reads ``x[n, oy*sh + i - top, ox*sw + j - left]`` for the taps ``t = i*kw + j``
that fall on the image (padding is a bounds test: a padded cell never wins, as with -inf).

    forward                                      backward
    out[n, oy, ox, c] = max over the taps        dx[n, y, x, c] = sum of dy[n, oy, ox, c] over
    winner[...] = the first tap that holds it    the windows whose winner is the tap at (y, x)

What they save. The reference walks the taps as whole-array passes: per tap, a strided read of
the input, a compare into a byte mask, a maximum into the output and one into the winners
(4 passes over the output's size), and the backward zeroes the input-sized gradient, then
multiplies and adds per tap. Here each window is read once and each gradient cell written once:
``benchmarks/kernels.py`` has the times. Where the windows tile the image (stride = pool, the
usual 2x2), every covered cell is written exactly once, so only the margin no window reaches
is zeroed first.

Both kernels walk a window's taps as two nested loops, rows then columns, each skipping what
lies off the image. One flat loop over the taps through a shared helper (``tap // kw``,
``tap % kw``) read better but measured 15-25% slower in ``benchmarks/kernels.py --ops``, so
the two loop heads stay written out.

Ties and NaN as the reference: every window starts at -inf with tap 0 winning (the padded
cell's value), a later tap wins only if strictly greater, and a NaN makes the output NaN
(``np.maximum``) without taking the winner.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def max_pool(x, kh, kw, sh, sw, top, left, out, winner, track):
    """``out`` (and, when ``track``, ``winner``) for every window; ``out`` C-contiguous."""
    batch, height, width, channels = x.shape
    _, out_h, out_w, _ = out.shape
    for n in range(batch):
        for oy in range(out_h):
            for ox in range(out_w):
                best, won = out[n, oy, ox], winner[n, oy, ox]
                best[:] = -np.inf                      # what a padded cell holds
                if track:
                    won[:] = 0
                for i in range(kh):
                    y = oy * sh + i - top
                    if not 0 <= y < height:
                        continue
                    for j in range(kw):
                        column = ox * sw + j - left
                        if not 0 <= column < width:
                            continue
                        row, tap = x[n, y, column], i * kw + j
                        if track:
                            for c in range(channels):
                                if row[c] > best[c]:
                                    best[c] = row[c]
                                    won[c] = tap
                                elif row[c] != row[c]:         # NaN: np.maximum's output
                                    best[c] = row[c]
                        else:
                            for c in range(channels):
                                if row[c] > best[c] or row[c] != row[c]:
                                    best[c] = row[c]


@numba.njit(cache=True, nogil=True)
def max_pool_backward(dy, winner, kh, kw, sh, sw, top, left, dx):
    """``dx`` from ``dy`` and the forward's ``winner``; ``dx`` C-contiguous, any values."""
    batch, out_h, out_w, channels = dy.shape
    _, height, width, _ = dx.shape
    tiled = sh == kh and sw == kw
    if tiled:                              # zero only what no window covers
        y_end, x_end = min(height, out_h * kh - top), min(width, out_w * kw - left)
        for n in range(batch):
            for y in range(height):
                if y < -top or y >= y_end:
                    dx[n, y] = 0
                    continue
                for column in range(width):
                    if column < -left or column >= x_end:
                        dx[n, y, column] = 0
    else:                                  # windows overlap or leave gaps: add into zeros
        dx[:] = 0
    for n in range(batch):
        for oy in range(out_h):
            for ox in range(out_w):
                grad, won = dy[n, oy, ox], winner[n, oy, ox]
                for i in range(kh):
                    y = oy * sh + i - top
                    if not 0 <= y < height:
                        continue
                    for j in range(kw):
                        column = ox * sw + j - left
                        if not 0 <= column < width:
                            continue
                        target, tap = dx[n, y, column], i * kw + j
                        if tiled:
                            for c in range(channels):
                                target[c] = grad[c] if won[c] == tap else 0
                        else:
                            for c in range(channels):
                                if won[c] == tap:
                                    target[c] += grad[c]
