"""Compiled stride-1 convolutions by Winograd's F(4x4, 3x3) and F(4x4, 5x5) in one pass over
blocks of tiles, beside the three-pass path of ``winograd_kernels`` (whose docstring has the
formulas) and the references, ``winograd.py`` and im2col. Every forward pass whose channels
and filters fill a vector, where ``conv.choose`` takes Winograd (``conv.ONE_PASS_MIN_CHANNELS``:
3x3 at inference and for input gradients, and in training where the cost model picks it; 5x5
wherever there are enough tiles): at inference, in training (copying V out for the kernel
gradient), and the input gradient's, itself such a convolution. And the kernel gradient's
adjoint transform, for every F(4x4) Winograd path.

    conv3x3 / conv5x5(x (N, H, W, C), top, left, panels, bias (F,), residual, has_residual,
                      relu, y (N, Ho, Wo, F), block, kept (alpha^2 * T * C,), keep)
        y = A^T [(B^T d B) * U] A + bias (+ residual) (then max(y, 0) if relu)
        per block of ``block`` tiles: V (alpha^2, block, C) (-> kept) -> M (alpha^2, block, F)
        -> y;  alpha = 6 (3x3) or 8 (5x5)
    panels = pack_kernel(kernel (r, r, C, F), tiling)   U, packed (NumPy)
    adjoint3x3 / adjoint5x5(dy (N, Ho, Wo, F), th, tw, dM (alpha^2, T, F), block)
        dM = A dy A^T, the backward of y = A^T M A (``_adjoint``); then, in NumPy,
        grad_U[k] = V[k]^T @ dM[k] and grad_kernel = G^T grad_U G

Why a block at a time. The three-pass path writes V as 36 rows of ``T * C`` values: each tile's
36 transformed vectors go to 36 places megabytes apart (through a scratch and a copy per chunk
of tiles; stored straight into the rows, a piece took 185 us against its 87). A tile's
transform is ~150 vector operations, yet one 16-channel tile took 180-250 ns (470-650 cycles)
there, 220-320 ns where V was 36 KB; with its 36 vectors stored into a compact scratch
instead, 60-75 ns (ResNet-20's stage 1, 1 thread, one-off script). Here V is
``(36, block, C)`` for a block of 6 tiles: its rows are ``6 * C`` values apart, and V and M
stay in L1 or L2 between the three steps. Where V is kept, each block's 36 rows are copied out
in runs of ``6 * C`` values.

Measured (1 thread, float32, best of 20, one-off script; three passes -> one): 128 images of
32 x 32 x 16 -> 16 5.27 -> 3.37 ms, 16 x 16 x 32 -> 32 2.97 -> 1.91 ms, 8 x 8 x 64 -> 64 2.46
-> 1.75 ms. Blocks of 6 tiles were the fastest of 6, 12, 24, 48 and 96 on these three, and of
6, 12 and 24 on the article's 5x5 conv2 (0.90 against 1.03-1.07 ms); on its input gradient
(8 x 8 x 64 -> 12 x 12 x 32) 24 ran 2.24 against 6's 2.55 ms. A later run had blocks of 18
7% faster on both (64 images: forward 1.40 against 1.52 ms, input gradient 2.48 against 2.59),
but the article's whole training step only 0.8% (16.84 against 16.97 ms, medians of 8
interleaved rounds), so ``block_tiles`` keeps one rule for both sizes.
ResNet-20's training step at 1 thread: its Winograd forward passes, input gradients'
included, 163.6 -> 136.6 ms (107 -> 72 ms for the forward passes that keep V), the step 350.6
-> 320.8 ms.

Each step is register-level code (``simd.Vectors``), one vector of channels at a time, generated
from the tiling's constant matrices (``_product``: zero terms skipped, ones as adds):

- ``_input_tile``: the tile's alpha x alpha patch of one channel vector, read from a ring of
  alpha zero-padded image rows (``winograd_kernels._fill_ring``, shared with the three-pass
  transform), ``B^T d B`` in registers, alpha^2 vectors stored into the block's V.
- the products: for each point, ``V[k] (block, C) @ U[k] (C, F)`` by
  ``dense_kernels.gemm_block`` on ``U[k]``'s packed panels; the block's rows go in groups of
  ``ROWS`` (a last, partial group computes rows past the block's last tile, from V's stale or
  zero rows, and nothing reads them).
- ``_output_tile``: a tile's alpha^2 vectors of M, ``A^T M A`` in registers, the bias, the
  residual and the ReLU (``merge_kernels.add_relu``'s: NaN kept, -0 made +0), then its 4 x 4
  outputs stored, those past the output's edge skipped.
- ``_adjoint_tile``, its backward: a tile's 4 x 4 vectors of dy (zeros past the edge), ``A dy
  A^T`` in registers, alpha^2 vectors stored into a block's scratch, copied out to dM in runs.
  It replaced the three-pass module's hand-written adjoint: ResNet-20's stage-3 piece (28 x 8
  x 8 x 64) 0.054 -> 0.043 ms, 128 x 8 x 8 x 64 0.257 -> 0.209 ms (1 thread, best of 20), and
  it compiles in a fraction of that kernel's 2.1-2.3 s. For F(4x4, 5x5) the einsum reference
  took 17.4 ms on the article's conv2 at 128 images, this 0.41 ms.

F(4x4, 5x5)'s matrices come from ``winograd.cook_toom`` (points 0, +-1, +-2, +-1/2); in float32
its error is ~5e-6 of the largest output, against ~2.4e-6 for F(4x4, 3x3). Channels and filters
must each fill at least one vector (16 float32, 8 float64): the last vector of a row is moved
back to end on its edge, recomputing some values the same way. ``conv.py`` keeps the other
cases on the three-pass path.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core.errors import TypingError
from numba.extending import intrinsic

from cnnlab.engine.dense_kernels import ROWS, gemm_block
from cnnlab.engine.simd import VECTOR_BYTES, Vectors
from cnnlab.engine.winograd import F4, F4_5, kernel_transform
from cnnlab.engine.winograd_kernels import _copy, _fill_ring

_block = gemm_block(ROWS, gathered=False)

#: the tilings by kernel size, F(4x4, 3x3) and F(4x4, 5x5): the intrinsics are generated from
#: their B^T and A^T, whose entries are exact in binary floating point
TILINGS = {3: F4, 5: F4_5}

#: the bytes of one block's V and M (alpha^2 * block * (C + F) values); see ``block_tiles``
BLOCK_BYTES = 32 * 2**10


def block_tiles(channels: int, filters: int, itemsize: int, taps: int = 3) -> int:
    """Tiles a block holds: its V and M within ``BLOCK_BYTES``, a whole number of ``ROWS``."""
    per_tile = TILINGS[taps].alpha ** 2 * (channels + filters) * itemsize
    return max(1, BLOCK_BYTES // per_tile // ROWS) * ROWS


#: the bytes of the adjoint's scratch (alpha^2 * block * F values); see ``adjoint_block``
ADJOINT_BYTES = 48 * 2**10


def adjoint_block(filters: int, itemsize: int, taps: int = 3) -> int:
    """Tiles the adjoint (:func:`_adjoint`) does at a time: its scratch within ``ADJOINT_BYTES``,
    an odd number, so that the scratch's rows (``block * F`` values apart, F a multiple of a
    cache line's values) start in different cache sets. Measured, 1 thread, float32, best of
    20, ms, blocks 2 | 3 | 6 | 7: 128 x 8 x 8 x 64, 5x5, 0.521 | 0.407 | 0.632 | 0.415; 3x3,
    0.200 | 0.209 | 0.218 | 0.216; 7 x 32 x 32 x 16, 3x3, 0.054 | 0.049 | 0.041 | 0.039."""
    per_tile = TILINGS[taps].alpha ** 2 * filters * itemsize
    return max(1, ADJOINT_BYTES // per_tile) | 1


def _product(builder, vec, matrix, values):
    """``matrix @ values`` on vectors, ``matrix`` constant: each row's terms added in column
    order, zero coefficients skipped, ones and minus ones as adds and subtracts."""
    out = []
    for row in matrix:
        total = None
        for coefficient, value in zip(row, values):
            if coefficient == 0:
                continue
            if abs(coefficient) != 1:
                value = builder.fmul(vec.splat(ir.Constant(vec.scalar, abs(float(coefficient)))),
                                     value)
            if total is None:
                total = value if coefficient > 0 else builder.fsub(vec.zero, value)
            else:
                total = (builder.fadd if coefficient > 0 else builder.fsub)(total, value)
        out.append(total if total is not None else vec.zero)
    return out


def _tiling(taps):
    """The F(4x4, taps x taps) a literal ``taps`` names (``winograd.F4``, ``winograd.F4_5``)."""
    if not isinstance(taps, types.IntegerLiteral) or taps.literal_value not in TILINGS:
        raise TypingError(f"taps must be a literal in {sorted(TILINGS)}; received {taps}")
    return TILINGS[taps.literal_value]


@intrinsic
def _input_tile(typingctx, taps, ring, rows, step, v, v_at, v_row):
    """``v[v_at + (a*alpha + b)*v_row + e] = (B^T d B)[a, b]`` for the lanes ``e``, where
    ``d[i, j] = ring[rows[i] + j*step + e]`` (``rows``: alpha int64 offsets)."""
    tiling = _tiling(taps)
    alpha = tiling.alpha

    def codegen(context, builder, signature, args):
        vec = Vectors(context, builder, signature.args[1].dtype)
        ring_p, rows_p, v_p = (vec.pointer(args[i], signature.args[i]) for i in (1, 2, 4))
        step, v_at, v_row = (vec.index(args[i], signature.args[i]) for i in (3, 5, 6))
        patch = []
        for i in range(alpha):
            start = builder.load(builder.gep(rows_p, [vec.integer(i)]))
            patch.append([vec.load(ring_p, builder.add(start, builder.mul(vec.integer(j), step)))
                          for j in range(alpha)])
        # along each patch row: (d B)[i, b] = (B^T d[i, :])[b]; then down each column b
        rows_b = [_product(builder, vec, tiling.bt, row) for row in patch]
        for b in range(alpha):
            column = _product(builder, vec, tiling.bt, [rows_b[i][b] for i in range(alpha)])
            for a in range(alpha):
                vec.store(column[a], v_p,
                          builder.add(v_at, builder.mul(vec.integer(a * alpha + b), v_row)))
        return context.get_dummy_value()
    return types.void(taps, ring, rows, step, v, v_at, v_row), codegen


@intrinsic
def _output_tile(typingctx, taps, m, m_at, m_row, bias, bias_at, residual, has_residual, relu,
                 y, y_at, y_row, y_column, rows, columns):
    """``y[y_at + a*y_row + b*y_column + e] = (A^T M A)[a, b] + bias[bias_at + e]`` (+ the
    residual at the same place if ``has_residual``; then the ReLU if ``relu``) for ``a <
    rows``, ``b < columns``, where ``M[i*alpha + j] = m[m_at + (i*alpha + j)*m_row + e]``.
    ``residual`` is read at those places even where ``has_residual`` is false (pass ``y``)."""
    tiling = _tiling(taps)
    alpha, tile = tiling.alpha, tiling.m

    def codegen(context, builder, signature, args):
        vec = Vectors(context, builder, signature.args[1].dtype)
        arg = dict(zip(("taps", "m", "m_at", "m_row", "bias", "bias_at", "residual",
                        "has_residual", "relu", "y", "y_at", "y_row", "y_column", "rows",
                        "columns"), zip(args, signature.args)))
        m_p, bias_p, residual_p, y_p = (vec.pointer(*arg[name])
                                        for name in ("m", "bias", "residual", "y"))
        m_at, m_row, bias_at, y_at, y_row, y_column, rows, columns = (
            vec.index(*arg[name]) for name in ("m_at", "m_row", "bias_at", "y_at", "y_row",
                                               "y_column", "rows", "columns"))
        has_residual, relu = arg["has_residual"][0], arg["relu"][0]
        points = [vec.load(m_p, builder.add(m_at, builder.mul(vec.integer(k), m_row)))
                  for k in range(alpha * alpha)]
        # down each column j: (A^T M)[a, j]; then along each row a: y[a, b]
        columns_j = [_product(builder, vec, tiling.at, [points[i * alpha + j]
                                                        for i in range(alpha)])
                     for j in range(alpha)]
        shift = vec.load(bias_p, bias_at)
        for a in range(tile):
            row = _product(builder, vec, tiling.at, [columns_j[j][a] for j in range(alpha)])
            for b in range(tile):
                at = builder.add(y_at, builder.add(builder.mul(vec.integer(a), y_row),
                                                   builder.mul(vec.integer(b), y_column)))
                inside = builder.and_(builder.icmp_signed("<", vec.integer(a), rows),
                                      builder.icmp_signed("<", vec.integer(b), columns))
                with builder.if_then(inside):
                    total = builder.fadd(row[b], shift)
                    total = builder.select(has_residual,
                                           builder.fadd(total, vec.load(residual_p, at)), total)
                    vec.store(vec.relu(total, on=relu), y_p, at)
        return context.get_dummy_value()
    return types.void(taps, m, m_at, m_row, bias, bias_at, residual, has_residual, relu, y,
                      y_at, y_row, y_column, rows, columns), codegen


@intrinsic
def _adjoint_tile(typingctx, taps, dy, dy_at, dy_row, dy_column, rows, columns, dm, dm_at,
                  dm_row):
    """``dm[dm_at + (i*alpha + j)*dm_row + e] = (A dY A^T)[i, j]`` for the lanes ``e``, where
    ``dY[a, b] = dy[dy_at + a*dy_row + b*dy_column + e]`` for ``a < rows``, ``b < columns``
    and 0 past them (the cropped overhang had no gradient): the adjoint of
    :func:`_output_tile`'s ``A^T M A``. A value past the edge is loaded from the tile's first
    place, which is always inside, and replaced by 0, so nothing outside ``dy`` is read."""
    tiling = _tiling(taps)
    alpha, tile = tiling.alpha, tiling.m
    a_matrix = tiling.at.T                               # A (alpha, m)

    def codegen(context, builder, signature, args):
        vec = Vectors(context, builder, signature.args[1].dtype)
        dy_p, dm_p = vec.pointer(args[1], signature.args[1]), vec.pointer(args[7],
                                                                          signature.args[7])
        dy_at, dy_row, dy_column, rows, columns, dm_at, dm_row = (
            vec.index(args[i], signature.args[i]) for i in (2, 3, 4, 5, 6, 8, 9))
        grads = []
        for a in range(tile):
            row = []
            for b in range(tile):
                inside = builder.and_(builder.icmp_signed("<", vec.integer(a), rows),
                                      builder.icmp_signed("<", vec.integer(b), columns))
                at = builder.add(dy_at, builder.add(builder.mul(vec.integer(a), dy_row),
                                                    builder.mul(vec.integer(b), dy_column)))
                value = vec.load(dy_p, builder.select(inside, at, dy_at))
                row.append(builder.select(inside, value, vec.zero))
            grads.append(row)
        # along each row a: (dY A^T)[a, j] = (A dY[a, :])[j]; then down each column j
        rows_j = [_product(builder, vec, a_matrix, row) for row in grads]
        for j in range(alpha):
            column = _product(builder, vec, a_matrix, [rows_j[a][j] for a in range(tile)])
            for i in range(alpha):
                vec.store(column[i], dm_p,
                          builder.add(dm_at, builder.mul(vec.integer(i * alpha + j), dm_row)))
        return context.get_dummy_value()
    return types.void(taps, dy, dy_at, dy_row, dy_column, rows, columns, dm, dm_at,
                      dm_row), codegen


def pack_kernel(kernel: np.ndarray, tiling) -> np.ndarray:
    """``U = G kernel G^T`` (``winograd.kernel_transform``) of ``kernel (r, r, C, F)``, packed
    as ``gemm_block`` reads it: (alpha^2, panels), each point's matrix as ``dense_kernels.pack``
    packs one (its column blocks, each a contiguous (C, lanes) panel, the last moved back to end
    on F's edge). The transform acts on each value's (i, j) alone, so the kernel's columns are
    laid out as the panels first, (r, r, blocks * C, lanes), and one GEMM then writes the packed
    U: a copy of r^2 C F values. (Packing U after the transform, a copy of alpha^2 C F values
    from strided slices, took 126 us a call on ResNet-20's layers, 2.8 ms of a batch-1
    training step.)"""
    taps, _, channels, filters = kernel.shape
    lanes = VECTOR_BYTES // kernel.itemsize
    if filters % lanes == 0:
        blocks = kernel.reshape(taps, taps, channels, filters // lanes, lanes) \
            .transpose(0, 1, 3, 2, 4)
    else:
        starts = [min(column, filters - lanes) for column in range(0, filters, lanes)]
        blocks = np.stack([kernel[..., start:start + lanes] for start in starts], axis=2)
    laid_out = np.ascontiguousarray(blocks).reshape(taps, taps, -1, lanes)
    return kernel_transform(laid_out, tiling).reshape(tiling.alpha ** 2, -1)


@numba.njit(cache=True, nogil=True)
def conv3x3(x, top, left, panels, bias, residual, has_residual, relu, y, block, kept, keep):
    """F(4x4, 3x3) (``winograd.F4``): see :func:`_convolve`."""
    return _convolve(x, top, left, panels, bias, residual, has_residual, relu, y, block, kept,
                     keep, 3)


@numba.njit(cache=True, nogil=True)
def conv5x5(x, top, left, panels, bias, residual, has_residual, relu, y, block, kept, keep):
    """F(4x4, 5x5) (``winograd.F4_5``): see :func:`_convolve`."""
    return _convolve(x, top, left, panels, bias, residual, has_residual, relu, y, block, kept,
                     keep, 5)


@numba.njit(inline="always")
def _convolve(x, top, left, panels, bias, residual, has_residual, relu, y, block, kept, keep,
              taps):
    """``y = A^T [(B^T d B) * U] A + bias`` (+ ``residual`` if ``has_residual``; then
    ``max(y, 0)`` if ``relu``), ``d`` each tile's patch of ``x`` padded by ``top`` and ``left``
    (and by zeros past its far edges), ``U`` packed by :func:`pack_kernel`; ``block`` tiles a
    block (a multiple of ``ROWS``: :func:`block_tiles`). ``residual``: an array of ``y``'s
    shape, or ``y`` itself where there is none. With ``keep``, V is also copied into ``kept``
    (alpha^2, T, C) flattened, block by block, for the kernel gradient
    (``winograd.transformed_kernel_grad``); ``kept`` is any 1-D array where ``keep`` is false
    (1-D either way: one compiled signature). All
    arrays C-contiguous, one float dtype; C and F at least one vector. ``taps``: a literal, the
    kernel's size."""
    batch, height, width, channels = x.shape
    _, out_h, out_w, filters = y.shape
    lanes = VECTOR_BYTES // x.itemsize
    alpha = taps + 3                                  # a 4 x 4 tile's patch
    points = alpha * alpha
    tiles_h, tiles_w = (out_h + 3) // 4, (out_w + 3) // 4
    if channels < lanes or filters < lanes or block % ROWS or residual.shape != y.shape \
            or panels.shape[0] != points or bias.shape[0] != filters \
            or (keep and kept.size != points * batch * tiles_h * tiles_w * channels):
        raise ValueError("the one-pass Winograd takes C and F of at least one vector, a block "
                         "of whole ROWS, a residual shaped as y, U's packed panels and V "
                         "(alpha^2, T, C)")
    row = (tiles_w * 4 + taps - 1) * channels         # one zero-padded image row
    ring = np.zeros(alpha * row, x.dtype)             # padded row r in slot r % alpha
    image, out, skip = x.reshape(-1), y.reshape(-1), residual.reshape(-1)
    inside = min(width, tiles_w * 4 + taps - 1 - left) * channels
    v = np.zeros(points * block * channels, x.dtype)  # the block's V (alpha^2, block, C)
    m = np.zeros(points * block * filters, x.dtype)   # and M (alpha^2, block, F)
    slots = np.empty(alpha, np.int64)                 # where each patch row starts
    held = np.int64(0)          # tiles t - held .. t - 1 are in the block (not a literal 0:
                                # typed first as one, it compiled _finish a second time)
    for n in range(batch):
        for ty in range(tiles_h):
            _fill_ring(ring, image, n, ty, alpha, row, top, left, height, width, channels, inside)
            for tx in range(tiles_w):
                for c0 in range(0, channels, lanes):
                    c = min(c0, channels - lanes)
                    for i in range(alpha):
                        slots[i] = (ty * 4 + i) % alpha * row + tx * 4 * channels + c
                    _input_tile(taps, ring, slots, channels, v, held * channels + c,
                                block * channels)
                held += 1
                if held == block:
                    _finish(v, m, panels, (n * tiles_h + ty) * tiles_w + tx + 1 - held, held,
                            block, channels, bias, skip, has_residual, relu, out, out_h, out_w,
                            filters, tiles_h, tiles_w, kept, keep, taps)
                    held = np.int64(0)
    if held:
        _finish(v, m, panels, batch * tiles_h * tiles_w - held, held, block, channels, bias,
                skip, has_residual, relu, out, out_h, out_w, filters, tiles_h, tiles_w, kept,
                keep, taps)
    return y


@numba.njit(nogil=True)
def _finish(v, m, panels, first, held, block, channels, bias, skip, has_residual, relu, out,
            out_h, out_w, filters, tiles_h, tiles_w, kept, keep, taps):
    """The block of tiles ``first .. first + held - 1`` (``t = (n*th + ty)*tw + tx``): its V
    copied out if ``keep`` (one run per point), its products ``M[k] = V[k] @ U[k]`` and its
    outputs. A call, not inlined: :func:`_convolve` calls it twice, and inlined, its code was
    compiled twice."""
    lanes = VECTOR_BYTES // v.itemsize
    column_blocks = (filters + lanes - 1) // lanes
    points = panels.shape[0]
    if keep:
        count = kept.size // (points * channels)                 # T
        for k in range(points):
            _copy(kept, (k * count + first) * channels, v, k * block * channels,
                  held * channels)
    for k in range(points):
        for row in range(0, held, ROWS):
            for column_block in range(column_blocks):
                f0 = min(column_block * lanes, filters - lanes)
                _block(v, (k * block + row) * channels, channels, 1, panels[k],
                       column_block * channels * lanes, lanes, channels, bias, 0, False, False,
                       m, (k * block + row) * filters + f0, filters)
    for q in range(held):
        at, rows, columns = _tile_place(first + q, tiles_h, tiles_w, out_h, out_w, filters)
        for f in range(0, filters, lanes):
            f0 = min(f, filters - lanes)
            _output_tile(taps, m, q * filters + f0, block * filters, bias, f0, skip,
                         has_residual, relu, out, at + f0, out_w * filters, filters, rows,
                         columns)


@numba.njit(inline="always")
def _tile_place(t, tiles_h, tiles_w, out_h, out_w, filters):
    """Tile ``t = (n*th + ty)*tw + tx``'s first output in ``y (N, Ho, Wo, F)`` flat, and how
    many of its 4 rows and 4 columns lie inside the output."""
    tx, rest = t % tiles_w, t // tiles_w
    ty, n = rest % tiles_h, rest // tiles_h
    return (((n * out_h + ty * 4) * out_w + tx * 4) * filters, min(4, out_h - ty * 4),
            min(4, out_w - tx * 4))


@numba.njit(cache=True, nogil=True)
def adjoint3x3(dy, tiles_h, tiles_w, dm, block):
    """F(4x4, 3x3)'s ``grad_M = A grad_y A^T``: see :func:`_adjoint`."""
    _adjoint(dy, tiles_h, tiles_w, dm, block, 3)


@numba.njit(cache=True, nogil=True)
def adjoint5x5(dy, tiles_h, tiles_w, dm, block):
    """F(4x4, 5x5)'s ``grad_M = A grad_y A^T``: see :func:`_adjoint`."""
    _adjoint(dy, tiles_h, tiles_w, dm, block, 5)


@numba.njit(inline="always")
def _adjoint(dy, tiles_h, tiles_w, dm, block, taps):
    """``dm[i*alpha + j, t, f] = sum_{a, b} A^T[a, i] dy[n, ty*4 + a, tx*4 + b, f] A^T[b, j]``
    (``dy`` zero past its edge): (N, Ho, Wo, F) -> (alpha^2, T, F), the kernel gradient's
    ``grad_M`` (``winograd.transformed_kernel_grad``). ``block`` tiles at a time into a
    compact scratch (``_adjoint_tile``), then its alpha^2 rows copied out in runs of ``block *
    F`` values: stored straight into dm's rows, ``T * F`` apart, each tile's alpha^2 vectors
    would go to as many places far apart (``winograd_fused_kernels``' docstring). C-contiguous,
    F at least one vector."""
    batch, out_h, out_w, filters = dy.shape
    lanes = VECTOR_BYTES // dy.itemsize
    alpha = taps + 3
    points = alpha * alpha
    count = batch * tiles_h * tiles_w                              # T
    if filters < lanes or dm.shape != (points, count, filters) or block < 1:
        raise ValueError("the adjoint takes F of at least one vector and grad_M (alpha^2, T, F)")
    grads, out = dy.reshape(-1), dm.reshape(-1)
    scratch = np.empty(points * block * filters, dy.dtype)         # (alpha^2, block, F)
    for first in range(0, count, block):
        held = min(block, count - first)
        for q in range(held):
            at, rows, columns = _tile_place(first + q, tiles_h, tiles_w, out_h, out_w, filters)
            for f in range(0, filters, lanes):
                f0 = min(f, filters - lanes)
                _adjoint_tile(taps, grads, at + f0, out_w * filters, filters, rows, columns,
                              scratch, q * filters + f0, block * filters)
        for k in range(points):
            _copy(out, (k * count + first) * filters, scratch, k * block * filters,
                  held * filters)
