"""Compiled depthwise convolution, forward and backward, beside its NumPy reference in
``depthwise.py`` (whose docstring has the shapes and formula). Flat channel ``k = c*M + m``
is input channel ``c`` through filter ``m``; output pixel ``(y, x)``'s tap ``(i, j)`` reads
input pixel ``(y*sh + i*dh - top, x*sw + j*dw - left)``, zero outside the image.

    forward   out[n, y, x, k] = bias[k] + sum_{i, j} x[n, iy, ix, c] * kernel[i, j, k]
    backward  dkernel[i, j, k] = sum_{n, y, x} x[n, iy, ix, c] * dout[n, y, x, k]
              dx[n, iy, ix, c] = sum_{y, x, i, j, m at that pixel} dout[n, y, x, k] * kernel[i, j, k]

What they save. The reference pads the input into a copy and, per filter and tap, makes two
passes over the whole output (a multiply into a buffer, an add); backward the same again for
each gradient, plus a column sum per tap. Here every output pixel's row of ``C*M`` values is
made in one visit: its taps' input rows are read where they lie (the padding is a bounds test)
and accumulated in place, in L1. Backward reads each output-gradient row once and, per tap,
updates the kernel gradient's sums (float64) and the input gradient's row.

Loops over ``k`` are written separately for ``M == 1`` (the common case: one filter per
channel, where ``k == c`` and the loop vectorises) and for any ``M``.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def forward(x, kernel, bias, strides, dilation, top, left, out):
    """``out (N, Ho, Wo, C*M)`` from ``x (N, H, W, C)``, ``kernel (KH, KW, C, M)`` and
    ``bias (C*M,)`` (zeros when the layer has none). ``x`` and ``out`` C-contiguous."""
    batch, height, width, channels = x.shape
    kh, kw, _, mult = kernel.shape
    _, out_h, out_w, flat = out.shape
    taps = kernel.reshape(kh, kw, flat)
    for n in range(batch):
        for y in range(out_h):
            for xo in range(out_w):
                row = out[n, y, xo]
                for k in range(flat):
                    row[k] = bias[k]
                for i in range(kh):
                    iy = y * strides[0] + i * dilation[0] - top
                    if iy < 0 or iy >= height:
                        continue
                    for j in range(kw):
                        ix = xo * strides[1] + j * dilation[1] - left
                        if ix < 0 or ix >= width:
                            continue
                        source, weights = x[n, iy, ix], taps[i, j]
                        if mult == 1:
                            for k in range(flat):
                                row[k] += source[k] * weights[k]
                        else:
                            for c in range(channels):
                                for m in range(mult):
                                    row[c * mult + m] += source[c] * weights[c * mult + m]


@numba.njit(cache=True, nogil=True)
def backward(grad_out, x, kernel, strides, dilation, top, left, need_input_grad, grad_x):
    """The kernel gradient ``(KH, KW, C, M)`` in ``kernel``'s dtype (summed in float64), and,
    when ``need_input_grad``, the input gradient added into ``grad_x (N, H, W, C)``, which the
    caller zeroes. ``grad_out (N, Ho, Wo, C*M)`` and ``x`` C-contiguous."""
    batch, height, width, channels = x.shape
    kh, kw, _, mult = kernel.shape
    _, out_h, out_w, flat = grad_out.shape
    taps = kernel.reshape(kh, kw, flat)
    sums = np.zeros((kh, kw, flat), np.float64)
    for n in range(batch):
        for y in range(out_h):
            for xo in range(out_w):
                g = grad_out[n, y, xo]
                for i in range(kh):
                    iy = y * strides[0] + i * dilation[0] - top
                    if iy < 0 or iy >= height:
                        continue
                    for j in range(kw):
                        ix = xo * strides[1] + j * dilation[1] - left
                        if ix < 0 or ix >= width:
                            continue
                        source, weights, total = x[n, iy, ix], taps[i, j], sums[i, j]
                        if mult == 1:
                            for k in range(flat):
                                total[k] += source[k] * g[k]
                            if need_input_grad:
                                target = grad_x[n, iy, ix]
                                for k in range(flat):
                                    target[k] += g[k] * weights[k]
                        else:
                            for c in range(channels):
                                for m in range(mult):
                                    total[c * mult + m] += source[c] * g[c * mult + m]
                            if need_input_grad:
                                target = grad_x[n, iy, ix]
                                for c in range(channels):
                                    for m in range(mult):
                                        target[c] += g[c * mult + m] * weights[c * mult + m]
    return sums.astype(kernel.dtype).reshape(kernel.shape)
