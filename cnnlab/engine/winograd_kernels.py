"""Compiled Winograd transforms of F(4x4, 3x3), beside their NumPy references in ``winograd.py``
(whose docstring has the shapes and formulas). ``T = N * th * tw`` tiles, tile
``t = (n * th + ty) * tw + tx`` covering outputs ``(ty*4 .. ty*4 + 3, tx*4 .. tx*4 + 3)``; all
arrays C-contiguous.

    input_tiles          x (N, H, W, C)    -> V (36, T, C)    V = B^T d B, d the tile's 6x6 patch
    output_tiles         M (36, T, F)      -> y (N, Ho, Wo, F)   y = A^T M A + bias (+ residual)
                                                                 (ReLU'd)

The kernel gradient's adjoint transform, ``dM = A dy A^T``, is ``winograd_fused_kernels``'
(``adjoint3x3``), generated from the tiling as its one-pass kernels are.

How they are fast. Each output of a tile is a short sum of its inputs (``_bt``, ``_at``:
the matrices' rows written out, zeros skipped), so a tile's whole transform is straight-line
code over one channel, and the loop over channels around it is what LLVM vectorises: every
value is read once and written once, and the intermediate ones stay in registers. Two things
decide whether LLVM does vectorise it, both measured on the input transform (one piece of
7 images, 32 x 32 x 16, 1 thread, one-off script):

- Its 36 stores must be at fixed distances from one another, or LLVM cannot rule out that two
  of them overlap and leaves the loop scalar (written straight into V, whose 36 rows are
  ``T * C`` apart: 5.4x slower than the kernels these replaced). So the transforms write into
  a scratch of ``36 x BLOCK`` values, one row per transform point, ``BLOCK`` a constant, and
  copy each row out to V in one run per chunk of tiles.
- Every index is unsigned (``np.uint64``), its constant part too: an index Numba types as
  signed gets a wrap-around test for negative values, which stops LLVM vectorising the loop
  (a plain row copy: 42 us a pass signed, 9.6 us unsigned). Numba types an integer literal
  plus a uint64 as int64, so a row's offset is written ``np.uint64(k * BLOCK) + e``.

The second half of each transform (six columns, or four rows) is written out line by line on
purpose: the same lines as a ``numba.literal_unroll`` loop left the input transform's loop
scalar (no packed instructions in its assembly, checked this way in review).

The image's rows are copied once into a ring of six zero-padded rows (the padding is zeros
written once, not a test per value); the next tile row starts 4 rows down and finds its first
two rows still there. M's 36 rows per chunk of tiles are gathered the same way. Where channels
pass ``BLOCK`` (``C > 272``), they are done in blocks of ``BLOCK``.

Measured against the kernels these replaced (one loop per nonzero matrix entry over a whole
tile row's values, for any F(m x m); ``git log`` has them), best of 40, 1 thread, float32,
pieces as ``conv`` cuts them (one-off script, another job paused meanwhile):

| piece | input | output (+ bias, ReLU) | adjoint |
|---|---|---|---|
| 7 x 32 x 32 x 16 (ResNet-20, stage 1) | 185 -> 85 us | 143 -> 51 us | 139 -> 73 us |
| 14 x 16 x 16 x 32 (stage 2) | 167 -> 72 us | 105 -> 45 us | 154 -> 62 us |
| 28 x 8 x 8 x 64 (stage 3) | 152 -> 82 us | 107 -> 49 us | 127 -> 61 us |
| 2 x 16 x 16 x 256 (cifar_vgg_wide) | 130 -> 95 us | 117 -> 66 us | 130 -> 67 us |
| 1 x 120 x 120 x 24 (a face detection band) | 484 -> 257 us | 375 -> 205 us | 363 -> 227 us |

(The adjoint of this module has since been replaced by the generated ``adjoint3x3``: 0.054 ->
0.043 ms on the stage-3 piece.)

Whole steps, batch 128, 2 threads, medians of 15 steps in each of 3 interleaved rounds:
ResNet-20 training 275.5-283.3 -> 237.6-240.3 ms, its inference 73.8-79.2 -> 59.8-61.8 ms,
cifar10_cnn training 90.7-99.5 -> 84.0-94.9 ms. The price is paid once, on a machine's
first run: compiling the three for float32 takes 4.4 s against 2.3 s (empty cache, one run
each: 1.90, 1.08 and 1.43 s against 1.04, 0.69 and 0.57 s).
"""

from __future__ import annotations

import numba
import numpy as np

#: values per scratch row: a chunk of tiles' channels (all of a tile row's in ResNet-20);
#: 36 rows of it (39 KB in float32) stay in L1, and a row's length is no multiple of 4 KB
BLOCK = 272


