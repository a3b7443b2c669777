"""A compiled convolution without im2col, beside its reference in ``conv.py`` (im2col, then
the GEMM and its epilogue, ``dense.linear``):

    implicit_gemm(x (N, H, W, C), panels, kh, kw, bias (F,), has_bias, relu, strides,
                  dilation, top, left, out (N, Ho, Wo, F))
        out[n, y, x, f] = bias[f] + sum_{i, j, c} x[n, y*sh + i*dh - top, x*sw + j*dw - left, c]
                                                  * kernel[i, j, c, f]   (0 off the image)
        then max(out, 0) if relu; ``panels``: the kernel as ``(KH*KW*C, F)`` packed by
        ``dense_kernels.pack`` into column blocks of one vector each

im2col copies every window into a row (KH*KW times the input, written out and read back) for
a GEMM whose K is small where it is used: 27 for an RGB stem, 25 for the article's first
layer. Here the GEMM's block (``dense_kernels.gemm_block``, gathered) reads each window where
it lies: a row of the output's pixels (``ROWS`` of them, ``sw*C`` apart in the input) takes
its taps through one list of offsets into the image, made once per output row from the kernel
rows that lie on it; the pixels near the left and right sides, whose taps leave the image,
go one by one, each with a list of its own taps (``conv.py`` pads the width by a copy first,
so that none do there). The weights' offsets follow the same list,
so a skipped tap skips its weights too. Values agree with the reference to rounding (sums
in tap order, fused multiply-adds).
"""

from __future__ import annotations

import numba
import numpy as np

from cnnlab.engine.dense_kernels import ROWS, gemm_block
from cnnlab.engine.simd import VECTOR_BYTES
from cnnlab.engine.windows_kernels import inner_columns, tap_pixel

_rows_block = gemm_block(ROWS, gathered=True)
_one_row = gemm_block(1, gathered=True)


@numba.njit(inline="always")
def _pixel_taps(n, y, xo, height, width, channels, kh, kw, strides, dilation, top, left, lanes,
                a_offsets, b_offsets):
    """One output pixel's taps on the image: ``a_offsets`` into the flat input, ``b_offsets``
    into a column block's panel (K index times lanes); returns how many."""
    count = 0
    for i in range(kh):
        for j in range(kw):
            iy, ix, on_image = tap_pixel(y, xo, i, j, strides, dilation, top, left, height, width)
            if not on_image:
                continue
            for c in range(channels):
                a_offsets[count] = ((n * height + iy) * width + ix) * channels + c
                b_offsets[count] = ((i * kw + j) * channels + c) * lanes
                count += 1
    return count


@numba.njit(cache=True, nogil=True)
def implicit_gemm(x, panels, kh, kw, bias, has_bias, relu, strides, dilation, top, left, out):
    """See the module docstring. ``x`` and ``out`` C-contiguous; Wo >= ROWS is not needed (a
    row too short for one block goes pixel by pixel), F >= one vector is."""
    batch, height, width, channels = x.shape
    _, out_h, out_w, features = out.shape
    lanes = VECTOR_BYTES // x.itemsize
    k = kh * kw * channels
    columns = (features + lanes - 1) // lanes
    if features < lanes or panels.size != columns * k * lanes:
        raise ValueError("implicit_gemm takes panels of (KH*KW*C, F), F >= one vector")
    flat_x, flat_out = x.reshape(-1), out.reshape(-1)
    flat_bias = bias.reshape(-1) if has_bias else flat_out     # read, never added, if no bias
    a_offsets, b_offsets = np.empty(k, np.int64), np.empty(k, np.int64)
    first, end = inner_columns(out_w, width, kw, strides[1], dilation[1], left, ROWS)
    for n in range(batch):
        for y in range(out_h):
            for xo in range(out_w):
                if first <= xo < end:
                    continue
                count = _pixel_taps(n, y, xo, height, width, channels, kh, kw, strides,
                                    dilation, top, left, lanes, a_offsets, b_offsets)
                at = ((n * out_h + y) * out_w + xo) * features
                for block in range(columns):
                    column = min(block * lanes, features - lanes)
                    _one_row(flat_x, 0, 0, a_offsets, panels, block * k * lanes, b_offsets,
                             count, flat_bias, column, has_bias, relu, flat_out, at + column,
                             features)
            if first == end:
                continue
            count = 0                     # the row's taps, from the first pixel's column 0
            for i in range(kh):
                iy = y * strides[0] + i * dilation[0] - top
                if iy < 0 or iy >= height:
                    continue
                for j in range(kw):
                    for c in range(channels):
                        a_offsets[count] = ((n * height + iy) * width + j * dilation[1]) \
                            * channels + c
                        b_offsets[count] = ((i * kw + j) * channels + c) * lanes
                        count += 1
            for row_block in range(first, end, ROWS):
                xo = min(row_block, end - ROWS)
                at = ((n * out_h + y) * out_w + xo) * features
                for block in range(columns):
                    column = min(block * lanes, features - lanes)
                    _rows_block(flat_x, (xo * strides[1] - left) * channels,
                                strides[1] * channels, a_offsets, panels, block * k * lanes,
                                b_offsets, count, flat_bias, column, has_bias, relu, flat_out,
                                at + column, features)
    return out
