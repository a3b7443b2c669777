"""The window arithmetic every sliding op shares: padding, one kernel tap's slice, im2col and
its adjoint col2im (compiled in ``windows_kernels``), column sums, and batch chunks under a
memory budget. Convolution, depthwise
convolution, pooling, resampling, the frequency and Winograd paths, Dense and BatchNorm import it
from here, so none of them depends on another's algorithm.

Shapes (letters defined in ``cnnlab.engine``): images ``(N, H, W, C)``, padded ``(N, Hp, Wp, C)``,
windows ``(N, Ho, Wo, KH, KW, C)``. Window ``(y, x)`` starts at padded pixel ``(y*sh, x*sw)``; its
tap ``(i, j)`` reads pixel ``(y*sh + i*dh, x*sw + j*dw)`` (stride s, dilation d).
"""

from __future__ import annotations

import numpy as np

from cnnlab.engine import compiled
from cnnlab.engine.arrays import array_module
from cnnlab.engine.shapes import Pads, output_hw


def pad_images(x: np.ndarray, pads: Pads, value: float = 0.0) -> np.ndarray:
    """Zero padding (or ``value``): ``(N, H, W, C) -> (N, H + top + bottom, W + left + right, C)``.

    Padding lets the kernel centre sit on border pixels, so 'same' convolutions keep the size.
    Written as five slice assignments rather than ``np.pad`` (:func:`pad_images_reference`,
    tested equal), whose general machinery costs more than the copy on small images: ResNet-20's
    batch-1 latency in ``benchmarks/compare.py`` went from 3.84 to 3.23 ms with it.
    """
    (top, bottom), (left, right) = pads
    if top == bottom == left == right == 0:
        return x
    n, h, w, c = x.shape
    out = array_module(x).empty((n, top + h + bottom, left + w + right, c), dtype=x.dtype)
    out[:, :top] = value
    out[:, top + h:] = value
    out[:, top:top + h, :left] = value
    out[:, top:top + h, left + w:] = value
    out[:, top:top + h, left:left + w] = x
    return out


def window_sees_ink(x: np.ndarray, pads: Pads, kh: int, kw: int) -> np.ndarray:
    """``x (N, H, W, C)`` -> ``(N, Ho, Wo)`` bool, for a stride-1 ``kh x kw`` convolution of ``x``
    padded by ``pads``: True where some value of the window is non-zero (an OR over the window,
    one axis at a time). Where it is False, direct convolution gives exactly the bias; the
    frequency domain and Winograd give the bias plus rounding noise (~1e-17), which a ReLU or
    max pool after them would put on the other side of the kink at 0, or among tied values,
    from where im2col and PyTorch put it. Those paths write the exact value there."""
    # the sum of |x| over channels is non-zero exactly when one value is (a sum of non-negative
    # numbers cannot round to 0; a NaN makes it NaN, which counts as ink, so NaN still spreads
    # as in direct convolution); as a matrix-vector product it is 2x faster than any()
    ink = pad_images(((np.abs(x) @ np.ones(x.shape[3], dtype=x.dtype)) != 0)[..., None],
                     pads, False)[..., 0]                                   # (N, Hp, Wp)
    ho, wo = output_hw(ink.shape[1:], (kh, kw), (1, 1), ((0, 0), (0, 0)))
    rows = ink[:, :ho].copy()
    for i in range(1, kh):
        rows |= ink[:, i:i + ho]
    seen = rows[:, :, :wo].copy()
    for j in range(1, kw):
        seen |= rows[:, :, j:j + wo]
    return seen


def pad_images_reference(x: np.ndarray, pads: Pads, value: float = 0.0) -> np.ndarray:
    """:func:`pad_images` by ``np.pad``."""
    (top, bottom), (left, right) = pads
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=value)


