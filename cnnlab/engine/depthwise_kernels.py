"""Compiled depthwise convolution, forward and backward, beside its NumPy reference in
``depthwise.py`` (whose docstring has the shapes and formula). Flat channel ``k = c*M + m``
is input channel ``c`` through filter ``m``; output pixel ``(y, x)``'s tap ``(i, j)`` reads
input pixel ``(y*sh + i*dh - top, x*sw + j*dw - left)``, zero outside the image.

    forward   out[n, y, x, k] = bias[k] + sum_{i, j} x[n, iy, ix, c] * kernel[i, j, k]
              then max(out, 0) when the caller fuses a ReLU (inference)
    backward  dkernel[i, j, k] = sum_{n, y, x} x[n, iy, ix, c] * dout[n, y, x, k]
              dx[n, iy, ix, c] = sum_{y, x, i, j, m at that pixel} dout[n, y, x, k] * kernel[i, j, k]

What they save. The reference pads the input into a copy and, per filter and tap, makes two
passes over the whole output (a multiply into a buffer, an add); backward the same again for
each gradient, plus a column sum per tap. Here nothing is padded (the padding is a bounds
test) and each output is written once, by one of two loops:

- **pixels** (any stride and depth multiplier): every output pixel's ``C*M`` values are made in
  one visit, its taps' input rows read where they lie and accumulated in place, in L1.
  Backward reads each output-gradient row once and, per tap, updates the kernel gradient's
  sums (float64) and scatters into the input gradient's row.
- **rows** (one filter per channel, stride 1): a whole image row at a time, each tap one
  contiguous multiply-add over the row (below, where it starts). Backward at stride 1 takes
  the kernel gradient this way, and the input gradient as the forward pass of the flipped
  kernel: a gather, each input pixel written once, with no zeroed array to scatter into.

``depthwise.py`` picks the loop per call. Each kernel is compiled on its own: when one
compiled function called the others, LLVM optimised the callees again inside each caller,
and the first forward and backward with an empty cache took 6.0 and 4.1 s to compile (2.6 s
together before the row loops); now 1.3 and 1.0 s at stride 1, and 0.8 and 0.9 s more for a
network's first strided layer.

MobileNet's depthwise layers, 64 images, float32, 1 thread, best of 10, before -> after (ms):

    layer (stride)        forward        backward
    32 x 32 x 32 (1)      3.36 -> 2.36   7.11 -> 4.51
    16 x 16 x 128 (1)     1.97 -> 1.88   5.08 -> 3.54
    8 x 8 x 256 (1)       0.85 -> 0.78   2.47 -> 1.82

(The strided layers keep the pixel loops.) A training step of ``mobilenet_small`` at batch
128 went from 513-534 to 443-459 ms on 1 thread and from 290-309 to 260-282 ms on 2, in three
interleaved pairs of fresh processes.

Loops over ``k`` are written separately for ``M == 1`` (the common case: one filter per
channel, where ``k == c`` and the loop vectorises) and for any ``M``.
"""

from __future__ import annotations

import numba
import numpy as np

# --- one filter per channel, stride 1 along the width: whole rows at a time ------------------
# Along an image row at stride 1, tap (i, j) pairs the output's flat row (Wo*C values) with
# the input's row shifted by a whole number of pixels: one contiguous multiply-add over the row
# against the tap's weights laid out Wo times (by ``depthwise``), instead of a short loop of C
# values per pixel and tap. Each tap's run costs one aliasing check rather than one per pixel,
# and the output row (a few KB) stays in L1 across the taps. Per element the order is the pixel
# loop's: bias, then taps (i, j) in order, so the two forward paths agree bit for bit.

@numba.njit(cache=True, nogil=True)
def _columns(j, dilation_w, left, width, out_w):
    """The output columns ``[lo, hi)`` whose tap ``j`` lies on the image, and its shift:
    input column = output column + shift."""
    shift = j * dilation_w - left
    lo = max(0, -shift)
    return lo, max(lo, min(out_w, width - shift)), shift


