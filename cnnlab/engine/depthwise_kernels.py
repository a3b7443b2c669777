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
test) and each output is written once, by one of three loops:

- **pixels** (any stride and depth multiplier): every output pixel's ``C*M`` values are made in
  one visit, its taps' input rows read where they lie and accumulated in place, in L1.
  Backward reads each output-gradient row once and, per tap, updates the kernel gradient's
  sums (float64) and scatters into the input gradient's row.
- **rows** (one filter per channel, stride 1): a whole image row at a time, each tap one
  contiguous multiply-add over the row (below, where it starts). Backward at stride 1 takes
  the kernel gradient this way, and the input gradient as the forward pass of the flipped
  kernel: a gather, each input pixel written once, with no zeroed array to scatter into.
- **blocks** (one filter per channel, at least one 64-byte vector of channels; used at stride
  1, and at any stride on data in cache): 4 neighbouring pixels by one vector of channels, the
  sums in registers (LLVM vector values, ``simd``), bit for bit the pixel loops' sums; a
  3-tap kernel row's input vectors loaded once for its taps.

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
from numba import types
from numba.extending import intrinsic

from cnnlab.engine.simd import VECTOR_BYTES, Vectors
from cnnlab.engine.windows_kernels import inner_columns, tap_pixel

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
@numba.njit(inline="always")
def _pixel(x, taps, bias, n, y, xo, strides, dilation, top, left, relu, row):
    """One output pixel's ``C*M`` values into ``row``: the bias, then each tap's products in
    order (rows i, then columns j), taps off the image skipped; then the ReLU if ``relu``."""
    _, height, width, channels = x.shape
    kh, kw, flat = taps.shape
    mult = flat // channels
    for k in range(flat):
        row[k] = bias[k]
    for i in range(kh):
        for j in range(kw):
            iy, ix, on_image = tap_pixel(y, xo, i, j, strides, dilation, top, left, height, width)
            if not on_image:
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
def forward_pixels(x, kernel, bias, strides, dilation, top, left, relu, out):
    """``out (N, Ho, Wo, C*M)`` from ``x (N, H, W, C)``, ``kernel (KH, KW, C, M)`` and
    ``bias (C*M,)`` (zeros when the layer has none); ``relu``: then ``max(out, 0)``, each
    pixel as it is done. ``x`` and ``out`` C-contiguous."""
    batch = x.shape[0]
    kh, kw, _, mult = kernel.shape
    _, out_h, out_w, flat = out.shape
    taps = kernel.reshape(kh, kw, flat)
    for n in range(batch):
        for y in range(out_h):
            for xo in range(out_w):
                _pixel(x, taps, bias, n, y, xo, strides, dilation, top, left, relu, out[n, y, xo])


# --- one filter per channel, a vector of channels at a time: blocks of pixels ----------------
# Where a row's pixels are far enough from the image's sides that every tap lies on it, a
# block of BLOCK_PIXELS neighbouring output pixels by one vector of channels is one loop over
# the taps whose sums stay in registers (``_taps_block``, LLVM vector values: ``simd``): per
# tap, one load of the weights' vector and one of each pixel's input vector. The pixel loops
# above keep their sums in the output row instead, a load and a store around every
# multiply-add. The order of the sums is the pixel loop's (the bias, then each tap's product,
# multiplied and added apart, not fused), so the two agree bit for bit; the pixels near the
# sides, and a row too short for one block, go through ``_pixel``.

#: neighbouring output pixels per block: 4 vector sums (8 of AVX2's 16 registers, with the
#: weights' vector and one input vector beside them)
BLOCK_PIXELS = 4


def _store_sums(v, sums, relu, out_ptr, out_at, out_step) -> None:
    """A block's epilogue: pixel ``p``'s vector sum, with the ReLU if ``relu`` (the intrinsic's
    argument), into ``out[out_at + p * out_step:]``."""
    for p, total in enumerate(sums):
        v.store(v.relu(total, on=relu), out_ptr,
                v.builder.add(out_at, v.builder.mul(v.integer(p), out_step)))


