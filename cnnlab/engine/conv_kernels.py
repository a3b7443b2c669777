"""A compiled convolution without im2col, beside its reference in ``conv.py`` (im2col, then
the GEMM and its epilogue, ``dense.linear``):

    implicit_gemm(x (N, H, W, C), panels, kh, kw, bias (F,), has_bias, relu, strides,
                  dilation, top, left, out (N, Ho, Wo, F))
        out[n, y, x, f] = bias[f] + sum_{i, j, c} x[n, y*sh + i*dh - top, x*sw + j*dw - left, c]
                                                  * kernel[i, j, c, f]   (0 off the image)
        then max(out, 0) if relu; ``panels``: the kernel as ``(KH*KW*C, F)`` packed by
        ``dense_kernels.pack`` into column blocks of one vector each
    implicit_kernel_grad(x (N, H, W, C), grad_out (N, Ho, Wo, F), kh, kw, strides,
                         dilation_h, top, sums (KH*KW*C, blocks * lanes))
        dkernel[i, j, c, f] = sum_{n, y, x} x[n, y*sh + i*dh - top, x*sw + j, c]
                                            * grad_out[n, y, x, f]           (its backward)
        dilation 1 and no padding along the width (``conv.py`` pads a copy); ``sums`` holds
        one vector of columns per block, the last moved back to end on F's edge
    implicit_gemm_pooled(..., rows, out (N, Ho // 2, Wo // 2, F), winner, track)
        implicit_gemm, then a 2x2 max pooling with stride 2, in one pass
    implicit_kernel_grad_pooled(x, grad_pooled (N, Hp, Wp, F), winner, pool_w, ..., rows, sums)
        implicit_kernel_grad, its grad_out made from the pooling's gradient row by row

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

Training needs the kernel gradient too, which the reference takes from im2col's rows (kept
from the forward pass, or rebuilt): ``cols^T @ grad_out``. Here it reads the windows where
they lie, as the forward pass does. Along a kernel row at dilation 1 the taps (j, c) are
``KW*C`` neighbouring values of x, so a block of them against one vector of F is a plain
GEMM block (``dense_kernels.gemm_block``, adding into the sums): its rows one value apart in
x, its steps the output row's pixels, ``sw*C`` apart in x and F apart in grad_out. A kernel
row's taps go in whole blocks of ``ROWS``, the last reading on past them into zeros that
``conv.py`` pads x's width with, its extra sums dropped (``taps_padded``): one intrinsic,
where a block for each remainder took five more. Each output row of grad_out (a few KB) is
read once from memory and then from L1 for every kernel row. The article's first layer
(28 x 28 x 1 -> 32, 5x5) now trains with no im2col at all, and an RGB stem's kernel gradient
takes half the time (``conv.py``'s ``_implicit_kernel_grad`` has the figures).

Where a 2x2 max pooling with stride 2 follows (``graph.fusion``'s pooled convolution: the
article's first layer, face_net's), the pooled pair runs a row of windows at a time: the
forward pass computes the two rows of output that row reads into a scratch of a few KB and
pools them there, and the kernel gradient makes the same rows of
grad_out from the pooling's gradient and winners (the winner gets the window's gradient,
every other cell 0) and reads them from there. The convolution's output and its gradient
(4.7 MB each for the article's 64 images) never go to memory. Times: ``graph.fusion``.
"""

from __future__ import annotations

import numba
import numpy as np

from cnnlab.engine.dense_kernels import ROWS, gemm_block
from cnnlab.engine.simd import VECTOR_BYTES
from cnnlab.engine.windows_kernels import inner_columns, tap_pixel

_rows_block = gemm_block(ROWS, gathered=True)
_one_row = gemm_block(1, gathered=True)
_adding_block = gemm_block(ROWS, gathered=False, accumulate=True)   # the kernel gradient's


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