def sliding_windows(xp: np.ndarray, window: tuple[int, int], strides: tuple[int, int],
                    dilation: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """Every window the kernel visits, as a view (no copy): ``(N, Ho, Wo, KH, KW, C)``.

    Stride is where the kernel jumps: output row ``o`` starts at padded row ``o * sh``.
    Dilation is the gap between kernel taps: tap ``i`` reads row ``o * sh + i * dh``.
    """
    n, _, _, c = xp.shape
    s_n, s_h, s_w, s_c = xp.strides
    shape = (n, out_hw[0], out_hw[1], window[0], window[1], c)
    steps = (s_n, s_h * strides[0], s_w * strides[1], s_h * dilation[0], s_w * dilation[1], s_c)
    module = array_module(xp)
    if module is not np:             # CuPy's as_strided has no read-only views
        return module.lib.stride_tricks.as_strided(xp, shape, steps)
    return np.lib.stride_tricks.as_strided(xp, shape=shape, strides=steps, writeable=False)


def tap_slices(i: int, j: int, strides: tuple[int, int], dilation: tuple[int, int],
               out_hw: tuple[int, int]) -> tuple[slice, slice]:
    """The rows and columns of the padded input that tap ``(i, j)`` reads for every window:
    ``xp[:, rows, cols]`` is ``(N, Ho, Wo, C)``, that tap of all windows at once (a view)."""
    (sh, sw), (dh, dw), (ho, wo) = strides, dilation, out_hw
    return (slice(i * dh, i * dh + sh * (ho - 1) + 1, sh),
            slice(j * dw, j * dw + sw * (wo - 1) + 1, sw))


def im2col(x: np.ndarray, kernel_hw: tuple[int, int], strides: tuple[int, int], pads: Pads,
           dilation: tuple[int, int] = (1, 1), ones_column: bool = False,
           out: np.ndarray | None = None) -> np.ndarray:
    """Copy every window into one row: ``(N, H, W, C) -> cols (N, Ho, Wo, KH*KW*C [+ 1])``.

    ``ones_column`` appends a column of ones, so that ``cols @ [kernel; bias]`` adds the bias
    inside the matrix multiply instead of in another pass over the output. ``out``: a buffer of
    the right shape to write into (reused across steps, it saves allocating and page-faulting
    the largest array of the layer). With compiled kernels the copy is one pass that takes
    padding as bounds (``windows_kernels.im2col``): no padded copy of ``x`` first.
    """
    n, h, w, c = x.shape
    ho, wo = output_hw((h, w), kernel_hw, strides, pads, dilation)
    k = kernel_hw[0] * kernel_hw[1] * c
    shape = (n, ho, wo, k + ones_column)
    xm = array_module(x)
    if out is None or out.shape != shape or out.dtype != x.dtype or array_module(out) is not xm:
        out = xm.empty(shape, dtype=x.dtype)
        if ones_column:
            out[..., k] = 1
    kernels = compiled.module("windows_kernels", x, out)
    if kernels is not None and x.dtype in compiled.KERNEL_DTYPES:
        return kernels.im2col(np.ascontiguousarray(x), *kernel_hw, *strides, *dilation,
                              pads[0][0], pads[1][0], out)
    xp = pad_images(x, pads)                                          # (N, Hp, Wp, C)
    windows = sliding_windows(xp, kernel_hw, strides, dilation, (ho, wo))  # (N, Ho, Wo, KH, KW, C)
    xm.copyto(out[..., :k].reshape(n, ho, wo, *kernel_hw, c), windows)   # the im2col copy
    return out


def col2im(grad_windows: np.ndarray, input_shape: tuple[int, ...], strides: tuple[int, int],
           pads: Pads, dilation: tuple[int, int] = (1, 1),
           out: np.ndarray | None = None) -> np.ndarray:
    """Adjoint of :func:`sliding_windows`: add ``(N, Ho, Wo, KH, KW, C)`` back onto ``(N, H, W, C)``.

    One strided add per kernel tap: tap ``(i, j)`` of every window lands on padded pixels
    ``(o_h * sh + i * dh, o_w * sw + j * dw)``. Overlapping windows add up, as the chain rule says.
    The padding's share is cut away at the end: padded zeros have no gradient to pass on.
    With compiled kernels, one gather pass instead (``windows_kernels``, the same sums in the
    same order). ``out``: a C-contiguous ``(N, H, W, C)`` array to write into.
    """
    kernels = compiled.module("windows_kernels", grad_windows)
    if kernels is not None and grad_windows.dtype in compiled.KERNEL_DTYPES:
        if out is None:
            out = np.empty(input_shape, grad_windows.dtype)
        return kernels.col2im(np.ascontiguousarray(grad_windows), *strides, *dilation,
                              pads[0][0], pads[1][0], out)
    grad_x = col2im_reference(grad_windows, input_shape, strides, pads, dilation)
    if out is None:
        return grad_x
    out[...] = grad_x
    return out


def col2im_reference(grad_windows: np.ndarray, input_shape: tuple[int, ...],
                     strides: tuple[int, int], pads: Pads,
                     dilation: tuple[int, int] = (1, 1)) -> np.ndarray:
    """:func:`col2im` as NumPy strided adds, one per tap."""
    n, h, w, c = input_shape
    _, ho, wo, kh, kw, _ = grad_windows.shape
    (top, bottom), (left, right) = pads
    grad_xp = array_module(grad_windows).zeros((n, h + top + bottom, w + left + right, c),
                                              dtype=grad_windows.dtype)
    for i in range(kh):
        for j in range(kw):
            rows, cols = tap_slices(i, j, strides, dilation, (ho, wo))
            grad_xp[:, rows, cols, :] += grad_windows[:, :, :, i, j, :]
    return grad_xp[:, top:top + h, left:left + w, :]                  # (N, H, W, C)


def transposed_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a.T @ b`` for ``a (M, K)`` and ``b (M, F)``: ``(K, F)``, a weight gradient (rows of
    inputs against rows of output gradients). NumPy's matmul takes a scalar loop when M is 1
    (one image through a Dense layer): 1.5 ms for the article's 9216 x 128 kernel, against
    0.15 ms through BLAS once a row of zeros is added, which adds 0 to each value (only a -0
    turns into +0). Matmul, not ``np.dot``: for the stem's 65,536 x 28 against 65,536 x 16
    matmul holds the GIL through part of the product (a Python thread beside it ran at 0.46
    of its speed, 0.99 beside ``np.dot``), but ``np.dot`` took the article's Dense kernel
    gradient (9216 x 128) at 2-16 images from 166-305 to 505-583 us (best of 7 x 50 calls)."""
    kernels = compiled_transposed_product(a, b)
    if kernels is not None:
        return kernels.transposed_matmul(a, b, np.empty((a.shape[1], b.shape[1]), a.dtype))
    if a.shape[0] == 1 and array_module(a, b) is np:
        a, b = np.concatenate([a, np.zeros_like(a)]), np.concatenate([b, np.zeros_like(b)])
    return a.T @ b


#: the fewest rows (M) :func:`transposed_product` gives the compiled kernel
#: (``dense_kernels.transposed_matmul``); fewer (a Dense layer's batch) stay with BLAS
TRANSPOSED_MIN_ROWS = 256


def compiled_transposed_product(a, b):
    """The compiled kernels' module if :func:`transposed_product` runs them on ``a`` and ``b``:
    NumPy arrays, C-contiguous, of one float dtype, with at least ``TRANSPOSED_MIN_ROWS`` rows
    and one 64-byte vector of ``b``'s columns; else None. One core, float32, best of 20, G
    multiply-adds a second, OpenBLAS's ``a.T @ b`` against the kernel: (M, K) x (M, F) =
    (65536, 27) x (65536, 16), ResNet-20's stem, 26.0 / 37.6; (36864, 25) x 32, the article's
    conv1, 33.0 / 39.8; (16384, 144) x 32, a stride-2 layer, 28.2 / 43.2; (16384, 64) x 128, a
    1x1 layer, 33.8 / 36.7; (4096, 256) x 256, 44.7 / 44.8."""
    if a.ndim != 2 or a.shape[0] < TRANSPOSED_MIN_ROWS or a.dtype != b.dtype \
            or a.dtype not in compiled.KERNEL_DTYPES:
        return None
    kernels = compiled.module("dense_kernels", a, b)
    if kernels is None or b.shape[1] * b.dtype.itemsize < kernels.VECTOR_BYTES \
            or not (a.flags.c_contiguous and b.flags.c_contiguous):
        return None
    return kernels


#: rows per block in :func:`column_sums`
SUM_BLOCK = 256


def column_sums(rows: np.ndarray, dtype=None) -> np.ndarray:
    """``(M, F) -> (F,)`` in ``dtype`` (default: the rows'): blocks of ``SUM_BLOCK`` rows summed
    by BLAS (``ones @ block``, all blocks in one batched product), then the M / 256 block sums
    added in float64. The error grows like (256 + M/256) roundings instead of M for one
    sequential GEMV (65,536 float32 rows: 1e-8 relative instead of 2e-6), and it is faster than
    the GEMV and ~7x faster than ``rows.sum(axis=0)``, which adds the rows one by one."""
    xp = array_module(rows)
    m, f = rows.shape
    whole = m - m % SUM_BLOCK
    if whole == 0:
        return (xp.ones(m, dtype=rows.dtype) @ rows).astype(dtype or rows.dtype, copy=False)
    blocks = xp.ones(SUM_BLOCK, dtype=rows.dtype) @ rows[:whole].reshape(-1, SUM_BLOCK, f)
    total = blocks.sum(axis=0, dtype=xp.float64)                             # (F,)
    if whole < m:
        total += xp.ones(m - whole, dtype=rows.dtype) @ rows[whole:]
    return total.astype(dtype or rows.dtype, copy=False)


#: Largest im2col matrix built at once. A bigger batch is convolved in chunks of images, so a
#: 224x224 batch needs ~64 MiB per conv layer for cols, not gigabytes.
COLS_BUDGET_BYTES = 64 * 2**20


def batch_chunks(n: int, bytes_per_image: int, budget: int | None = None) -> list[slice]:
    """Split ``range(n)`` into the fewest equal-ish runs whose buffers fit ``budget``."""
    budget = COLS_BUDGET_BYTES if budget is None else budget
    per_chunk = max(1, budget // max(bytes_per_image, 1))
    count = -(-n // per_chunk)
    size = -(-n // count)
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]
