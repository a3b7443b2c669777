"""A chain of convolutions, each reading the one before's output, run a few images at a time
(inference: ``graph.fusion``'s 7.), so that no map between them is written to memory.

Shapes (letters defined in ``cnnlab.engine``)::

    x (N, H, W, C) -> ops[0] -> ops[1] -> ... -> out (N, Ho, Wo, F)

    an op                     kernel            its output, as the op alone gives it
    a convolution             (KH, KW, C, F)    conv.conv2d_forward(x, kernel, bias, ...)
    a depthwise convolution   (KH, KW, C, 1)    depthwise.depthwise_conv2d_forward(...)

each with its bias (or None) and then ``max(out, 0)`` if ``relu``. MobileNet's stem, then its
depthwise and 1x1 layers alternating, is one chain (its BatchNormalizations folded into the
kernels by the caller).

:func:`chain_forward` runs the ops in pieces of whole images (:func:`chain_runs`) where the
compiled kernels run them as they would on the whole batch: a 1x1 convolution
(stride 1, no padding) by the compiled GEMM (``dense_kernels.matmul_packed``, the kernel packed
once a call), a convolution of few input channels by the implicit GEMM
(``conv_kernels.implicit_gemm``) and a depthwise one by its compiled loops. Each output value is
made by the same sums in the same order as on the whole batch, so the pieces give the ops'
values apart bit for bit. Elsewhere (the reference kernels, a GPU, a batch too small for a
1x1 layer's GEMM, another convolution path) the ops run one by one on the whole batch, which
is the reference; the ops before and after such an op still run in pieces. There is no
backward pass: training never chains.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cnnlab.engine import compiled
from cnnlab.engine.arrays import FreeList, array_module, empty
from cnnlab.engine.conv import choose, conv2d_forward, implicit_runs, one_gemm, widened
from cnnlab.engine.dense import LINEAR_MIN_ROWS, linear_kernels
from cnnlab.engine.depthwise import compiled_forward, depthwise_conv2d_forward
from cnnlab.engine.shapes import Pads, output_hw


class ChainOp(NamedTuple):
    """One convolution of a chain (the module docstring)."""
    depthwise: bool                  # one filter per channel: kernel (KH, KW, C, 1)
    kernel: np.ndarray               # (KH, KW, C, F), or (KH, KW, C, 1) if depthwise
    bias: np.ndarray | None          # (F,) or (C,)
    strides: tuple
    pads: Pads
    dilation: tuple
    relu: bool

    @property
    def pointwise(self) -> bool:
        """A 1x1 convolution, stride 1, no padding: one GEMM on the map as it lies."""
        return not self.depthwise and one_gemm(self.kernel.shape, self.pads) \
            and tuple(self.strides) == (1, 1)


def chain_shapes(x_shape, ops) -> list[tuple]:
    """Each op's output shape ``(N, Ho, Wo, F)``, in order."""
    n, h, w, _ = x_shape
    shapes = []
    for op in ops:
        h, w = output_hw((h, w), op.kernel.shape[:2], op.strides, op.pads, op.dilation)
        shapes.append((n, h, w, op.kernel.shape[2] if op.depthwise else op.kernel.shape[3]))
    return shapes


#: a chain runs in pieces of whole images whose largest map takes about this many bytes, so
#: that each op reads its input from L2, where the op before wrote it, instead of memory.
#: mobilenet_small, figures in ``graph.fusion``'s 7.; 512 KB, 1 MB and 2 MB were level within
#: the machine's noise on two threads (medians of 30 calls 30.4-35.7 ms, 3 runs each; 1 MB
#: against 512 KB, 4 pairs: 27.1-32.9 against 28.7-32.0), and 256 KB (1 image, twice the
#: calls) slower: 34.7-36.6 against 27.5-31.8 ms (4 interleaved pairs). Pieces
#: that grew along the chain as the maps shrink (2 images at 32 x 32, 4 at 16 x 16, 8 at 8 x 8,
#: 32 at 4 x 4: half the kernel calls) were slower, the later ops' inputs and outputs no longer
#: fitting L2 together: one thread 51.3-54.4 ms against 49.2-50.4 (minima, 4 interleaved
#: pairs); sized to fit, they made more calls than these.
CHAIN_PIECE_BYTES = 2**19


class Run(NamedTuple):
    """Consecutive ops of a chain, and the pieces of whole images they run in (None: one by
    one on the whole batch)."""
    ops: range
    pieces: list[slice] | None


