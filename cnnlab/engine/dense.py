"""Dense (fully connected) layers, flatten, and the matrix multiply with its epilogue that they
and the convolutions' GEMMs share (:func:`linear`).

Shapes::

    x       (N, D_in)
    kernel  (D_in, D_out)   Keras layout
    bias    (D_out,)
    out     (N, D_out)
"""

from __future__ import annotations

import numpy as np

from cnnlab.engine import compiled
from cnnlab.engine.arrays import array_module
from cnnlab.engine.windows import column_sums, transposed_product


def linear(a, b, bias, relu: bool, out):
    """``out (M, F) = a (M, K) @ b (K, F)``, then ``+= bias (F,)`` (None: none), then
    ``max(out, 0)`` if ``relu``; ``out`` written in place. The compiled kernel
    (``dense_kernels.matmul``: blocks held in registers, the epilogue run on them before they
    are stored) where :func:`compiled_linear` takes the arrays; else the reference, BLAS's
    product and then :func:`add_bias`."""
    kernels = compiled_linear(a, b, bias, out)
    if kernels is not None:
        # no bias: a 1-D array it never reads, so that both cases run one compiled signature
        kernels.matmul(a, b, b.reshape(-1) if bias is None else bias, bias is not None, relu,
                       out)
        return out
    array_module(a, b).matmul(a, b, out=out)
    add_bias(out, bias, relu)
    return out


#: the fewest rows of ``a`` the compiled product takes: below, its fixed cost (packing ``b``,
#: the call) outweighs its gain; (64, 64) x (64, 64) took 12 us against OpenBLAS's 6
LINEAR_MIN_ROWS = 256


def compiled_linear(a, b, bias, out):
    """The compiled kernels' module if :func:`linear` runs them on these arrays, else None:
    :func:`linear_kernels` takes them, ``a`` has at least ``LINEAR_MIN_ROWS`` rows and no fewer
    than ``b`` has columns (the kernel's loop order, ``dense_kernels.matmul``), and all three
    are C-contiguous. The shapes are asked first: a small product (a Dense layer's batch)
    never imports Numba."""
    rows = a.shape[0]
    if rows < LINEAR_MIN_ROWS or rows < b.shape[1] or a.shape[1] < 1:
        return None
    kernels = linear_kernels(out.dtype, b.shape[1], a, b, bias, out)
    if kernels is None \
            or not (a.flags.c_contiguous and b.flags.c_contiguous and out.flags.c_contiguous):
        return None
    return kernels


def linear_kernels(dtype, features: int, *arrays):
    """The compiled kernels' module if :func:`linear` could run them on ``features`` output
    columns of ``dtype`` (a float dtype they take, at least one 64-byte vector's worth) and on
    ``arrays`` (NumPy arrays of that dtype; None skipped), else None. A caller that adds the
    bias some other way where there are none (im2col's folded bias) asks this first."""
    arrays = [array for array in arrays if array is not None]
    kernels = compiled.module("dense_kernels", *arrays)
    if kernels is None or dtype not in compiled.KERNEL_DTYPES \
            or features < kernels.VECTOR_BYTES // dtype.itemsize:
        return None
    for array in arrays:
        if array.dtype != dtype:
            return None
    return kernels


def add_bias(out, bias, relu: bool) -> None:
    """The reference epilogue of a GEMM's output ``out (..., F)``, in place: ``out += bias (F,)``
    (None: none), then ``max(out, 0)`` if ``relu``. Both in one compiled pass
    (``activations_kernels.bias_relu``) where they run together on one float dtype, as at
    inference after a folded BatchNormalization; two passes otherwise."""
    if bias is not None and relu and out.dtype == bias.dtype and out.flags.c_contiguous \
            and out.dtype in compiled.KERNEL_DTYPES:
        kernels = compiled.module("activations_kernels", out, bias)
        if kernels is not None:
            kernels.bias_relu(out.reshape(-1, out.shape[-1]), bias)
            return
    if bias is not None:
        out += bias
    if relu:
        array_module(out).maximum(out, 0, out=out)


def dense_forward(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None):
    """``out = x @ kernel + bias`` (:func:`linear`). Returns ``(out (N, D_out), cache)``."""
    xp = array_module(x, kernel)
    out = xp.empty((x.shape[0], kernel.shape[1]), dtype=xp.result_type(x, kernel))
    linear(x, kernel, bias, False, out)               # (N, D_out)
    return out, (x, kernel, bias is not None)


def dense_backward(grad_out: np.ndarray, cache, need_input_grad: bool = True):
    """Returns ``(grad_x (N, D_in) or None, grad_kernel (D_in, D_out), grad_bias (D_out,) or None)``."""
    x, kernel, has_bias = cache
    grad_kernel = transposed_product(x, grad_out)     # (D_in, D_out)
    grad_bias = column_sums(grad_out) if has_bias else None          # (D_out,)
    # (kernel @ grad_out^T)^T is the same product, but BLAS runs that shape faster: 1.44 ms
    # instead of 1.80 ms for the article's Dense(1000) at a shard of 64 (the result is a view)
    grad_x = (kernel @ grad_out.T).T if need_input_grad else None  # (N, D_in)
    return grad_x, grad_kernel, grad_bias


def flatten_forward(x: np.ndarray):
    """``(N, H, W, C) -> (N, H*W*C)`` in row-major (H, W, C) order, as Keras flattens NHWC."""
    return x.reshape(x.shape[0], -1), x.shape


def flatten_backward(grad_out: np.ndarray, x_shape) -> np.ndarray:
    """``(N, H*W*C) -> (N, H, W, C)``."""
    return grad_out.reshape(x_shape)
