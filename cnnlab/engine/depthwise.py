"""Depthwise convolution: each input channel convolved with its own ``M`` filters.

Shapes (letters defined in ``cnnlab.engine``; ``M`` is the depth multiplier)::

    x       (N, H, W, C)
    kernel  (KH, KW, C, M)        Keras' depthwise layout
    bias    (C*M,)
    out     (N, Ho, Wo, C*M)      channel c*M + m is input channel c through filter m

    out[n, y, x, c*M + m] = bias[c*M + m]
                            + sum_{i, j} xp[n, y*sh + i*dh, x*sw + j*dw, c] * kernel[i, j, c, m]

There is no sum over channels, so no matrix multiply: the op walks the KH*KW taps of all windows
at once (one strided view of the padded input per tap, as max pooling does) and multiply-adds
each into the output. That reads the input KH*KW times and never builds im2col's
(N*Ho*Wo, KH*KW*C) copy, which for a depthwise layer would be KH*KW times the input with no GEMM
to pay for it. Backward, per tap::

    dkernel[i, j, c, m] = sum_{n, y, x} tap[n, y, x, c] * dout[n, y, x, c, m]
    dxp[tap's cells, c] += sum_m dout[n, y, x, c, m] * kernel[i, j, c, m]

With compiled kernels on (``config.kernels()``), ``depthwise_kernels`` does each direction in one
visit per output pixel or row, with no padded copy; the cache holds the kernels that made it
(None: the reference), so backward takes its forward's path.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cnnlab.engine import compiled
from cnnlab.engine.arrays import FreeList, array_module, empty
from cnnlab.engine.dense import LINEAR_MIN_ROWS, linear_kernels
from cnnlab.engine.shapes import Pads, output_hw
from cnnlab.engine.windows import column_sums, pad_images, tap_slices


def depthwise_conv2d_forward(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None,
                             strides=(1, 1), pads: Pads = ((0, 0), (0, 0)), dilation=(1, 1),
                             free: FreeList | None = None, relu: bool = False):
    """Returns ``(out (N, Ho, Wo, C*M), cache)``. Per filter ``m`` and tap, one multiply into a
    reused buffer and one add: no temporary the size of the output is made per tap.
    ``free``: the free list (``arrays.FreeList``) the compiled path takes its output from; None:
    a new array. ``relu``: ``max(out, 0)`` too (inference: the backward pass
    does not take the ReLU's gradient), in the compiled loops' own pass over each row or pixel,
    in place after the bias on the reference."""
    kh, kw, c, m = kernel.shape
    n, h, w, _ = x.shape
    out_hw = output_hw((h, w), (kh, kw), strides, pads, dilation)
    kernels = compiled.module("depthwise_kernels", x, kernel)
    if kernels is not None:
        dtype = np.result_type(x, kernel)
        x = np.ascontiguousarray(x, dtype=dtype)
        kernel = np.ascontiguousarray(kernel, dtype=dtype)
        shift = np.zeros(c * m, dtype) if bias is None else bias.astype(dtype)
        out = empty((n, *out_hw, c * m), dtype, free)
        _compiled_forward(kernels, x, kernel, shift, strides, dilation, pads[0][0], pads[1][0],
                          out, relu)
        return out, (x, x.shape, kernel, strides, pads, dilation, bias is not None, kernels)
    module = array_module(x, kernel)
    xp = pad_images(x, pads)                                                 # (N, Hp, Wp, C)
    dtype = module.result_type(x, kernel)
    out = module.empty((n, *out_hw, c, m), dtype=dtype)                     # (N, Ho, Wo, C, M)
    product = module.empty((n, *out_hw, c), dtype=dtype) if kh * kw > 1 else None
    for f in range(m):
        total = out[..., f]                                                  # (N, Ho, Wo, C)
        for i in range(kh):
            for j in range(kw):
                rows, cols = tap_slices(i, j, strides, dilation, out_hw)
                tap = xp[:, rows, cols, :]                                   # (N, Ho, Wo, C)
                if i == j == 0:
                    module.multiply(tap, kernel[i, j, :, f], out=total)
                else:
                    module.multiply(tap, kernel[i, j, :, f], out=product)
                    total += product
    out = out.reshape(n, *out_hw, c * m)                                     # (N, Ho, Wo, C*M)
    if bias is not None:
        out += bias
    if relu:
        module.maximum(out, 0, out=out)
    return out, (xp, x.shape, kernel, strides, pads, dilation, bias is not None, None)


#: up to this many channels the compiled forward pass goes a row at a time
#: (``depthwise_kernels.forward_rows``); past it, the pixel
#: loop's runs of C values are long already and the row's tiled weights (KH*KW*Wo*C values)
#: no longer fit L1. 3x3, stride 1, float32, 32 images, pixels against rows (ms): at 32x32,
#: C = 16: 1.18 / 0.64, 32: 1.69 / 1.18, 64: 2.70 / 2.29, 128: 4.59 / 4.50, 256: 8.68 / 12.72;
#: at 16x16, C = 64: 0.61 / 0.56, 128: 0.87 / 1.01.
ROWS_MAX_CHANNELS = 64


def _compiled_forward(kernels, x, kernel, bias, strides, dilation, top, left, out,
                      relu=False, in_cache=False) -> None:
    """``out`` by the compiled loops: in register blocks (``depthwise_kernels.forward_blocks``)
    for one filter per channel, stride 1 (any stride when ``x`` is ``in_cache``: see below) and
    at least one 64-byte vector of channels; else by
    the row loops where they apply (one filter per channel, stride 1 along the width) and pay
    (``ROWS_MAX_CHANNELS``), else by the pixel loops. The rows take each tap's weights, and the
    bias, laid out once per output column. mobilenet_small's layers inside the network, 64
    images, 1 thread (ms), the loops before against the blocks: stride 1, 32 x 32 x 32 3.68 /
    2.64, 16 x 16 x 128 3.02 / 2.73, 8 x 8 x 256 1.60 / 1.73; stride 2 (where the pixel loops
    stay), 32 x 32 x 64 2.49 / 3.04, 16 x 16 x 128 1.17 / 1.77, 8 x 8 x 256 0.71 / 0.80.
    Those strided layers read their input from memory. Read from cache (8 images, alone; or a
    piece of ``pointwise_depthwise_forward``'s) the blocks win at stride 2 too: 32 x 32 x 64
    0.290 -> 0.107 ms, 16 x 16 x 128 0.076 -> 0.035, 8 x 8 x 256 0.032 -> 0.033."""
    kh, kw, c, m = kernel.shape
    if m == 1 and (tuple(strides) == (1, 1) or in_cache) \
            and c * x.itemsize >= kernels.VECTOR_BYTES:
        kernels.forward_blocks(x, kernel, bias, tuple(strides), tuple(dilation), top, left,
                               relu, out)
    elif m == 1 and strides[1] == 1 and c <= ROWS_MAX_CHANNELS:
        width = out.shape[2]
        kernels.forward_rows(x, np.tile(kernel.reshape(kh, kw, c), (1, 1, width)),
                             np.tile(bias, width), strides[0], tuple(dilation), top, left, relu,
                             out)
    else:
        kernels.forward_pixels(x, kernel, bias, tuple(strides), tuple(dilation), top, left, relu,
                               out)


class Pointwise(NamedTuple):
    """A 1x1 convolution, stride 1, no padding, in a chain (:func:`separable_forward`)::

        x (N, H, W, C) -> x @ weights (+ bias), then max(., 0) if relu      (N, H, W, F)
    """
    weights: np.ndarray              # (C, F)
    bias: np.ndarray | None          # (F,)
    relu: bool


class Depthwise(NamedTuple):
    """A depthwise convolution with one filter per channel, in a chain: as
    :func:`depthwise_conv2d_forward` ``(N, H, W, C) -> (N, Ho, Wo, C)``."""
    kernel: np.ndarray               # (KH, KW, C, 1)
    bias: np.ndarray | None          # (C,)
    strides: tuple
    pads: Pads
    dilation: tuple
    relu: bool


def _chain_shapes(x_shape, ops) -> list[tuple]:
    """Each op's output shape ``(N, H, W, C)``, in order."""
    n, h, w, _ = x_shape
    shapes = []
    for op in ops:
        if isinstance(op, Pointwise):
            shapes.append((n, h, w, op.weights.shape[1]))
        else:
            h, w = output_hw((h, w), op.kernel.shape[:2], op.strides, op.pads, op.dilation)
            shapes.append((n, h, w, op.kernel.shape[2]))
    return shapes


#: a chain of 1x1 and depthwise convolutions runs in pieces of whole images whose largest map
#: takes about this many bytes, so that each op reads its input from L2, where the op before
#: wrote it, instead of memory. mobilenet_small (figures in ``graph.fusion``'s 7.).
CHAIN_PIECE_BYTES = 2**19


def separable_pieces(x, ops) -> list[slice] | None:
    """The pieces of whole images :func:`separable_forward` runs ``x`` in, or None where the
    ops should run apart (the reference): the compiled kernels must run every op (each
    depthwise one's loops; for each 1x1 one the compiled GEMM, which ``dense.linear`` takes on
    the whole batch: at least ``LINEAR_MIN_ROWS`` rows and F of them, C-contiguous, one dtype,
    so that the values in pieces are bit for bit the ops' apart), and there must be two pieces
    or more."""
    if array_module(x) is not np or not x.flags.c_contiguous:
        return None
    shapes = _chain_shapes(x.shape, ops)
    n = x.shape[0]
    per_piece = 1
    for op, shape in zip(ops, shapes):
        arrays = (x, *op[:2])
        if isinstance(op, Pointwise):
            rows = shape[1] * shape[2]             # a piece's rows per image
            gemm = linear_kernels(x.dtype, shape[3], *arrays)
            if gemm is None or not op.weights.flags.c_contiguous \
                    or n * rows < max(LINEAR_MIN_ROWS, shape[3]):
                return None
            per_piece = max(per_piece, -(-gemm.ROWS // rows))     # the fewest it takes
        elif op.kernel.shape[3] != 1 or compiled.module("depthwise_kernels", x, op.kernel) is None \
                or any(array is not None and array.dtype != x.dtype for array in arrays):
            return None
    largest = max(h * w * c for _, h, w, c in shapes) * x.itemsize
    per_piece = max(per_piece, CHAIN_PIECE_BYTES // largest)
    count = n // per_piece
    if count < 2:
        return None
    bounds = [n * i // count for i in range(count + 1)]        # near-equal, each >= per_piece
    return [slice(start, stop) for start, stop in zip(bounds, bounds[1:])]


def separable_forward(x, ops, pieces: list[slice], free: FreeList | None = None) -> np.ndarray:
    """Inference (no cache): a chain of 1x1 (:class:`Pointwise`) and depthwise
    (:class:`Depthwise`) convolutions, each reading the one before's output
    (``graph.fusion``'s 7.), run in ``pieces`` of whole images (:func:`separable_pieces`; where
    it gives None the caller runs the ops apart, which is the reference)::

        x (N, H, W, C) -> ops[0] -> ops[1] -> ... -> out (N, Ho, Wo, F)

    Only a piece of each map between exists at a time, read by the next op from cache. Each
    piece's rows take the compiled GEMM as the whole batch's do, each row's sums in the same
    order, and the depthwise loops make each image alone, so the values are those of the ops run
    apart, bit for bit."""
    dtype = x.dtype
    shapes = _chain_shapes(x.shape, ops)
    out = empty(shapes[-1], dtype, free)
    most = max(p.stop - p.start for p in pieces)
    size = max(h * w * c for _, h, w, c in shapes[:-1]) * most
    between = [np.empty(size, dtype), np.empty(size, dtype)]     # written and read in turn
    gemm = compiled.module("dense_kernels", x)
    loops = compiled.module("depthwise_kernels", x)
    # the kernels' arguments: a bias array always (one the GEMM never reads where none)
    biases = [(op.weights if op.bias is None else op.bias) if isinstance(op, Pointwise)
              else (np.zeros(op.kernel.shape[2], dtype) if op.bias is None else op.bias)
              for op in ops]
    weights = [gemm.pack(op.weights) if isinstance(op, Pointwise)     # packed once, not a
               else np.ascontiguousarray(op.kernel) for op in ops]   # piece at a time
    for piece in pieces:
        count = piece.stop - piece.start
        source = x[piece]
        for k, op in enumerate(ops):
            shape = (count, *shapes[k][1:])
            target = out[piece] if k == len(ops) - 1 \
                else between[k % 2][:count * shape[1] * shape[2] * shape[3]].reshape(shape)
            if isinstance(op, Pointwise):
                gemm.matmul_packed(source.reshape(-1, source.shape[3]), weights[k], biases[k],
                                   op.bias is not None, op.relu, target.reshape(-1, shape[3]))
            else:
                _compiled_forward(loops, source, weights[k], biases[k], op.strides,
                                  op.dilation, op.pads[0][0], op.pads[1][0], target, op.relu,
                                  in_cache=True)
            source = target
    return out


def depthwise_conv2d_backward(grad_out: np.ndarray, cache, need_input_grad: bool = True):
    """Returns ``(dx (N, H, W, C) or None, dkernel (KH, KW, C, M), dbias (C*M,) or None)``.
    Per filter and tap: the kernel gradient as one elementwise product and a BLAS column sum,
    the input gradient as one product added into the tap's strided cells."""
    xp, x_shape, kernel, strides, pads, dilation, has_bias, kernels = cache
    kh, kw, c, m = kernel.shape
    n, ho, wo, _ = grad_out.shape
    grad_bias = column_sums(grad_out.reshape(-1, c * m)) if has_bias else None  # (C*M,)
    if kernels is not None:                     # compiled forward: xp is the unpadded x
        grad_out = np.ascontiguousarray(grad_out, dtype=kernel.dtype)
        (top, _), (left, _) = pads
        if m == 1 and tuple(strides) == (1, 1):
            grad_kernel = kernels.kernel_grad_rows(grad_out, xp, kh, kw, tuple(dilation), top,
                                                   left).astype(kernel.dtype).reshape(kernel.shape)
            grad_x = None
            if need_input_grad:    # at stride 1, the forward pass of the flipped kernel
                grad_x = np.empty(x_shape, dtype=kernel.dtype)
                _compiled_forward(kernels, grad_out, np.ascontiguousarray(kernel[::-1, ::-1]),
                                  np.zeros(c, kernel.dtype), (1, 1), dilation,
                                  (kh - 1) * dilation[0] - top, (kw - 1) * dilation[1] - left,
                                  grad_x)
            return grad_x, grad_kernel, grad_bias
        # strided, a row pass for the kernel gradient and a scatter for the input's cost more
        # than one pixel loop doing both: 3.90 against 3.41-3.73 ms at MobileNet's 32 x 32 x 64,
        # stride 2 (64 images, separate runs)
        grad_x = np.zeros(x_shape if need_input_grad else (0, 0, 0, 0), dtype=kernel.dtype)
        grad_kernel = kernels.backward_pixels(grad_out, xp, kernel, tuple(strides),
                                              tuple(dilation), top, left, need_input_grad, grad_x)
        return (grad_x if need_input_grad else None), grad_kernel, grad_bias
    module = array_module(grad_out)
    g = grad_out.reshape(n, ho, wo, c, m)                                    # (N, Ho, Wo, C, M)
    grad_kernel = module.empty_like(kernel)                                  # (KH, KW, C, M)
    grad_xp = module.zeros_like(xp) if need_input_grad else None             # (N, Hp, Wp, C)
    product = module.empty((n, ho, wo, c), dtype=grad_out.dtype)             # (N, Ho, Wo, C)
    for f in range(m):
        g_f = module.ascontiguousarray(g[..., f]) if m > 1 else g[..., 0]  # (N, Ho, Wo, C)
        for i in range(kh):
            for j in range(kw):
                rows, cols = tap_slices(i, j, strides, dilation, (ho, wo))
                module.multiply(xp[:, rows, cols, :], g_f, out=product)
                grad_kernel[i, j, :, f] = column_sums(product.reshape(-1, c))
                if need_input_grad:
                    module.multiply(g_f, kernel[i, j, :, f], out=product)
                    grad_xp[:, rows, cols, :] += product
    grad_x = None
    if need_input_grad:
        (top, _), (left, _) = pads
        grad_x = grad_xp[:, top:top + x_shape[1], left:left + x_shape[2], :]  # (N, H, W, C)
    return grad_x, grad_kernel, grad_bias