@numba.njit(inline="always")
def _bt(p, two, four, five):
    """``B^T p`` for F(4x4, 3x3), ``p`` six values: B^T's rows (4, 0, -5, 0, 1, 0),
    (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0), (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0),
    (0, 4, 0, -5, 0, 1)."""
    p0, p1, p2, p3, p4, p5 = p
    return (four * p0 - five * p2 + p4,
            p3 + p4 - four * (p1 + p2),
            four * (p1 - p2) - p3 + p4,
            two * (p3 - p1) - p2 + p4,
            two * (p1 - p3) - p2 + p4,
            four * p1 - five * p3 + p5)


@numba.njit(inline="always")
def _patch_row(ring, start, c, j1, j2, j3, j4, j5):
    """A patch row's six values of channel ``c``, from columns ``start``, ``start + j1``, ...
    (every index uint64)."""
    return (ring[start + c], ring[start + j1 + c], ring[start + j2 + c], ring[start + j3 + c],
            ring[start + j4 + c], ring[start + j5 + c])


@numba.njit(inline="always")
def _at(p, two, four, eight):
    """``A^T p``, ``p`` six values: A^T's rows (1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0),
    (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1)."""
    p0, p1, p2, p3, p4, p5 = p
    s12, d12, s34, d34 = p1 + p2, p1 - p2, p3 + p4, p3 - p4
    return p0 + s12 + s34, d12 + two * d34, s12 + four * s34, d12 + eight * d34 + p5


@numba.njit(inline="always")
def _column6(scratch, first, e):
    """Scratch rows ``first, first + 6, ..., first + 30`` at ``e``: a column of 6 x 6 points."""
    return (scratch[np.uint64(first * BLOCK) + e], scratch[np.uint64((first + 6) * BLOCK) + e],
            scratch[np.uint64((first + 12) * BLOCK) + e],
            scratch[np.uint64((first + 18) * BLOCK) + e],
            scratch[np.uint64((first + 24) * BLOCK) + e],
            scratch[np.uint64((first + 30) * BLOCK) + e])


@numba.njit(inline="always")
def _put_column6(scratch, first, e, values):
    """``values`` (six) into scratch rows ``first, first + 6, ..., first + 30`` at ``e``."""
    v0, v1, v2, v3, v4, v5 = values
    scratch[np.uint64(first * BLOCK) + e] = v0
    scratch[np.uint64((first + 6) * BLOCK) + e] = v1
    scratch[np.uint64((first + 12) * BLOCK) + e] = v2
    scratch[np.uint64((first + 18) * BLOCK) + e] = v3
    scratch[np.uint64((first + 24) * BLOCK) + e] = v4
    scratch[np.uint64((first + 30) * BLOCK) + e] = v5


@numba.njit(inline="always")
def _put_row4(scratch, first, e, values):
    """``values`` (four) into scratch rows ``first .. first + 3`` at ``e``."""
    v0, v1, v2, v3 = values
    scratch[np.uint64(first * BLOCK) + e] = v0
    scratch[np.uint64((first + 1) * BLOCK) + e] = v1
    scratch[np.uint64((first + 2) * BLOCK) + e] = v2
    scratch[np.uint64((first + 3) * BLOCK) + e] = v3


@numba.njit(inline="always")
def _constants(dtype_of):
    """2, 4, 5 and 8 in the data's dtype (an integer literal would make float32 code float64)."""
    k = np.array([2, 4, 5, 8], dtype_of.dtype)
    return k[0], k[1], k[2], k[3]


@numba.njit(inline="always")
def _copy(target, start, source, first, count):
    """``target[start:start + count] = source[first:first + count]`` (1-D arrays)."""
    start, first = np.uint64(start), np.uint64(first)
    for e in range(np.uint64(count)):
        target[start + e] = source[first + e]


@numba.njit(inline="always")
def _fill_ring(ring, image, n, ty, alpha, row, top, left, height, width, channels, inside):
    """The padded image rows tile row ``ty`` of image ``n`` reads, into their slots of
    ``ring`` (padded row r in slot ``r % alpha``, ``left`` zeros before its ``inside`` values;
    rows past the image zeros): all ``alpha`` at the first tile row, after it the 4 that the
    tile row below the last does not share. ``image`` is ``x`` flat, (N, H, W, C)."""
    for r in range(0 if ty == 0 else ty * 4 + alpha - 4, ty * 4 + alpha):
        y, slot = r - top, (r % alpha) * row + left * channels
        if 0 <= y < height:
            _copy(ring, slot, image, (n * height + y) * width * channels, inside)
        else:
            for e in range(np.uint64(inside)):
                ring[np.uint64(slot) + e] = 0