@numba.njit(inline="always")
def _output_row(flat_x, panels, n, y, height, width, channels, kh, kw, strides, dilation, top,
                left, lanes, columns, features, first, end, out_w, a_offsets, b_offsets,
                flat_bias, has_bias, relu, flat_out, row_at):
    """Output row ``y`` of image ``n``, its ``out_w`` pixels' ``features`` values written from
    ``flat_out[row_at]`` on: the pixels outside ``[first, end)`` one by one, those inside in
    blocks of ``ROWS``."""
    k = kh * kw * channels
    for xo in range(out_w):
        if first <= xo < end:
            continue
        count = _pixel_taps(n, y, xo, height, width, channels, kh, kw, strides, dilation, top,
                            left, lanes, a_offsets, b_offsets)
        at = row_at + xo * features
        for block in range(columns):
            column = min(block * lanes, features - lanes)
            _one_row(flat_x, 0, 0, a_offsets, panels, block * k * lanes, b_offsets, count,
                     flat_bias, column, has_bias, relu, flat_out, at + column, features)
    if first == end:
        return
    count = 0                             # the row's taps, from the first pixel's column 0
    for i in range(kh):
        iy = y * strides[0] + i * dilation[0] - top
        if iy < 0 or iy >= height:
            continue
        for j in range(kw):
            for c in range(channels):
                a_offsets[count] = ((n * height + iy) * width + j * dilation[1]) * channels + c
                b_offsets[count] = ((i * kw + j) * channels + c) * lanes
                count += 1
    for row_block in range(first, end, ROWS):
        xo = min(row_block, end - ROWS)
        at = row_at + xo * features
        for block in range(columns):
            column = min(block * lanes, features - lanes)
            _rows_block(flat_x, (xo * strides[1] - left) * channels, strides[1] * channels,
                        a_offsets, panels, block * k * lanes, b_offsets, count, flat_bias,
                        column, has_bias, relu, flat_out, at + column, features)


@numba.njit(inline="always")
def _rows_setup(x, panels, bias, has_bias, kh, kw, out, out_w, strides, dilation, left):
    """What :func:`_output_row` needs of a call, worked out once: the flat input, bias and
    output (``out``, where the rows go), the lanes of a vector, the column blocks, the taps'
    offset lists and the output columns that go in blocks."""
    features = out.shape[-1]
    lanes = VECTOR_BYTES // x.itemsize
    k = kh * kw * x.shape[3]
    columns = (features + lanes - 1) // lanes
    if features < lanes or panels.size != columns * k * lanes:
        raise ValueError("the implicit GEMM takes panels of (KH*KW*C, F), F >= one vector")
    first, end = inner_columns(out_w, x.shape[2], kw, strides[1], dilation[1], left, ROWS)
    flat_out = out.reshape(-1)
    flat_bias = bias.reshape(-1) if has_bias else flat_out     # read, never added, if no bias
    return (x.reshape(-1), flat_bias, flat_out, lanes, columns, np.empty(k, np.int64),
            np.empty(k, np.int64), first, end)


@numba.njit(cache=True, nogil=True)
def implicit_gemm(x, panels, kh, kw, bias, has_bias, relu, strides, dilation, top, left, out):
    """See the module docstring. ``x`` and ``out`` C-contiguous; Wo >= ROWS is not needed (a
    row too short for one block goes pixel by pixel), F >= one vector is."""
    batch, height, width, channels = x.shape
    _, out_h, out_w, features = out.shape
    flat_x, flat_bias, flat_out, lanes, columns, a_offsets, b_offsets, first, end = \
        _rows_setup(x, panels, bias, has_bias, kh, kw, out, out_w, strides, dilation, left)
    for n in range(batch):
        for y in range(out_h):
            _output_row(flat_x, panels, n, y, height, width, channels, kh, kw, strides,
                        dilation, top, left, lanes, columns, features, first, end, out_w,
                        a_offsets, b_offsets, flat_bias, has_bias, relu, flat_out,
                        (n * out_h + y) * out_w * features)
    return out


@numba.njit(inline="always")
def _larger(value, best, won, tap):
    """One tap of a max pooling window, as ``pool_kernels.max_pool`` takes it: the value wins
    if strictly greater; a NaN makes the maximum NaN without winning."""
    greater = value > best
    return (value if greater or value != value else best), (tap if greater else won)


@numba.njit(inline="always")
def _relu(value, zero):
    """``max(value, 0)`` as ``np.maximum`` gives it: NaN stays, -0 and -inf become +0."""
    return value if value > zero or value != value else zero


