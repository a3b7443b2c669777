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

import numpy as np

from cnnlab.engine import compiled
from cnnlab.engine.arrays import FreeList, array_module, empty
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
        compiled_forward(kernels, x, kernel, shift, strides, dilation, pads[0][0], pads[1][0],
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


def compiled_forward(kernels, x, kernel, bias, strides, dilation, top, left, out,
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
    piece of ``chain.chain_forward``'s) the blocks win at stride 2 too: 32 x 32 x 64
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
                compiled_forward(kernels, grad_out, np.ascontiguousarray(kernel[::-1, ::-1]),
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
