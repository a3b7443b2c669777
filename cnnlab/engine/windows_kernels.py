"""Compiled im2col and col2im, beside their NumPy references (``windows.im2col`` and
``windows.col2im``, whose docstrings have the shapes): copying every window into a row, which
the convolutions Winograd does not take (stems, strided layers) start from, and its adjoint,
which a strided convolution's input gradient and average pooling's gradient end in.

im2col's reference pads a copy of the input, then copies its windows through a 6-D strided
view, whose innermost run is C values (3 for an RGB stem); here padding is a bounds test and a
tap row on the image is one run of KW*C values: 2.54 -> 1.73 ms for ResNet-20's stem and
1.93 -> 1.00 ms for its first strided layer (batch 128, 1 thread).

    reference (scatter, one pass per tap)       here (gather, one pass in all)
    grad_xp = 0                                 for each input pixel (y, x):
    for each tap (i, j):                          grad_x[n, y, x, :] = sum over the taps (i, j)
      grad_xp[:, i*dh + oy*sh, j*dw + ox*sw]        whose window (oy, ox) read it, i.e.
        += grad_windows[:, oy, ox, i, j]            oy*sh + i*dh = y + top, ox*sw + j*dw = x + left,
    grad_x = grad_xp without its padding            of grad_windows[n, oy, ox, i, j, :]

The reference reads and writes the padded input-sized array once per tap (9 times for a 3x3
kernel), strided, and zeroes it first; here every input pixel is written once, with its taps
added in the reference's order (rows, then columns, from 0), so the two agree bit for bit.

Indices are unsigned (``np.uint64``) where a loop over channels reads and writes: a signed
index carries Numba's wrap-around test, which keeps LLVM from vectorising the loop (see
``winograd_kernels``).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(inline="always")
def _window(pixel, pad, tap, dilation, stride, windows):
    """The window whose tap ``tap`` reads ``pixel`` along one axis (``window * stride + tap *
    dilation = pixel + pad``), or -1 where none does."""
    offset = pixel + pad - tap * dilation
    if offset < 0 or offset % stride != 0 or offset // stride >= windows:
        return -1
    return offset // stride


@numba.njit(inline="always", nogil=True)
def tap_pixel(y, x, i, j, strides, dilation, top, left, height, width):
    """The input pixel ``(iy, ix)`` that tap ``(i, j)`` of output pixel ``(y, x)`` reads, and
    whether it lies on the image (padding reads a zero): ``iy = y*sh + i*dh - top``, ``ix =
    x*sw + j*dw - left``. What the compiled direct convolutions share."""
    iy = y * strides[0] + i * dilation[0] - top
    ix = x * strides[1] + j * dilation[1] - left
    return iy, ix, 0 <= iy < height and 0 <= ix < width


@numba.njit(inline="always", nogil=True)
def inner_columns(out_w, width, kw, stride, dilation, left, block):
    """The output columns ``[first, end)`` whose every tap lies on the image along the width
    (``x*sw - left >= 0`` and ``x*sw - left + (KW - 1)*dw <= W - 1``; ``left < 0`` is a crop),
    which a direct convolution runs in blocks of ``block`` pixels; ``(out_w, out_w)`` where
    they are fewer than one block, so that every pixel goes one by one."""
    first = max(0, (left + stride - 1) // stride)
    last = width - 1 - (kw - 1) * dilation + left
    end = min(out_w, last // stride + 1) if last >= 0 else 0
    if end - first < block:
        return out_w, out_w
    return first, end


@numba.njit(cache=True, nogil=True)
def col2im(grad_windows, sh, sw, dh, dw, top, left, grad_x):
    """``grad_x (N, H, W, C)`` from ``grad_windows (N, Ho, Wo, KH, KW, C)``; both C-contiguous,
    every cell of ``grad_x`` written. A pixel's sum is taken in a row of its own and copied
    out; which windows read a pixel is worked out once per row and once per column. (Adding
    straight into ``grad_x``, with the windows worked out per pixel, took 1.32 and 0.43 ms
    against 0.98 and 0.35 ms on ResNet-20's strided layers' gradients, 64 images.)"""
    batch, out_h, out_w, kh, kw, channels = grad_windows.shape
    _, height, width, _ = grad_x.shape
    source = grad_windows.reshape(-1)
    target = grad_x.reshape(-1)
    c = np.uint64(channels)
    total = np.empty(channels, grad_x.dtype)
    window_row = np.empty(kh, np.int64)             # per tap row i: the window row, or -1
    window_col = np.empty((width, kw), np.int64)    # per column x and tap column j
    for x in range(width):
        for j in range(kw):
            window_col[x, j] = _window(x, left, j, dw, sw, out_w)
    for n in range(batch):
        for y in range(height):
            for i in range(kh):
                window_row[i] = _window(y, top, i, dh, sh, out_h)
            for x in range(width):
                for e in range(c):
                    total[e] = 0
                for i in range(kh):
                    oy = window_row[i]
                    if oy < 0:
                        continue
                    for j in range(kw):
                        ox = window_col[x, j]
                        if ox < 0:
                            continue
                        read = np.uint64(((((n * out_h + oy) * out_w + ox) * kh + i) * kw + j)
                                         * channels)
                        for e in range(c):
                            total[e] += source[read + e]
                at = np.uint64(((n * height + y) * width + x) * channels)
                for e in range(c):
                    target[at + e] = total[e]
    return grad_x


@numba.njit(cache=True, nogil=True)
def im2col(x, kh, kw, sh, sw, dh, dw, top, left, cols):
    """Every window of ``x (N, H, W, C)`` copied into one row of ``cols (N, Ho, Wo, K')``,
    C-contiguous, ``K' >= KH*KW*C`` (a folded bias's ones column after them is left as it is):
    ``cols[n, oy, ox, (i*KW + j)*C + c] = x[n, oy*sh + i*dh - top, ox*sw + j*dw - left, c]``,
    0 where that pixel is padding. A tap row whose pixels all lie on the image and touch
    (``dw = 1``) is one run of ``KW*C`` values."""
    batch, height, width, channels = x.shape
    _, out_h, out_w, row_length = cols.shape
    source = x.reshape(-1)
    target = cols.reshape(-1)
    zero = x.dtype.type(0)
    run = np.uint64(kw * channels)
    c = np.uint64(channels)
    for n in range(batch):
        for oy in range(out_h):
            for ox in range(out_w):
                at = np.uint64(((n * out_h + oy) * out_w + ox) * row_length)
                left_x = ox * sw - left
                whole_row = dw == 1 and left_x >= 0 and left_x + kw <= width
                for i in range(kh):
                    y = oy * sh + i * dh - top
                    put = at + np.uint64(i) * run
                    if y < 0 or y >= height:
                        for e in range(run):
                            target[put + e] = zero
                    elif whole_row:
                        read = np.uint64(((n * height + y) * width + left_x) * channels)
                        for e in range(run):
                            target[put + e] = source[read + e]
                    else:
                        for j in range(kw):
                            col = left_x + j * dw
                            tap = put + np.uint64(j) * c
                            if col < 0 or col >= width:
                                for e in range(c):
                                    target[tap + e] = zero
                            else:
                                read = np.uint64(((n * height + y) * width + col) * channels)
                                for e in range(c):
                                    target[tap + e] = source[read + e]
    return cols