@numba.njit(inline="always")
def _scratch_to_rows(scratch, rows, first, chunk_tiles, block, c0, width):
    """Scratch row ``k`` (``chunk_tiles`` tiles, ``block`` values apart, of ``width`` channels
    from ``c0``) into ``rows`` (36, T, C) from tile ``first``: the layout of V and dM."""
    tiles, channels = rows.shape[1], rows.shape[2]
    flat = rows.reshape(-1)
    for k in range(36):
        if width == channels:            # the chunk's tiles are one run in the row
            _copy(flat, (k * tiles + first) * channels, scratch, k * BLOCK,
                  chunk_tiles * channels)
        else:
            for q in range(chunk_tiles):
                _copy(flat, (k * tiles + first + q) * channels + c0, scratch,
                      k * BLOCK + q * block, width)


@numba.njit(cache=True, nogil=True)
def input_tiles(x, top, left, tiles_h, tiles_w, v):
    """``v[a*6 + b, t, c] = sum_{i, j} B^T[a, i] d[i, j, c] B^T[b, j]``, where
    ``d[i, j, c] = x[n, ty*4 + i - top, tx*4 + j - left, c]``, zero outside the image."""
    batch, height, width, channels = x.shape
    two, four, five, _ = _constants(x)
    row = (tiles_w * 4 + 2) * channels                # one zero-padded image row
    ring = np.zeros(6 * row, x.dtype)                 # padded row r in slot r % 6
    scratch = np.empty(36 * BLOCK, x.dtype)
    image = x.reshape(-1)
    inside = min(width, tiles_w * 4 + 2 - left) * channels
    block = min(channels, BLOCK)
    per_chunk = BLOCK // block
    j1 = np.uint64(channels)             # the patch's columns 1-5, from column 0
    j2, j3, j4, j5 = j1 + j1, j1 + j1 + j1, j1 + j1 + j1 + j1, j1 + j1 + j1 + j1 + j1
    for n in range(batch):
        for ty in range(tiles_h):
            _fill_ring(ring, image, n, ty, 6, row, top, left, height, width, channels, inside)
            # the slots of the tile row's six patch rows
            row0, row1 = np.uint64((ty * 4 % 6) * row), np.uint64(((ty * 4 + 1) % 6) * row)
            row2, row3 = np.uint64(((ty * 4 + 2) % 6) * row), np.uint64(((ty * 4 + 3) % 6) * row)
            row4, row5 = np.uint64(((ty * 4 + 4) % 6) * row), np.uint64(((ty * 4 + 5) % 6) * row)
            first_tile = (n * tiles_h + ty) * tiles_w
            for c0 in range(0, channels, block):
                width_c = min(block, channels - c0)
                for tx0 in range(0, tiles_w, per_chunk):
                    chunk = min(per_chunk, tiles_w - tx0)
                    for q in range(chunk):
                        column = np.uint64((tx0 + q) * 4 * channels + c0)
                        r0, r1, r2 = row0 + column, row1 + column, row2 + column
                        r3, r4, r5 = row3 + column, row4 + column, row5 + column
                        s = np.uint64(q * block)
                        for c in range(np.uint64(width_c)):
                            # along each patch row: (d B)[i, b] = (B^T d[i, :])[b]
                            h0 = _bt(
                                _patch_row(ring, r0, c, j1, j2, j3, j4, j5), two, four, five)
                            h1 = _bt(
                                _patch_row(ring, r1, c, j1, j2, j3, j4, j5), two, four, five)
                            h2 = _bt(
                                _patch_row(ring, r2, c, j1, j2, j3, j4, j5), two, four, five)
                            h3 = _bt(
                                _patch_row(ring, r3, c, j1, j2, j3, j4, j5), two, four, five)
                            h4 = _bt(
                                _patch_row(ring, r4, c, j1, j2, j3, j4, j5), two, four, five)
                            h5 = _bt(
                                _patch_row(ring, r5, c, j1, j2, j3, j4, j5), two, four, five)
                            # down each column b: V[a, b] = (B^T (d B)[:, b])[a], into
                            # scratch row a*6 + b
                            e = s + c
                            _put_column6(scratch, 0, e, _bt(
                                (h0[0], h1[0], h2[0], h3[0], h4[0], h5[0]), two, four, five))
                            _put_column6(scratch, 1, e, _bt(
                                (h0[1], h1[1], h2[1], h3[1], h4[1], h5[1]), two, four, five))
                            _put_column6(scratch, 2, e, _bt(
                                (h0[2], h1[2], h2[2], h3[2], h4[2], h5[2]), two, four, five))
                            _put_column6(scratch, 3, e, _bt(
                                (h0[3], h1[3], h2[3], h3[3], h4[3], h5[3]), two, four, five))
                            _put_column6(scratch, 4, e, _bt(
                                (h0[4], h1[4], h2[4], h3[4], h4[4], h5[4]), two, four, five))
                            _put_column6(scratch, 5, e, _bt(
                                (h0[5], h1[5], h2[5], h3[5], h4[5], h5[5]), two, four, five))
                    _scratch_to_rows(scratch, v, first_tile + tx0, chunk, block, c0, width_c)