def _taps_block(pixels: int):
    """The intrinsic for blocks of ``pixels`` neighbouring output pixels (see the section's
    comment): for ``p < pixels`` and a vector of ``lanes`` channels from ``channel``,
    ``out[out_at + p*out_step + e] = bias[channel + e] + sum_t x[x_at + x_offsets[t] +
    p*pixel_step + e] * weights[w_offsets[t] + channel + e]`` over ``t < taps`` in order, each
    product rounded before it is added; then the ReLU if ``relu``. No bounds are checked."""
    @intrinsic
    def block(typingctx, x, x_at, pixel_step, x_offsets, weights, w_offsets, taps, bias,
              channel, relu, out, out_at, out_step):
        sig = types.void(x, x_at, pixel_step, x_offsets, weights, w_offsets, taps, bias,
                         channel, relu, out, out_at, out_step)

        def codegen(context, builder, signature, args):
            v = Vectors(context, builder, signature.args[0].dtype)
            x_ptr, x_off_ptr, w_ptr, w_off_ptr, bias_ptr, out_ptr = (
                v.pointer(args[i], signature.args[i]) for i in (0, 3, 4, 5, 7, 10))
            x_at, pixel_step, taps, channel, out_at, out_step = (
                v.index(args[i], signature.args[i]) for i in (1, 2, 6, 8, 11, 12))
            starts = [builder.add(x_at, builder.mul(v.integer(p), pixel_step))
                      for p in range(pixels)]

            def step(t, sums):
                x_offset = builder.load(builder.gep(x_off_ptr, [t]))
                w_offset = builder.load(builder.gep(w_off_ptr, [t]))
                weight = v.load(w_ptr, builder.add(w_offset, channel))
                return [builder.fadd(total, builder.fmul(
                    v.load(x_ptr, builder.add(start, x_offset)), weight))
                    for start, total in zip(starts, sums)]

            sums = v.loop(taps, [v.load(bias_ptr, channel)] * pixels, step)
            _store_sums(v, sums, args[9], out_ptr, out_at, out_step)
            return context.get_dummy_value()

        return sig, codegen

    return block


_block_of_pixels = _taps_block(BLOCK_PIXELS)
_one_pixel = _taps_block(1)


def _kernel_rows_block(pixels: int, kw: int, stride: int):
    """The intrinsic for blocks of ``pixels`` neighbouring output pixels whose kernel rows are
    ``kw`` taps wide, ``stride`` apart along the width, dilation 1: a block's taps in one
    kernel row read ``(pixels - 1) * stride + kw`` neighbouring input vectors, each loaded once
    for all of them (``_taps_block`` loads one per tap and pixel). For ``p < pixels`` and a
    vector of channels from ``channel``: ``out[out_at + p*out_step + e] = bias[channel + e] +
    sum_{r < rows} sum_{j < kw} x[x_at + r*row_step + (p*stride + j)*channels + e] *
    weights[w_at + r*w_row_step + j*channels + e]``, in that order (``_taps_block``'s: rows,
    then taps), each product rounded before it is added; then the ReLU if ``relu``. ``x_at``
    and ``w_at`` include ``channel``. No bounds are checked."""
    @intrinsic
    def block(typingctx, x, x_at, row_step, rows, weights, w_at, w_row_step, channels, bias,
              channel, relu, out, out_at, out_step):
        sig = types.void(x, x_at, row_step, rows, weights, w_at, w_row_step, channels, bias,
                         channel, relu, out, out_at, out_step)

        def codegen(context, builder, signature, args):
            v = Vectors(context, builder, signature.args[0].dtype)
            x_ptr, w_ptr, bias_ptr, out_ptr = (
                v.pointer(args[i], signature.args[i]) for i in (0, 4, 8, 11))
            x_at, row_step, rows, w_at, w_row_step, c, channel, out_at, out_step = (
                v.index(args[i], signature.args[i]) for i in (1, 2, 3, 5, 6, 7, 9, 12, 13))

            def step(r, sums):
                x_row = builder.add(x_at, builder.mul(r, row_step))
                w_row = builder.add(w_at, builder.mul(r, w_row_step))
                weights = [v.load(w_ptr, builder.add(w_row, builder.mul(v.integer(j), c)))
                           for j in range(kw)]
                columns = [v.load(x_ptr, builder.add(x_row, builder.mul(v.integer(col), c)))
                           for col in range((pixels - 1) * stride + kw)]
                sums = list(sums)
                for j in range(kw):
                    for p in range(pixels):
                        sums[p] = builder.fadd(sums[p], builder.fmul(columns[p * stride + j],
                                                                     weights[j]))
                return sums

            sums = v.loop(rows, [v.load(bias_ptr, channel)] * pixels, step)
            _store_sums(v, sums, args[10], out_ptr, out_at, out_step)
            return context.get_dummy_value()

        return sig, codegen

    return block