def chain_runs(x, ops) -> list[Run]:
    """How :func:`chain_forward` runs ``ops`` on ``x`` (the module docstring): each longest
    stretch of two ops or more that the compiled kernels take as they would on the whole batch
    (:func:`_fewest_images`) in pieces, if it makes two or more; the other ops one by one."""
    if x.shape[0] < 2 or array_module(x) is not np or not x.flags.c_contiguous:
        return [Run(range(len(ops)), None)]            # (one image: no two pieces to make)
    shapes = chain_shapes(x.shape, ops)
    fewest = [_fewest_images(x, op, in_shape, shape)
              for op, in_shape, shape in zip(ops, [x.shape, *shapes], shapes)]
    runs, start = [], 0
    while start < len(ops):
        stop = start + 1
        while stop < len(ops) and (fewest[start] is None) == (fewest[stop] is None):
            stop += 1
        pieces = None
        if fewest[start] is not None and stop - start >= 2:
            largest = max(h * w * c for _, h, w, c in shapes[start:stop]) * x.itemsize
            per_piece = max(max(fewest[start:stop]), CHAIN_PIECE_BYTES // largest)
            count = x.shape[0] // per_piece
            if count >= 2:
                bounds = [x.shape[0] * i // count for i in range(count + 1)]  # each >= per_piece
                pieces = [slice(a, b) for a, b in zip(bounds, bounds[1:])]
        if runs and pieces is None and runs[-1].pieces is None:      # one by one, joined
            runs[-1] = Run(range(runs[-1].ops.start, stop), None)
        else:
            runs.append(Run(range(start, stop), pieces))
        start = stop
    return runs


def _fewest_images(x, op, in_shape, shape) -> int | None:
    """The fewest images a piece of ``op`` (input ``in_shape``, output ``shape``, on the whole
    batch ``x``'s dtype) may hold, or None where no compiled kernel takes it as it would the
    whole batch: a 1x1 convolution ``dense.linear``'s compiled GEMM (on at least
    ``LINEAR_MIN_ROWS`` rows and F of them), another the implicit GEMM, a depthwise one (one
    filter per channel) its compiled loops."""
    arrays = [array for array in (x, op.kernel, op.bias) if array is not None]
    if any(array.dtype != x.dtype for array in arrays):
        return None
    if op.depthwise:
        return 1 if op.kernel.shape[3] == 1 \
            and compiled.module("depthwise_kernels", *arrays) is not None else None
    if choose(in_shape, op.kernel.shape, op.strides, op.pads, op.dilation, gradients="none",
              dtype=x.dtype) != "direct":
        return None
    if op.pointwise:
        rows = shape[1] * shape[2]                 # a piece's rows per image
        gemm = linear_kernels(x.dtype, shape[3], *arrays)
        if gemm is None or shape[0] * rows < max(LINEAR_MIN_ROWS, shape[3]):
            return None
        return -(-gemm.ROWS // rows)                # the fewest rows the GEMM takes
    if one_gemm(op.kernel.shape, op.pads) \
            or not implicit_runs(x, op.kernel, op.bias, op.pads, op.dilation, False):
        return None                        # (a strided 1x1 conv takes a GEMM of its own)
    return 1


def chain_forward(x, ops, free: FreeList | None = None) -> np.ndarray:
    """``out`` of the chain ``ops`` on ``x`` (the module docstring), run by run
    (:func:`chain_runs`). Outputs from ``free``."""
    for run in chain_runs(x, ops):
        part = [ops[k] for k in run.ops]
        x = _one_by_one(x, part, free) if run.pieces is None \
            else _in_pieces(x, part, run.pieces, free)
    return x


def _one_by_one(x, ops, free):
    """The reference: each op on the whole batch."""
    for op in ops:
        if op.depthwise:
            x, _ = depthwise_conv2d_forward(x, op.kernel, op.bias, op.strides, op.pads,
                                            op.dilation, free, relu=op.relu)
        else:
            x, _ = conv2d_forward(x, op.kernel, op.bias, op.strides, op.pads, op.dilation,
                                  gradients="none", relu=op.relu, free=free)
    return x


def _in_pieces(x, ops, pieces, free):
    """The ops on each piece in turn, the maps between them in two buffers written and read in
    turn."""
    shapes = chain_shapes(x.shape, ops)
    out = empty(shapes[-1], x.dtype, free)
    most = max(p.stop - p.start for p in pieces)
    size = max(h * w * c for _, h, w, c in shapes[:-1]) * most
    between = [np.empty(size, x.dtype), np.empty(size, x.dtype)]
    runs = [_piece_runner(op, x.dtype) for op in ops]
    for piece in pieces:
        count = piece.stop - piece.start
        source = x[piece]
        for k, run in enumerate(runs):
            shape = (count, *shapes[k][1:])
            target = out[piece] if k == len(ops) - 1 \
                else between[k % 2][:count * shape[1] * shape[2] * shape[3]].reshape(shape)
            run(source, target)
            source = target
    return out


def _piece_runner(op, dtype):
    """``run(source (n, H, W, C), target (n, Ho, Wo, F))``: ``op`` on a piece, by the compiled
    kernel :func:`chain_runs` vouched for, its arguments made once a call."""
    if op.depthwise:
        loops = compiled.module("depthwise_kernels", op.kernel)
        kernel = np.ascontiguousarray(op.kernel)
        shift = np.zeros(op.kernel.shape[2], dtype) if op.bias is None else op.bias
        return lambda source, target: compiled_forward(
            loops, source, kernel, shift, op.strides, op.dilation, op.pads[0][0],
            op.pads[1][0], target, op.relu, in_cache=True)
    kh, kw, c, f = op.kernel.shape
    gemm = compiled.module("dense_kernels", op.kernel)
    panels = gemm.pack(np.ascontiguousarray(op.kernel).reshape(kh * kw * c, f))
    has_bias = op.bias is not None
    bias = op.bias if has_bias else panels                # read, never added, where none
    if op.pointwise:
        return lambda source, target: gemm.matmul_packed(
            source.reshape(-1, c), panels, bias, has_bias, op.relu, target.reshape(-1, f))
    implicit = compiled.module("conv_kernels", op.kernel)
    return lambda source, target: implicit.implicit_gemm(
        widened(source, op.pads[1]), panels, kh, kw, bias, has_bias, op.relu,
        tuple(op.strides), tuple(op.dilation), op.pads[0][0], 0, target)