@numba.njit(inline="always")
def _pool_2x2(rows, px, best, won, track, relu):
    """Window ``px`` of a 2x2 pooling of ``rows (2, Wo, F)`` into ``best`` and ``won`` (F,):
    each channel's four taps held in registers and compared by selects, so the loop over F
    vectorises (written into memory tap by tap, it took 0.38 ms of the article's first layer
    at 64 images; a tap loop with branches, more). Other pools go to ``pool.py`` after the
    convolution: a tap loop for any pool here took 3 s more to compile (4.9 s against 1.8)."""
    top, bottom = rows[0], rows[1]
    column, zero = 2 * px, best.dtype.type(0)
    for f in range(best.shape[0]):
        value, tap = top[column, f], np.uint8(0)
        value, tap = _larger(top[column + 1, f], value, tap, np.uint8(1))
        value, tap = _larger(bottom[column, f], value, tap, np.uint8(2))
        value, tap = _larger(bottom[column + 1, f], value, tap, np.uint8(3))
        best[f] = _relu(value, zero) if relu else value
        if track:
            won[f] = tap


@numba.njit(cache=True, nogil=True)
def implicit_gemm_pooled(x, panels, kh, kw, bias, has_bias, relu, strides, dilation, top,
                         left, rows, out, winner, track):
    """:func:`implicit_gemm` followed by a 2x2 max pooling with stride 2 and no padding,
    without the convolution's output ever leaving cache: the two rows of output a row of
    windows reads go into ``rows (2, Wo, F)``, and ``out (N, Ho // 2, Wo // 2, F)`` gets each
    window's maximum (then ``max(., 0)`` if ``relu``), ``winner`` (when ``track``) its first
    tap ``i*2 + j`` that holds it, as ``pool_kernels.max_pool`` gives them: a NaN makes the
    output NaN without taking the winner. A last row or column of the convolution that no
    window reads (Ho or Wo odd) is never computed."""
    batch, height, width, channels = x.shape
    _, pooled_h, pooled_w, features = out.shape
    out_w = rows.shape[1]
    if rows.shape[0] != 2 or rows.shape[2] != features or pooled_w * 2 > out_w:
        raise ValueError("implicit_gemm_pooled takes rows (2, Wo, F)")
    flat_x, flat_bias, flat_rows, lanes, columns, a_offsets, b_offsets, first, end = \
        _rows_setup(x, panels, bias, has_bias, kh, kw, rows, out_w, strides, dilation, left)
    for n in range(batch):
        for py in range(pooled_h):
            for i in range(2):
                _output_row(flat_x, panels, n, py * 2 + i, height, width, channels, kh,
                            kw, strides, dilation, top, left, lanes, columns, features, first,
                            end, out_w, a_offsets, b_offsets, flat_bias, has_bias, False,
                            flat_rows, i * out_w * features)
            for px in range(pooled_w):
                _pool_2x2(rows, px, out[n, py, px], winner[n, py, px], track, relu)
    return out


