"""A compiled matrix multiply with its epilogue, and the transposed product of a weight gradient,
beside their NumPy references (``np.matmul`` then ``dense.add_bias``; ``a.T @ b``):

    matmul(a (M, K), b (K, F), bias (F,), has_bias, relu, out (M, F))
        out = a @ b  (+ bias)  (then max(out, 0) if relu)
        M >= ROWS, F >= one vector; a, b and out C-contiguous, one float dtype
    transposed_matmul(a (M, K), b (M, F), out (K, F))
        out = a.T @ b      (see its docstring)
    gemm_block(rows, gathered, accumulate)
        the intrinsic both run, and ``conv_kernels``' implicit GEMM

Why not plain Numba loops: written as loops over rows, taps and output columns, LLVM keeps the
accumulators in memory (one load and one store for every multiply-add) or vectorises the
reduction loop instead, with gathers from ``b``: 8-10 G multiply-adds a second on one core,
against OpenBLAS's 45, on a (4096, 144) x (144, 32) product. Numba gives no way to say "keep
these in registers".

So the inner block is written in LLVM's own vector types (``gemm_block``, a Numba intrinsic
built with ``simd.Vectors``): a block of ``ROWS`` rows by one 64-byte vector of columns (16
float32 or 8 float64) is one loop over K whose ``ROWS`` accumulators are SSA values, which
LLVM keeps in registers. Each step
loads one vector of ``b``'s row, broadcasts one value of each of ``a``'s rows, and runs
``ROWS`` fused multiply-adds (``llvm.fmuladd``: one instruction where the CPU has FMA, a
multiply and an add where it has not). The epilogue (bias, ReLU) runs on the accumulators
before they are stored, with the reference's semantics: the bias added after the sum, NaN
kept, -0 made +0 by the ReLU (as ``np.maximum(s, 0)`` gives them). The sums run in K's order,
not OpenBLAS's, so the two agree to rounding, not bit for bit.

``b``'s column blocks are packed first, each one contiguous (K, lanes) panel; each block of
``a``'s rows then runs over every panel, so ``b`` is read from cache and ``a`` once from memory.
Where M or F is not a multiple of the block, the last block is moved back to end on the edge:
it computes some values twice, the same way, so no tail loop is needed.

One core of the AMD EPYC, float32, bias and ReLU included (OpenBLAS's without them), best of
30, G multiply-adds a second:

    (M, K) x (K, F)            where                        OpenBLAS   here
    (65536, 27) x (27, 16)     ResNet-20's stem (im2col)    30.4-34.7  53.6-53.8
    (36864, 25) x (25, 32)     the article's conv1          40.8       54.2
    (16384, 144) x (144, 32)   a stride-2 3x3, 16 -> 32     32.4       51.0
    (16384, 64) x (64, 128)    a 1x1, 64 -> 128             40.4       47.8
    (16384, 128) x (128, 128)  a 1x1, 128 -> 128            42.2       47.5
    (4096, 256) x (256, 256)   a 1x1, 256 -> 256            47.0       52.4
    (64, 1024) x (1024, 1000)  the article's Dense(1000)    48.0       27.6

OpenBLAS wins where there are few rows and a large ``b``: a dense layer's batch, whose
``b`` does not stay in cache. ``dense.compiled_linear`` leaves those to it.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

from cnnlab.engine.simd import VECTOR_BYTES, Vectors

#: rows of ``a`` a block holds: 6 accumulators are 6 of AVX-512's 32 vector registers, or 12
#: of AVX2's 16 (a 64-byte vector is two of its registers), with room for ``b``'s vector and
#: the broadcasts. Against 4 rows, 6 ran 2% slower to 15% faster on the shapes above; 8 was
#: no faster than 6.
ROWS = 6


def gemm_block(rows: int, gathered: bool, accumulate: bool = False):
    """The intrinsic for one block of ``rows`` rows by one vector of ``lanes`` columns:

        out[out_at + r*out_row + e] = sum over t < k, in order, of
            a[a_at + r*a_row + t*a_step] * b[b_at + t*b_row + e]           (plain)
            a[a_at + r*a_row + a_offsets[t]] * b[b_at + b_offsets[t] + e]  (gathered)

    for ``r < rows``, ``e < lanes``: one loop whose ``rows`` vector sums are loop-carried values
    (phi nodes), so they live in registers; with ``accumulate``, the sums start from ``out``'s
    values instead of 0, and the loop adds into them. Then, while they are still there,
    ``+ bias[bias_at + e]`` if ``has_bias`` and ``max(., 0)`` if ``relu``. The gathered form
    takes a window's taps where they lie in an image (``conv_kernels``): no im2col copy.
    Arguments, in order (``PLAIN``, ``GATHERED``): ``a, a_at, a_row, (a_step | a_offsets), b,
    b_at, (b_row | b_offsets), k, bias, bias_at, has_bias, relu, out, out_at, out_row``; a, b,
    bias, out 1-D arrays of one float dtype, offsets int64; ``bias`` is read even where
    ``has_bias`` is false (pass any array with values there), and no bounds are checked (the
    caller's loops keep inside)."""
    names = PLAIN if not gathered else GATHERED

    def codegen(context, builder, signature, args):
        v = Vectors(context, builder, signature.args[0].dtype)
        given = dict(zip(names, zip(args, signature.args)))

        def pointer(name):
            return v.pointer(*given[name])

        def index(name):
            return v.index(*given[name])

        a_ptr, b_ptr, bias_ptr, out_ptr = (pointer(name) for name in ("a", "b", "bias", "out"))
        a_at, a_row, b_at, k, bias_at, out_at, out_row = (
            index(name) for name in ("a_at", "a_row", "b_at", "k", "bias_at", "out_at",
                                     "out_row"))
        a_rows = [builder.add(a_at, builder.mul(v.integer(r), a_row)) for r in range(rows)]
        if gathered:
            a_offsets, b_offsets = pointer("a_offsets"), pointer("b_offsets")
        else:
            a_stride, b_row = index("a_step"), index("b_row")

        def step(t, sums):
            if gathered:
                a_step = builder.load(builder.gep(a_offsets, [t]))
                b_at_t = builder.add(b_at, builder.load(builder.gep(b_offsets, [t])))
            else:
                a_step = builder.mul(t, a_stride)
                b_at_t = builder.add(b_at, builder.mul(t, b_row))
            b_vector = v.load(b_ptr, b_at_t)
            return [v.fmuladd(v.splat(v.load_scalar(a_ptr, builder.add(start, a_step))),
                              b_vector, total) for start, total in zip(a_rows, sums)]

        out_rows = [builder.add(out_at, builder.mul(v.integer(r), out_row)) for r in range(rows)]
        first = [v.load(out_ptr, at) for at in out_rows] if accumulate else [v.zero] * rows
        sums = v.loop(k, first, step)
        bias = v.load(bias_ptr, bias_at)
        has_bias, relu = given["has_bias"][0], given["relu"][0]
        for at, total in zip(out_rows, sums):
            total = builder.select(has_bias, builder.fadd(total, bias), total)
            v.store(v.relu(total, on=relu), out_ptr, at)
        return context.get_dummy_value()

    if gathered:
        def block(typingctx, a, a_at, a_row, a_offsets, b, b_at, b_offsets, k, bias, bias_at,
                  has_bias, relu, out, out_at, out_row):
            return types.void(a, a_at, a_row, a_offsets, b, b_at, b_offsets, k, bias, bias_at,
                              has_bias, relu, out, out_at, out_row), codegen
    else:
        def block(typingctx, a, a_at, a_row, a_step, b, b_at, b_row, k, bias, bias_at,
                  has_bias, relu, out, out_at, out_row):
            return types.void(a, a_at, a_row, a_step, b, b_at, b_row, k, bias, bias_at,
                              has_bias, relu, out, out_at, out_row), codegen
    return intrinsic(block)


#: the intrinsics' arguments, in order (``gemm_block``)
PLAIN = ("a", "a_at", "a_row", "a_step", "b", "b_at", "b_row", "k", "bias", "bias_at",
         "has_bias", "relu", "out", "out_at", "out_row")
GATHERED = ("a", "a_at", "a_row", "a_offsets", "b", "b_at", "b_offsets", "k", "bias",
            "bias_at", "has_bias", "relu", "out", "out_at", "out_row")

_block = gemm_block(ROWS, gathered=False)
_adding_block = gemm_block(ROWS, gathered=False, accumulate=True)

#: :func:`transposed_matmul` takes M in chunks whose packed rows of ``a`` and ``b`` fit this
#: much of L2, so each block reads them from cache
TRANSPOSED_CHUNK_BYTES = 256 * 2**10


@numba.njit(inline="always")
def _copy(source, read, target, write, count):
    """``target[write:write + count] = source[read:read + count]`` (flat arrays)."""
    read, write = np.uint64(read), np.uint64(write)
    for e in range(np.uint64(count)):
        target[write + e] = source[read + e]


@numba.njit(cache=True, nogil=True)
def pack(b):
    """``b (K, F)``'s column blocks, each a contiguous (K, lanes) panel, one after another (the
    last moved back to end on F's edge): what the blocks read as their ``b``, sequentially
    whatever F is (rows 4 KB apart, as at F = 1024 float32, share cache sets and halved the
    speed). ``b`` C-contiguous."""
    k, f = b.shape
    lanes = VECTOR_BYTES // b.itemsize
    columns = (f + lanes - 1) // lanes
    panels = np.empty(columns * k * lanes, b.dtype)
    flat_b = b.reshape(-1)
    for block in range(columns):
        column = min(block * lanes, f - lanes)
        for t in range(k):
            _copy(flat_b, t * f + column, panels, (block * k + t) * lanes, lanes)
    return panels


@numba.njit(cache=True, nogil=True)
def matmul(a, b, bias, has_bias, relu, out):
    """``out (M, F) = a (M, K) @ b (K, F)``, then the epilogue; see the module docstring.
    ``bias`` (F,): any array of the dtype where ``has_bias`` is false. Every column block of
    ``b`` is packed once; each block of ``a``'s rows then runs over them all, so ``b`` is read
    from cache and ``a`` once from memory: the order for a convolution's many pixels (M) and
    few filters (F)."""
    if b.shape[0] != a.shape[1] or out.shape[1] != b.shape[1]:
        raise ValueError("matmul takes a (M, K) @ b (K, F) into out (M, F)")
    return matmul_packed(a, pack(b), bias, has_bias, relu, out)


@numba.njit(cache=True, nogil=True)
def matmul_packed(a, panels, bias, has_bias, relu, out):
    """:func:`matmul` with ``b`` already packed (``panels = pack(b)``), for a caller that
    multiplies many ``a`` by one ``b``; F is ``out``'s."""
    m, k = a.shape
    f = out.shape[1]
    lanes = VECTOR_BYTES // a.itemsize
    flat_a, flat_out = a.reshape(-1), out.reshape(-1)
    columns = (f + lanes - 1) // lanes
    if m < ROWS or f < lanes or out.shape[0] != m or panels.size != columns * k * lanes:
        raise ValueError("matmul takes a (M, K) @ b (K, F) into out (M, F), M >= ROWS and "
                         "F >= one vector")
    flat_bias = bias.reshape(-1) if has_bias else flat_out     # read, never added, if no bias
    for row_block in range(0, m, ROWS):
        row = min(row_block, m - ROWS)
        for block in range(columns):
            column = min(block * lanes, f - lanes)
            _block(flat_a, row * k, k, 1, panels, block * k * lanes, lanes, k, flat_bias,
                   column, has_bias, relu, flat_out, row * f + column, f)
    return out


@numba.njit(cache=True, nogil=True)
def transposed_matmul(a, b, out):
    """``out (K, F) = a (M, K).T @ b (M, F)``: a weight gradient, a sum over M (pixels or
    images) of outer products. A block of ``ROWS`` rows of ``out`` broadcasts ``ROWS``
    neighbouring values of each row of ``a`` (one cache line, read in place: ``a_step = K``);
    ``b`` goes into one panel per vector of columns, padded with zeros to whole vectors. M goes
    in chunks (``TRANSPOSED_CHUNK_BYTES``) that stay in L2 while every block adds the chunk into
    its sums (``_adding_block``, on an F-padded copy of the result); the last block of rows,
    where ROWS does not divide K, comes from a copy of ``a``'s last columns padded with
    zeros, so no block adds over another. Each value's sum runs over M in order, as one
    product over M would."""
    m, k = a.shape
    f = b.shape[1]
    lanes = VECTOR_BYTES // a.itemsize
    if b.shape[0] != m or out.shape[0] != k or out.shape[1] != f:
        raise ValueError("transposed_matmul takes a (M, K), b (M, F) into out (K, F)")
    columns = (f + lanes - 1) // lanes
    f_padded = columns * lanes
    whole = k // ROWS                                  # blocks of rows read from a in place
    tail = k - whole * ROWS                            # rows from the padded copy
    chunk = max(1, min(m, TRANSPOSED_CHUNK_BYTES // ((k + f_padded) * a.itemsize)))
    in_place = f == f_padded                           # b's rows are whole vectors: no panels
    b_packed = np.zeros(0 if in_place else columns * chunk * lanes, a.dtype)
    a_tail = np.zeros(chunk * ROWS, a.dtype)
    total = np.zeros((whole + (tail > 0)) * ROWS * f_padded, a.dtype)
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    for start in range(0, m, chunk):
        length = min(chunk, m - start)
        if in_place:
            source, source_at, source_row, block_step = flat_b, start * f, f, lanes
        else:
            for t in range(length):
                for block in range(columns):
                    _copy(flat_b, (start + t) * f + block * lanes, b_packed,
                          (block * chunk + t) * lanes, min(lanes, f - block * lanes))
            source, source_at, source_row, block_step = b_packed, 0, lanes, chunk * lanes
        for row_block in range(whole):
            for block in range(columns):
                _adding_block(flat_a, start * k + row_block * ROWS, 1, k, source,
                              source_at + block * block_step, source_row, length, total, 0,
                              False, False, total, row_block * ROWS * f_padded + block * lanes,
                              f_padded)
        if tail:
            for t in range(length):
                _copy(flat_a, (start + t) * k + whole * ROWS, a_tail, t * ROWS, tail)
            for block in range(columns):
                _adding_block(a_tail, 0, 1, ROWS, source, source_at + block * block_step,
                              source_row, length, total, 0, False, False, total,
                              whole * ROWS * f_padded + block * lanes, f_padded)
    for q in range(k):
        for column in range(f):
            out[q, column] = total[q * f_padded + column]
    return out