#: 3-tap kernel rows at stride 1 and 2, the shapes the zoo's depthwise layers have; others
#: take ``_block_of_pixels``. In L2 (2 images, as in ``engine.chain``'s pieces), 1 thread,
#: G multiply-adds a second, ``_block_of_pixels`` against these: 32 x 32 x 32 stride 1
#: 19.3 / 23.6, 16 x 16 x 128 15.8 / 20.4, 8 x 8 x 256 18.3 / 20.8; stride 2: 32 x 32 x 64
#: 14.9 / 17.3, 16 x 16 x 128 16.2 / 17.8, 8 x 8 x 256 12.0 / 11.5. From memory (64 images)
#: they were level, and did not land before the chain kept the input in cache.
_row_block_3 = _kernel_rows_block(BLOCK_PIXELS, 3, 1)
_row_block_3_stride_2 = _kernel_rows_block(BLOCK_PIXELS, 3, 2)


@numba.njit(cache=True, nogil=True)
def forward_blocks(x, kernel, bias, strides, dilation, top, left, relu, out):
    """``forward_pixels`` for one filter per channel (``kernel (KH, KW, C, 1)``) and at least
    one vector of channels. The pixels of a row whose taps all lie on the image (columns
    ``first`` to ``end``) go in blocks of ``BLOCK_PIXELS``, the row's tap list made once; the
    last block of a row, and the last vector of channels, move back to end on the edge (some
    values made twice, the same way); a 3-tap kernel row at stride 1 or 2 (dilation 1 along
    the width) is read a row at a time (``_kernel_rows_block``). The others go one by one,
    each with the list of its taps on the image."""
    batch, height, width, channels = x.shape
    kh, kw = kernel.shape[0], kernel.shape[1]
    _, out_h, out_w, _ = out.shape
    lanes = VECTOR_BYTES // x.itemsize
    weights, flat_x, flat_out = kernel.reshape(-1), x.reshape(-1), out.reshape(-1)
    x_offsets, w_offsets = np.empty(kh * kw, np.int64), np.empty(kh * kw, np.int64)
    first, end = inner_columns(out_w, width, kw, strides[1], dilation[1], left, BLOCK_PIXELS)
    for n in range(batch):
        for y in range(out_h):
            for xo in range(out_w):
                if first <= xo < end:
                    continue
                count = 0
                for i in range(kh):
                    for j in range(kw):
                        iy, ix, on_image = tap_pixel(y, xo, i, j, strides, dilation, top, left,
                                                     height, width)
                        if on_image:
                            x_offsets[count] = ((n * height + iy) * width + ix) * channels
                            w_offsets[count] = (i * kw + j) * channels
                            count += 1
                at = ((n * out_h + y) * out_w + xo) * channels
                for vector in range(0, channels, lanes):
                    channel = min(vector, channels - lanes)
                    _one_pixel(flat_x, channel, 0, x_offsets, weights, w_offsets, count, bias,
                               channel, relu, flat_out, at + channel, channels)
            if first == end:
                continue
            if kw == 3 and dilation[1] == 1 and strides[1] <= 2:       # a kernel row at once
                lowest, highest = kh, 0                     # the kernel rows on the image
                for i in range(kh):
                    if 0 <= y * strides[0] + i * dilation[0] - top < height:
                        lowest, highest = min(lowest, i), i + 1
                row = (n * height + y * strides[0] + lowest * dilation[0] - top) * width
                for block in range(first, end, BLOCK_PIXELS):
                    xo = min(block, end - BLOCK_PIXELS)
                    at = ((n * out_h + y) * out_w + xo) * channels
                    x_at = (row + xo * strides[1] - left) * channels
                    for vector in range(0, channels, lanes):
                        channel = min(vector, channels - lanes)
                        arguments = (flat_x, x_at + channel, dilation[0] * width * channels,
                                     highest - lowest, weights, lowest * kw * channels + channel,
                                     kw * channels, channels, bias, channel, relu, flat_out,
                                     at + channel, channels)
                        if strides[1] == 1:
                            _row_block_3(*arguments)
                        else:
                            _row_block_3_stride_2(*arguments)
                continue
            count = 0
            for i in range(kh):
                iy = y * strides[0] + i * dilation[0] - top
                if 0 <= iy < height:
                    for j in range(kw):
                        x_offsets[count] = ((n * height + iy) * width + j * dilation[1]) * channels
                        w_offsets[count] = (i * kw + j) * channels
                        count += 1
            for block in range(first, end, BLOCK_PIXELS):
                xo = min(block, end - BLOCK_PIXELS)
                at = ((n * out_h + y) * out_w + xo) * channels
                for vector in range(0, channels, lanes):
                    channel = min(vector, channels - lanes)
                    _block_of_pixels(flat_x, (xo * strides[1] - left) * channels + channel,
                                     strides[1] * channels, x_offsets, weights, w_offsets,
                                     count, bias, channel, relu, flat_out, at + channel,
                                     channels)


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
                    for j in range(kw):
                        iy, ix, on_image = tap_pixel(y, xo, i, j, strides, dilation, top, left,
                                                     height, width)
                        if not on_image:
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