def taps_padded(kw: int, channels: int) -> int:
    """The taps of one kernel row (``KW*C``) rounded up to whole blocks of ``ROWS``: the rows
    of the kernel gradient's sums each kernel row gets (the kernels read and sum the taps past
    ``KW*C`` too, from the zeros ``conv.py`` pads x's width with, and its caller drops them).
    For Python callers; the kernels compile :func:`_taps_padded`, the same."""
    return -(-kw * channels // ROWS) * ROWS


_taps_padded = numba.njit(inline="always")(taps_padded)


@numba.njit(inline="always")
def _kernel_grad_row(flat_x, n, y, height, width, channels, kh, kw, strides, dilation_h, top,
                     flat_g, g_at, features, out_w, flat_sums, row):
    """Every kernel row's sums (``sums``' rows ``i*run`` on, ``row`` values apart, ``run`` the
    padded taps of a kernel row) plus output row ``y`` of image ``n``'s share: its ``out_w``
    pixels' gradients from ``flat_g[g_at]`` on, ``features`` apart."""
    lanes = VECTOR_BYTES // flat_x.itemsize
    blocks = (features + lanes - 1) // lanes
    run = _taps_padded(kw, channels)                 # a kernel row's taps: neighbours in x
    for i in range(kh):
        iy = y * strides[0] + i * dilation_h - top
        if iy < 0 or iy >= height:
            continue
        x_at = (n * height + iy) * width * channels
        for first in range(0, run, ROWS):
            for block in range(blocks):
                column = min(block * lanes, features - lanes)
                _adding_block(flat_x, x_at + first, 1, strides[1] * channels, flat_g,
                              g_at + column, features, out_w, flat_sums, 0, False, False,
                              flat_sums, (i * run + first) * row + block * lanes, row)


@numba.njit(inline="always")
def _check_sums(x, kh, kw, features, out_w, strides, sums):
    """The kernel gradient's shapes, checked before its loops run (its blocks check no
    bounds): ``sums`` as its docstring lays them out, x wide enough for every padded tap."""
    lanes = VECTOR_BYTES // x.itemsize
    blocks = (features + lanes - 1) // lanes
    channels = x.shape[3]
    run = _taps_padded(kw, channels)
    if features < lanes or sums.shape[0] != kh * run or sums.shape[1] != blocks * lanes \
            or (out_w - 1) * strides[1] * channels + run > x.shape[2] * channels:
        raise ValueError("the kernel gradient takes sums of (KH * taps_padded, whole vectors "
                         "of F), F >= one vector, and x as wide as its windows' padded taps")


@numba.njit(cache=True, nogil=True)
def implicit_kernel_grad(x, grad_out, kh, kw, strides, dilation_h, top, sums):
    """See the module docstring: ``sums (KH * taps_padded, blocks * lanes)``, zeros on entry,
    gets kernel row ``i``'s tap ``t`` in row ``i * taps_padded + t``, and column block ``b``
    (output columns ``min(b*lanes, F - lanes)`` on) in its columns ``b*lanes`` on. ``x`` is
    as wide as the windows' padded taps read (no padding along the width: ``(Wo - 1)*sw*C +
    taps_padded <= W*C``), dilation 1 along it; ``x``, ``grad_out`` C-contiguous."""
    batch, height, width, channels = x.shape
    _, out_h, out_w, features = grad_out.shape
    _check_sums(x, kh, kw, features, out_w, strides, sums)
    flat_x, flat_g, flat_sums = x.reshape(-1), grad_out.reshape(-1), sums.reshape(-1)
    for n in range(batch):
        for y in range(out_h):
            _kernel_grad_row(flat_x, n, y, height, width, channels, kh, kw, strides,
                             dilation_h, top, flat_g, (n * out_h + y) * out_w * features,
                             features, out_w, flat_sums, sums.shape[1])
    return sums


@numba.njit(cache=True, nogil=True)
def implicit_kernel_grad_pooled(x, grad_pooled, winner, pool_w, kh, kw, strides, dilation_h,
                                top, rows, sums):
    """:func:`implicit_kernel_grad` of a convolution whose output a max pooling that tiles it
    took (``implicit_gemm_pooled``), from the pooling's gradient ``grad_pooled (N, Hp, Wp, F)``
    and ``winner``: each row of windows' share of the convolution's output gradient is made in
    ``rows (pool height, Wo, F)`` (the winning tap gets the window's gradient, every other
    cell 0) and taken from there, so that gradient is never written to memory. Rows of the
    convolution no window read have no gradient and are skipped."""
    batch, height, width, channels = x.shape
    _, pooled_h, pooled_w, features = grad_pooled.shape
    pool_h, out_w = rows.shape[0], rows.shape[1]
    _check_sums(x, kh, kw, features, out_w, strides, sums)
    if rows.shape[2] != features or pooled_w * pool_w > out_w:
        raise ValueError("implicit_kernel_grad_pooled takes rows (pool height, Wo, F)")
    flat_x, flat_rows, flat_sums = x.reshape(-1), rows.reshape(-1), sums.reshape(-1)
    for n in range(batch):
        for py in range(pooled_h):
            rows[:, pooled_w * pool_w:] = 0               # columns no window reads
            for px in range(pooled_w):
                grad, won = grad_pooled[n, py, px], winner[n, py, px]
                for i in range(pool_h):
                    for j in range(pool_w):
                        target, tap = rows[i, px * pool_w + j], i * pool_w + j
                        for f in range(features):     # a select for each cell: vectorises
                            target[f] = grad[f] if won[f] == tap else 0
            for i in range(pool_h):
                _kernel_grad_row(flat_x, n, py * pool_h + i, height, width, channels, kh, kw,
                                 strides, dilation_h, top, flat_rows, i * out_w * features,
                                 features, out_w, flat_sums, sums.shape[1])
    return sums