@numba.njit(cache=True, nogil=True)
def forward_rows(x, tiled, tiled_bias, stride_h, dilation, top, left, relu, out):
    """``out (N, Ho, Wo, C)`` at stride 1 along the width, one filter per channel: ``tiled
    (KH, KW, Wo*C)``, each tap's weights laid out Wo times, and ``tiled_bias (Wo*C,)``;
    ``relu``: then ``max(out, 0)``, on the row while it is in L1."""
    batch, height, width, channels = x.shape
    kh, kw, _ = tiled.shape
    _, out_h, out_w, _ = out.shape
    for n in range(batch):
        for y in range(out_h):
            row = out[n, y].reshape(out_w * channels)
            for t in range(row.size):
                row[t] = tiled_bias[t]
            for i in range(kh):
                iy = y * stride_h + i * dilation[0] - top
                if iy < 0 or iy >= height:
                    continue
                source_row = x[n, iy].reshape(width * channels)
                for j in range(kw):
                    lo, hi, shift = _columns(j, dilation[1], left, width, out_w)
                    # slices, so that each loop counts from 0 (no negative-index wrap to test)
                    target = row[lo * channels:hi * channels]
                    source = source_row[(lo + shift) * channels:(hi + shift) * channels]
                    weights = tiled[i, j, lo * channels:hi * channels]
                    for t in range(target.size):
                        target[t] += source[t] * weights[t]
            if relu:
                _relu(row)


@numba.njit(cache=True, nogil=True)
def _relu(values):
    """``max(values, 0)`` in place, as ``np.maximum(values, 0)``: NaN stays, -0 becomes +0."""
    zero = values.dtype.type(0)
    for t in range(values.size):
        value = values[t]
        values[t] = value if value > zero or value != value else zero


@numba.njit(cache=True, nogil=True)
def kernel_grad_rows(grad_out, x, kh, kw, dilation, top, left):
    """``dkernel (KH, KW, C)`` float64 from ``grad_out (N, Ho, Wo, C)`` and ``x (N, H, W, C)``
    at stride 1, one filter per channel: per image, each tap's products summed along the rows
    in a flat (Wo*C) row of the data's dtype, a sum of Ho terms, then added into float64 per
    channel (the reference's column sums are blocked sums in the data's dtype of the whole
    batch)."""
    batch, height, width, channels = x.shape
    _, out_h, out_w, _ = grad_out.shape
    sums = np.zeros((kh, kw, channels), np.float64)
    partial = np.empty((kh, kw, out_w * channels), grad_out.dtype)
    for n in range(batch):
        partial[...] = 0
        for y in range(out_h):
            g_row = grad_out[n, y].reshape(out_w * channels)
            for i in range(kh):
                iy = y + i * dilation[0] - top
                if iy < 0 or iy >= height:
                    continue
                source_row = x[n, iy].reshape(width * channels)
                for j in range(kw):
                    lo, hi, shift = _columns(j, dilation[1], left, width, out_w)
                    target = partial[i, j, lo * channels:hi * channels]
                    source = source_row[(lo + shift) * channels:(hi + shift) * channels]
                    g = g_row[lo * channels:hi * channels]
                    for t in range(target.size):
                        target[t] += source[t] * g[t]
        for i in range(kh):
            for j in range(kw):
                for p in range(out_w):
                    for k in range(channels):
                        sums[i, j, k] += partial[i, j, p * channels + k]
    return sums


# --- any stride and depth multiplier: pixel by pixel ------------------------------------------
@numba.njit(cache=True, nogil=True)
def forward_pixels(x, kernel, bias, strides, dilation, top, left, relu, out):
    """``out (N, Ho, Wo, C*M)`` from ``x (N, H, W, C)``, ``kernel (KH, KW, C, M)`` and
    ``bias (C*M,)`` (zeros when the layer has none); ``relu``: then ``max(out, 0)``, each
    pixel as it is done. ``x`` and ``out`` C-contiguous."""
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
                if relu:
                    _relu(row)


@numba.njit(cache=True, nogil=True)
def backward_pixels(grad_out, x, kernel, strides, dilation, top, left, need_input_grad,
                     grad_x):
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
