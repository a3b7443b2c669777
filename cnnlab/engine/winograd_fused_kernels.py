"""A compiled 3x3 stride-1 convolution by Winograd's F(4x4, 3x3) in one pass over blocks of
tiles, beside the three-pass path of ``winograd_kernels`` (whose docstring has the formulas)
and its NumPy reference, ``winograd.py``. It runs every forward pass whose channels and filters
fill a vector: at inference, in training (copying V out for the kernel gradient), and the
input gradient's, itself such a convolution.

    conv3x3(x (N, H, W, C), top, left, panels, bias (F,), residual, has_residual, relu,
            y (N, Ho, Wo, F), block, kept (36, T, C), keep)
        y = A^T [(B^T d B) * U] A + bias (+ residual) (then max(y, 0) if relu)
        per block of ``block`` tiles: V (36, block, C) (-> kept) -> M (36, block, F) -> y
    panels = pack_kernel(U (36, C, F))               (NumPy)

Why a block at a time. The three-pass path writes V as 36 rows of ``T * C`` values: each tile's
36 transformed vectors go to 36 places megabytes apart, and its scratch-and-copy design costs
as much again. A tile's transform is ~150 vector operations, yet one 16-channel tile took
180-250 ns (470-650 cycles) there, even where V fitted L1; with its 36 vectors stored into a
compact scratch instead, 60-75 ns (ResNet-20's stage 1, 1 thread, one-off script). Here V is
``(36, block, C)`` for a block of a few dozen tiles: its rows are ``block * C`` values apart,
and V and M stay in L1 or L2 between the three steps. Where V is kept, each block's 36 rows
are copied out in runs of ``block * C`` values.

Measured (1 thread, float32, best of 20, one-off script; three passes -> one): 128 images of
32 x 32 x 16 -> 16 5.27 -> 3.37 ms, 16 x 16 x 32 -> 32 2.97 -> 1.91 ms, 8 x 8 x 64 -> 64 2.46
-> 1.75 ms. Blocks of 6 tiles were the fastest or within 5% (12, 24, 48 and 96 tried). ResNet-20's
training step at 1 thread: its Winograd forward passes, input gradients' included, 163.6 ->
136.6 ms (107 -> 72 ms for the forward passes that keep V), the step 350.6 -> 320.8 ms.

Each step is register-level code (``simd.Vectors``), one vector of channels at a time:

- ``_input_tile``: the tile's 6 x 6 patch of one channel vector, read from a ring of six
  zero-padded image rows (as ``winograd_kernels.input_tiles`` fills it), ``B^T d B`` in
  registers, 36 vectors stored into the block's V.
- the products: for each of the 36 points, ``V[k] (block, C) @ U[k] (C, F)`` by
  ``dense_kernels.gemm_block`` on ``U[k]``'s packed panels; the block's rows go in groups of
  ``ROWS`` (a last, partial group computes rows past the block's last tile, from V's stale or
  zero rows, and nothing reads them).
- ``_output_tile``: a tile's 36 vectors of M, ``A^T M A`` in registers, the bias, the residual
  and the ReLU (``merge_kernels.add_relu``'s: NaN kept, -0 made +0), then its 4 x 4 outputs
  stored, those past the output's edge skipped.

Every sum runs in the order ``winograd_kernels``' transforms run it, so the two paths' values
agree to the products' rounding (OpenBLAS's order there, K's order here). Channels and filters
must each fill at least one vector (16 float32, 8 float64): the last vector of a row is moved
back to end on its edge, recomputing some values the same way. ``conv.py`` keeps the other
cases on the three-pass path.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from cnnlab.engine.dense_kernels import ROWS, gemm_block
from cnnlab.engine.simd import VECTOR_BYTES, Vectors

_block = gemm_block(ROWS, gathered=False)

#: the bytes of one block's V and M (36 * block * (C + F) values); see ``block_tiles``
BLOCK_BYTES = 32 * 2**10


def block_tiles(channels: int, filters: int, itemsize: int) -> int:
    """Tiles a block holds: its V and M within ``BLOCK_BYTES``, a whole number of ``ROWS``."""
    per_tile = 36 * (channels + filters) * itemsize
    return max(1, BLOCK_BYTES // per_tile // ROWS) * ROWS


def _bt(builder, p, two, four, five):
    """``B^T p`` on six vectors, as ``winograd_kernels._bt`` computes it."""
    p0, p1, p2, p3, p4, p5 = p
    add, sub, mul = builder.fadd, builder.fsub, builder.fmul
    return (add(sub(mul(four, p0), mul(five, p2)), p4),
            sub(add(p3, p4), mul(four, add(p1, p2))),
            add(sub(mul(four, sub(p1, p2)), p3), p4),
            add(sub(mul(two, sub(p3, p1)), p2), p4),
            add(sub(mul(two, sub(p1, p3)), p2), p4),
            add(sub(mul(four, p1), mul(five, p3)), p5))


def _at(builder, p, two, four, eight):
    """``A^T p`` on six vectors, as ``winograd_kernels._at`` computes it."""
    p0, p1, p2, p3, p4, p5 = p
    add, sub, mul = builder.fadd, builder.fsub, builder.fmul
    s12, d12, s34, d34 = add(p1, p2), sub(p1, p2), add(p3, p4), sub(p3, p4)
    return (add(add(p0, s12), s34), add(d12, mul(two, d34)), add(s12, mul(four, s34)),
            add(add(d12, mul(eight, d34)), p5))


def _constants(v, *values):
    return [v.splat(ir.Constant(v.scalar, float(value))) for value in values]


@intrinsic
def _input_tile(typingctx, ring, row0, row1, row2, row3, row4, row5, step, v, v_at, v_row):
    """``v[v_at + (a*6 + b)*v_row + e] = (B^T d B)[a, b]`` for the lanes ``e``, where
    ``d[i, j] = ring[row_i + j*step + e]``."""
    def codegen(context, builder, signature, args):
        vec = Vectors(context, builder, signature.args[0].dtype)
        ring_p, v_p = vec.pointer(args[0], signature.args[0]), vec.pointer(args[8], signature.args[8])
        rows = [vec.index(a, t) for a, t in zip(args[1:7], signature.args[1:7])]
        step, v_at, v_row = (vec.index(args[i], signature.args[i]) for i in (7, 9, 10))
        two, four, five = _constants(vec, 2, 4, 5)
        # along each patch row: (d B)[i, b] = (B^T d[i, :])[b]
        h = [_bt(builder, [vec.load(ring_p, builder.add(r, builder.mul(vec.integer(j), step)))
                           for j in range(6)], two, four, five) for r in rows]
        for b in range(6):            # down each column b: V[a, b] = (B^T (d B)[:, b])[a]
            column = _bt(builder, [h[i][b] for i in range(6)], two, four, five)
            for a in range(6):
                vec.store(column[a], v_p,
                          builder.add(v_at, builder.mul(vec.integer(a * 6 + b), v_row)))
        return context.get_dummy_value()
    return types.void(ring, row0, row1, row2, row3, row4, row5, step, v, v_at, v_row), codegen


@intrinsic
def _output_tile(typingctx, m, m_at, m_row, bias, bias_at, residual, has_residual, relu, y,
                 y_at, y_row, y_column, rows, columns):
    """``y[y_at + a*y_row + b*y_column + e] = (A^T M A)[a, b] + bias[bias_at + e]`` (+ the
    residual at the same place if ``has_residual``; then the ReLU if ``relu``) for ``a <
    rows``, ``b < columns``, where ``M[i*6 + j] = m[m_at + (i*6 + j)*m_row + e]``. ``residual``
    is read at those places even where ``has_residual`` is false (pass ``y``)."""
    def codegen(context, builder, signature, args):
        vec = Vectors(context, builder, signature.args[0].dtype)
        arg = dict(zip(("m", "m_at", "m_row", "bias", "bias_at", "residual", "has_residual",
                        "relu", "y", "y_at", "y_row", "y_column", "rows", "columns"),
                       zip(args, signature.args)))
        m_p, bias_p, residual_p, y_p = (vec.pointer(*arg[name])
                                        for name in ("m", "bias", "residual", "y"))
        m_at, m_row, bias_at, y_at, y_row, y_column, rows, columns = (
            vec.index(*arg[name]) for name in ("m_at", "m_row", "bias_at", "y_at", "y_row",
                                               "y_column", "rows", "columns"))
        has_residual, relu = arg["has_residual"][0], arg["relu"][0]
        two, four, eight = _constants(vec, 2, 4, 8)
        points = [vec.load(m_p, builder.add(m_at, builder.mul(vec.integer(k), m_row)))
                  for k in range(36)]
        # down each column j: (A^T M)[a, j]; then along each row a: y[a, b]
        g = [_at(builder, [points[i * 6 + j] for i in range(6)], two, four, eight)
             for j in range(6)]
        shift = vec.load(bias_p, bias_at)
        for a in range(4):
            row = _at(builder, [g[j][a] for j in range(6)], two, four, eight)
            for b in range(4):
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
    return types.void(m, m_at, m_row, bias, bias_at, residual, has_residual, relu, y, y_at,
                      y_row, y_column, rows, columns), codegen


def pack_kernel(u: np.ndarray) -> np.ndarray:
    """``U (36, C, F)``'s 36 matrices packed as ``gemm_block`` reads them (each as
    ``dense_kernels.pack`` packs one: its column blocks, each a contiguous (C, lanes) panel,
    the last moved back to end on F's edge), one row each: (36, panels). In NumPy: a few
    copies, where a compiled loop would cost seconds to compile on a first run."""
    filters = u.shape[2]
    lanes = VECTOR_BYTES // u.itemsize
    starts = [min(column, filters - lanes) for column in range(0, filters, lanes)]
    panels = np.stack([u[:, :, start:start + lanes] for start in starts], axis=1)
    return panels.reshape(36, -1)                  # (36, column blocks, C, lanes), flattened


@numba.njit(cache=True, nogil=True)
def conv3x3(x, top, left, panels, bias, residual, has_residual, relu, y, block, kept, keep):
    """``y = A^T [(B^T d B) * U] A + bias`` (+ ``residual`` if ``has_residual``; then
    ``max(y, 0)`` if ``relu``), ``d`` each tile's patch of ``x`` padded by ``top`` and ``left``
    (and by zeros past its far edges), ``U`` packed by :func:`pack_kernel`; ``block`` tiles a
    block (a multiple of ``ROWS``: :func:`block_tiles`). ``residual``: an array of ``y``'s
    shape, or ``y`` itself where there is none. With ``keep``, V is also copied into ``kept``
    (36, T, C), block by block, for the kernel gradient (``winograd.transformed_kernel_grad``);
    ``kept`` is any array where ``keep`` is false. All arrays C-contiguous, one float dtype;
    C and F at least one vector."""
    batch, height, width, channels = x.shape
    _, out_h, out_w, filters = y.shape
    lanes = VECTOR_BYTES // x.itemsize
    tiles_h, tiles_w = (out_h + 3) // 4, (out_w + 3) // 4
    if channels < lanes or filters < lanes or block % ROWS or residual.shape != y.shape \
            or panels.shape[0] != 36 or bias.shape[0] != filters \
            or (keep and kept.size != 36 * batch * tiles_h * tiles_w * channels):
        raise ValueError("conv3x3 takes C and F of at least one vector, a block of whole ROWS, "
                         "a residual shaped as y, U's 36 packed panels and V (36, T, C)")
    row = (tiles_w * 4 + 2) * channels                # one zero-padded image row
    ring = np.zeros(6 * row, x.dtype)                 # padded row r in slot r % 6
    image, out, skip = x.reshape(-1), y.reshape(-1), residual.reshape(-1)
    inside = min(width, tiles_w * 4 + 2 - left) * channels
    v = np.zeros(36 * block * channels, x.dtype)      # the block's V (36, block, C)
    m = np.zeros(36 * block * filters, x.dtype)       # and M (36, block, F)
    tiles = np.empty(block, np.int64)                 # the block's tiles, t = (n*th + ty)*tw + tx
    held = 0
    for n in range(batch):
        for ty in range(tiles_h):
            for r in range(0 if ty == 0 else ty * 4 + 2, ty * 4 + 6):
                y_in, slot = r - top, (r % 6) * row + left * channels
                if 0 <= y_in < height:
                    _copy(ring, slot, image, (n * height + y_in) * width * channels, inside)
                else:
                    for e in range(np.uint64(inside)):
                        ring[np.uint64(slot) + e] = 0
            # the slots of the tile row's six patch rows
            row0, row1 = ty * 4 % 6 * row, (ty * 4 + 1) % 6 * row
            row2, row3 = (ty * 4 + 2) % 6 * row, (ty * 4 + 3) % 6 * row
            row4, row5 = (ty * 4 + 4) % 6 * row, (ty * 4 + 5) % 6 * row
            for tx in range(tiles_w):
                for c0 in range(0, channels, lanes):
                    c = tx * 4 * channels + min(c0, channels - lanes)
                    _input_tile(ring, row0 + c, row1 + c, row2 + c, row3 + c, row4 + c,
                                row5 + c, channels, v, held * channels + c - tx * 4 * channels,
                                block * channels)
                tiles[held] = (n * tiles_h + ty) * tiles_w + tx
                held += 1
                if held == block:
                    _finish(v, m, panels, tiles, held, block, channels, bias, skip,
                            has_residual, relu, out, out_h, out_w, filters, tiles_h, tiles_w,
                            kept, keep)
                    held = 0
    if held:
        _finish(v, m, panels, tiles, held, block, channels, bias, skip, has_residual, relu, out,
                out_h, out_w, filters, tiles_h, tiles_w, kept, keep)
    return y


@numba.njit(inline="always")
def _copy(target, start, source, first, count):
    """``target[start:start + count] = source[first:first + count]`` (1-D arrays)."""
    start, first = np.uint64(start), np.uint64(first)
    for e in range(np.uint64(count)):
        target[start + e] = source[first + e]


@numba.njit(inline="always")
def _finish(v, m, panels, tiles, held, block, channels, bias, skip, has_residual, relu, out,
            out_h, out_w, filters, tiles_h, tiles_w, kept, keep):
    """The block's V copied out if ``keep`` (its tiles are consecutive: one run per point),
    its products ``M[k] = V[k] @ U[k]`` and its ``held`` tiles' outputs."""
    lanes = VECTOR_BYTES // v.itemsize
    columns = (filters + lanes - 1) // lanes
    if keep:
        count = kept.size // (36 * channels)                      # T
        flat = kept.reshape(-1)
        for k in range(36):
            _copy(flat, (k * count + tiles[0]) * channels, v, k * block * channels,
                  held * channels)
    for k in range(36):
        for first in range(0, held, ROWS):
            for column_block in range(columns):
                f0 = min(column_block * lanes, filters - lanes)
                _block(v, (k * block + first) * channels, channels, 1, panels[k],
                       column_block * channels * lanes, lanes, channels, bias, 0, False, False,
                       m, (k * block + first) * filters + f0, filters)
    for q in range(held):
        t = tiles[q]
        tx, rest = t % tiles_w, t // tiles_w
        ty, n = rest % tiles_h, rest // tiles_h
        at = ((n * out_h + ty * 4) * out_w + tx * 4) * filters
        for f in range(0, filters, lanes):
            f0 = min(f, filters - lanes)
            _output_tile(m, q * filters + f0, block * filters, bias, f0, skip, has_residual,
                         relu, out, at + f0, out_w * filters, filters, min(4, out_h - ty * 4),
                         min(4, out_w - tx * 4))