@numba.njit(cache=True, nogil=True)
def output_tiles(mt, bias, tiles_h, tiles_w, y, relu, residual, has_residual):
    """``y[n, ty*4 + a, tx*4 + b, f] = bias[f] + sum_{i, j} A^T[a, i] M[i*6 + j, t, f]
    A^T[b, j]``, then ``+ residual[n, ty*4 + a, tx*4 + b, f]`` if ``has_residual`` (``residual``
    shaped as ``y``; any array where it is false, never read), then ``max(y, 0)`` if ``relu``:
    inference epilogues (ResNet's shortcut and join), so the map is not read and written again.
    The tiles' overhang past ``y``'s edge is dropped. The sum is rounded after the bias and
    again after the residual, as the conv and an Add after it round them; the ReLU is
    ``merge_kernels.add_relu``'s (NaN kept, -0 made +0)."""
    batch, out_h, out_w, filters = y.shape
    tiles = mt.shape[1]
    two, four, _, eight = _constants(y)
    zero = y.dtype.type(0)
    skip = residual.reshape(-1)
    gathered = np.empty(36 * BLOCK, y.dtype)            # M's 36 rows for a chunk of tiles
    scratch = np.empty(16 * BLOCK, y.dtype)             # the chunk's y, row a*4 + b
    points, image = mt.reshape(-1), y.reshape(-1)
    block = min(filters, BLOCK)
    per_chunk = BLOCK // block
    for n in range(batch):
        for ty in range(tiles_h):
            first_tile = (n * tiles_h + ty) * tiles_w
            for f0 in range(0, filters, block):
                width_f = min(block, filters - f0)
                shift = bias[f0:f0 + width_f]
                for tx0 in range(0, tiles_w, per_chunk):
                    chunk = min(per_chunk, tiles_w - tx0)
                    for k in range(36):
                        if width_f == filters:
                            _copy(gathered, k * BLOCK, points,
                                  (k * tiles + first_tile + tx0) * filters, chunk * filters)
                        else:
                            for q in range(chunk):
                                _copy(gathered, k * BLOCK + q * block, points,
                                      (k * tiles + first_tile + tx0 + q) * filters + f0, width_f)
                    for e in range(np.uint64(chunk * block)):
                        # down each column j: (A^T M)[a, j], four values per column
                        g0 = _at(_column6(gathered, 0, e), two, four, eight)
                        g1 = _at(_column6(gathered, 1, e), two, four, eight)
                        g2 = _at(_column6(gathered, 2, e), two, four, eight)
                        g3 = _at(_column6(gathered, 3, e), two, four, eight)
                        g4 = _at(_column6(gathered, 4, e), two, four, eight)
                        g5 = _at(_column6(gathered, 5, e), two, four, eight)
                        # along each row a: y[a, b] = ((A^T M)[a, :] A)[b], scratch row a*4 + b
                        _put_row4(scratch, 0, e, _at(
                            (g0[0], g1[0], g2[0], g3[0], g4[0], g5[0]), two, four, eight))
                        _put_row4(scratch, 4, e, _at(
                            (g0[1], g1[1], g2[1], g3[1], g4[1], g5[1]), two, four, eight))
                        _put_row4(scratch, 8, e, _at(
                            (g0[2], g1[2], g2[2], g3[2], g4[2], g5[2]), two, four, eight))
                        _put_row4(scratch, 12, e, _at(
                            (g0[3], g1[3], g2[3], g3[3], g4[3], g5[3]), two, four, eight))
                    # into y, + bias, cropped: along each output row in turn, so y and the
                    # residual go as four runs, not four rows a tile (ResNet-20 predicting 128,
                    # 1 thread, this kernel's time: 17.3 and 19.3 -> 16.1 and 15.9 ms; with
                    # the residual, 21.5 and 26.8 -> 19.2 and 18.6 ms)
                    for a in range(min(4, out_h - ty * 4)):
                        for q in range(chunk):
                            tx = tx0 + q
                            for b in range(min(4, out_w - tx * 4)):
                                target = np.uint64(
                                    ((n * out_h + ty * 4 + a) * out_w + tx * 4 + b) * filters + f0)
                                source = np.uint64((a * 4 + b) * BLOCK + q * block)
                                if has_residual:
                                    for f in range(np.uint64(width_f)):
                                        total = scratch[source + f] + shift[f] + skip[target + f]
                                        image[target + f] = total if not relu or total > zero \
                                            or total != total else zero
                                elif relu:
                                    for f in range(np.uint64(width_f)):
                                        image[target + f] = max(scratch[source + f] + shift[f], 0)
                                else:
                                    for f in range(np.uint64(width_f)):
                                        image[target + f] = scratch[source + f] + shift[f]
