"""Convolution in the frequency domain: the same answer as im2col + GEMM with about half the
arithmetic, for small maps and large kernels (the article's second layer: 12 x 12 maps, 5 x 5
kernels, 32 -> 64 channels).

Why it is cheaper. Sliding a KH x KW kernel costs KH*KW multiply-adds per output pixel and channel
pair. After a discrete Fourier transform (DFT), correlation becomes one complex multiply per
frequency: the per-pair cost no longer grows with the kernel. The transforms themselves are paid
once per map, not once per channel pair. For the article's conv2 a training step (forward and
both gradients) needs 2.9 M multiply-adds per image instead of 9.8 M.

How the transforms are done. As small DFT matrices applied with matrix multiplies over all the
maps of the batch at once (BLAS): along W, then along H. The maps are tiny, and NumPy's FFT loops
over tiny transforms one by one (measured for a batch of 64 of the article's maps: 2.3 ms for
``np.fft.rfft2``, 1.2 ms for one dense 2-D DFT matrix, less again for the two 1-D stages).

Shapes. ``P = Hp*Wp`` pixels of the zero-padded input, ``S = Hp*(Wp//2 + 1)`` frequencies (a real
map's spectrum is symmetric, so half of it is kept). A spectrum is kept "stacked", ``(2S, N*C)``:
the real parts, then the imaginary parts; seen as ``(S, N, C)`` it is one ``(N, C)`` matrix per
frequency, so the per-frequency complex products are batched real GEMMs (four per product).

    forward   X = DFT(x),  K = DFT(kernel zero-padded to Hp x Wp)
              Y[s] = X[s] @ conj(K[s])                       (S, N, C) @ (S, C, F)
              out  = IDFT(Y) at the Ho x Wo valid positions
    backward  G = DFT(grad_out zero-padded to Hp x Wp)
              grad_kernel = IDFT(X[s]^T @ conj(G[s])) at the KH x KW taps
              grad_x      = IDFT(G[s] @ K[s]^T) at every pixel

A DFT treats a map as periodic, so a window could wrap around the edge. None does here: a valid
output reads pixels ``p .. p+KH-1 <= Hp-1``; the kernel gradient pairs ``x[p+i]`` with
``grad_out[p]``, ``p+i <= Hp-1``; the input gradient reads ``grad_out[s-i]``, and where ``s-i`` wraps
it lands on rows ``>= Ho``, where the zero-padded ``grad_out`` is zero.

Only stride 1 and dilation 1 (the transform identities need every offset). ``conv.choose``
decides from ``step_work``; ``cnnlab.engine.conv`` keeps the im2col path as the reference.
With the compiled kernels, one-pass F(4x4, 5x5) Winograd has taken the article's conv2 from
this path wherever a shard has 12 tiles or more, in training since session 35
(``conv.ONE_PASS_MIN_TILES``: 9.2 ms against 15.9 for a 64-image step); this path keeps what
the cost model gives it below that, and the reference's 5x5 layers.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from cnnlab.engine.arrays import derived
from cnnlab.engine.shapes import Pads, output_hw
from cnnlab.engine.windows import column_sums, pad_images, window_sees_ink

#: the maps here are padded before they are transformed
UNPADDED = ((0, 0), (0, 0))

#: largest padded map (pixels) taken to the frequency domain: the DFT matrices and the
#: per-frequency products grow with it (measured faster than im2col up to 34 x 34)
MAX_PIXELS = 1600


class SpectralCache(NamedTuple):
    """What the backward pass needs: both spectra, and the shapes."""
    x_spectrum: np.ndarray        # (2S, N*C) stacked: real parts, then imaginary parts
    k_spectrum: np.ndarray        # (2S, C*F)
    x_shape: tuple                # (N, H, W, C) before padding
    padded_hw: tuple              # (Hp, Wp)
    kernel_hw: tuple              # (KH, KW)
    pads: Pads
    has_bias: bool


def _transform_cost(hp: int, wp: int, rows: int, cols: int) -> int:
    """Multiply-adds to take one map's ``rows x cols`` corner to its spectrum, or back."""
    half = wp // 2 + 1
    return rows * 2 * half * cols + 4 * hp * rows * half


def step_work(batch: int, padded_hw, kernel_hw, channels: int, filters: int,
              gradients: str = "all"):
    """``(multiply-adds, elements moved, NumPy calls)`` of the forward pass and the ``gradients``
    after it (``conv.GRADIENTS``) in the frequency domain; ``conv.choose`` turns them
    into seconds. For the article's conv2: 2.9 M multiply-adds per image instead of
    im2col's 9.8 M, plus 8.3 M per batch for the kernel's transforms. None where the path does
    not apply, or is not taken (an input gradient's own convolution)."""
    hp, wp = padded_hw
    kh, kw = kernel_hw
    if hp * wp > MAX_PIXELS or hp < kh or wp < kw:
        return None
    ho, wo = output_hw((hp, wp), (kh, kw), (1, 1), UNPADDED)
    frequencies = hp * (wp // 2 + 1)
    spectra = 2 * frequencies * (channels + filters)             # one image's, in and out
    product = 4 * frequencies * channels * filters               # one complex product
    x_in, maps_out = _transform_cost(hp, wp, hp, wp), _transform_cost(hp, wp, ho, wo)
    if gradients == "input":
        # An input gradient's own convolution (its step ran im2col or Winograd) is not taken
        # here: its flipped kernel's spectrum would serve one call, and that transform is bound
        # by the values it writes, not by the multiply-adds it would be priced by. The
        # article's conv2 input gradient, one core, a new kernel each call: 0.76 / 0.74 / 1.03
        # ms here at batches 1 / 2 / 4 (priced 0.47 / 0.56 / 0.74), against 0.19 / 0.41 / 0.80
        # ms on im2col. Where this path wins a step, its backward takes the input gradient
        # itself, from the spectra it kept.
        return None
    kernel = channels * filters * _transform_cost(hp, wp, kh, kw)
    if gradients == "none":               # x in, out back, one product; the kernel's is kept
        return batch * (channels * x_in + filters * maps_out + product), batch * spectra, 25
    if gradients == "kernel":             # + grad_out in, the kernel gradient's product
        return (batch * (channels * x_in + 2 * filters * maps_out + 2 * product) + 2 * kernel,
                2 * batch * spectra, 45)
    return (batch * (2 * channels * x_in + 2 * filters * maps_out + 3 * product) + 2 * kernel,
            3 * batch * spectra, 60)


# --- the transforms: a DFT along W, then along H, each one matrix multiply ---------------------
# A 2-D DFT is a 1-D DFT of every row followed by a 1-D DFT of every column. Done in two GEMMs it
# costs (for 12 x 12 maps) 6,048 multiply-adds per map instead of 24,192 with one dense 2-D DFT
# matrix. Arrays stay "pixels first": a stack of maps is (rows, cols, M), M = maps (N*C), and a
# stacked spectrum is (2S, M): the real parts of the S = Hp*V frequencies (u, v), then the
# imaginary parts, V = Wp//2 + 1 (the half spectrum of a real map).
def _angles(n_out: int, n_in: int, period: int) -> np.ndarray:
    return 2 * np.pi * np.outer(np.arange(n_out), np.arange(n_in)) / period


@functools.lru_cache(maxsize=64)
def _along_w(wp: int, cols: int, dtype: str) -> np.ndarray:
    """``(2V, cols)``: real then imaginary parts of each row's DFT over its first ``cols`` pixels."""
    angle = _angles(wp // 2 + 1, cols, wp)
    return np.concatenate([np.cos(angle), -np.sin(angle)]).astype(dtype)


@functools.lru_cache(maxsize=64)
def _along_h(hp: int, rows: int, dtype: str) -> np.ndarray:
    """``(2Hp, 2*rows)``: the complex DFT down the columns, over the first ``rows`` rows; input
    rows ordered (row, re/im), output rows (re/im, u). ``(a + ib) e^-it = a cos t + b sin t +
    i (b cos t - a sin t)``."""
    cos, sin = np.cos(_angles(hp, rows, hp)), np.sin(_angles(hp, rows, hp))
    out = np.empty((2, hp, rows, 2))
    out[0, :, :, 0], out[0, :, :, 1] = cos, sin
    out[1, :, :, 0], out[1, :, :, 1] = -sin, cos
    return out.reshape(2 * hp, 2 * rows).astype(dtype)


@functools.lru_cache(maxsize=64)
def _back_along_h(hp: int, rows: int, dtype: str) -> np.ndarray:
    """``(2*rows, 2Hp)``: the inverse complex DFT down the columns, for the first ``rows`` rows;
    input rows (re/im, u), output rows (row, re/im). ``(a + ib) e^it = a cos t - b sin t +
    i (a sin t + b cos t)``."""
    cos, sin = np.cos(_angles(rows, hp, hp)), np.sin(_angles(rows, hp, hp))
    out = np.empty((rows, 2, 2, hp))
    out[:, 0, 0], out[:, 0, 1] = cos, -sin
    out[:, 1, 0], out[:, 1, 1] = sin, cos
    return out.reshape(2 * rows, 2 * hp).astype(dtype)


@functools.lru_cache(maxsize=64)
def _back_along_w(hp: int, wp: int, cols: int, dtype: str) -> np.ndarray:
    """``(cols, 2V)``: each row's real inverse DFT from its half spectrum, at the first ``cols``
    pixels, with the 1/(Hp*Wp) of the inverse. A frequency whose mirror image was dropped counts
    twice; the zero (and, for even Wp, the middle) one has no mirror and counts once."""
    v = np.arange(wp // 2 + 1)
    weight = np.where((v == 0) | (2 * v == wp), 1.0, 2.0) / (hp * wp)
    angle = _angles(cols, wp // 2 + 1, wp)
    return np.concatenate([weight * np.cos(angle), -weight * np.sin(angle)], axis=1).astype(dtype)


def _dft(maps: np.ndarray, hp: int, wp: int) -> np.ndarray:
    """Maps ``(rows, cols, M)``, zero beyond them in Hp x Wp -> stacked spectrum ``(2S, M)``."""
    rows, cols, m = maps.shape
    name = maps.dtype.name
    by_row = np.matmul(_along_w(wp, cols, name), maps)                      # (rows, 2V, M)
    return (_along_h(hp, rows, name) @ by_row.reshape(2 * rows, -1)).reshape(-1, m)   # (2S, M)


def _inverse_dft(stacked: np.ndarray, hp: int, wp: int, rows: int, cols: int) -> np.ndarray:
    """Stacked spectrum ``(2S, M)`` -> the real maps' first ``rows x cols`` pixels ``(rows, cols, M)``."""
    m = stacked.shape[1]
    name = stacked.dtype.name
    by_row = _back_along_h(hp, rows, name) @ stacked.reshape(2 * hp, -1)   # (2*rows, V*M)
    return np.matmul(_back_along_w(hp, wp, cols, name),
                     by_row.reshape(rows, -1, m))                           # (rows, cols, M)


def _parts(stacked: np.ndarray, rows: int, cols: int):
    """A stacked spectrum ``(2S, rows*cols)`` as its real and imaginary parts, each a stack of
    ``(rows, cols)`` matrices, one per frequency: ``(S, rows, cols)`` views, no copy."""
    half = stacked.shape[0] // 2
    return stacked[:half].reshape(half, rows, cols), stacked[half:].reshape(half, rows, cols)


def _complex_matmul(a, b, conjugate_b: bool) -> np.ndarray:
    """Per frequency, ``(ar + i ai) @ (br +- i bi)`` with four real GEMMs, straight into a stacked
    spectrum ``(2S, rows*cols)``. ``a`` and ``b`` are ``(real, imaginary)`` pairs of stacks (views,
    transposed views allowed). The same products as a complex matmul, without converting to
    and from complex arrays (which cost as much as the products: 1.7 ms against 0.9 ms for the
    article's forward product)."""
    (ar, ai), (br, bi) = a, b                            # (S, A, K) and (S, K, B)
    out = np.empty((2, ar.shape[0], ar.shape[1], br.shape[2]),
                   dtype=np.result_type(ar, br))         # (2, S, A, B): real, imaginary
    np.matmul(ar, br, out=out[0])
    np.matmul(ai, br, out=out[1])
    if conjugate_b:      # (ar + i ai)(br - i bi) = ar br + ai bi + i (ai br - ar bi)
        out[0] += ai @ bi
        out[1] -= ar @ bi
    else:                # (ar + i ai)(br + i bi) = ar br - ai bi + i (ai br + ar bi)
        out[0] -= ai @ bi
        out[1] += ar @ bi
    return out.reshape(2 * ar.shape[0], -1)             # (2S, A*B)


def _transposed(parts):
    """``(S, A, B)`` stacks -> ``(S, B, A)`` views (BLAS reads them transposed, no copy)."""
    return tuple(p.transpose(0, 2, 1) for p in parts)


def _pixels_first(a: np.ndarray) -> np.ndarray:
    """``(N, H, W, C) -> (H*W, N*C)``: one column per map, ready for a DFT matrix."""
    n, h, w, c = a.shape
    return np.ascontiguousarray(a.transpose(1, 2, 0, 3)).reshape(h * w, n * c)


def _images_first(a: np.ndarray, h: int, w: int, n: int, c: int) -> np.ndarray:
    """``(H*W, N*C) -> (N, H, W, C)``."""
    return np.ascontiguousarray(a.reshape(h, w, n, c).transpose(2, 0, 1, 3))


# --- forward and backward ------------------------------------------------------------------------
def conv2d_forward(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, pads: Pads,
                   workspace: dict | None = None):
    """Stride-1 ``out[n, y, x, f] = bias[f] + sum_{i, j, c} xp[n, y+i, x+j, c] * kernel[i, j, c, f]``.

    ``x (N, H, W, C)``, ``kernel (KH, KW, C, F)`` -> ``(out (N, Ho, Wo, F), SpectralCache)``.
    ``workspace``: a dict the caller keeps; the kernel's spectrum is reused from it while the
    kernel is unchanged (inference: every call after the first saves the kernel's transform).

    >>> x, kernel = np.ones((16, 12, 12, 32)), np.ones((5, 5, 32, 64))
    >>> out, cache = conv2d_forward(x, kernel, None, ((0, 0), (0, 0)))
    >>> out.shape, cache.x_spectrum.shape       # 2S = 2 * 12 * 7 rows, N*C columns
    ((16, 8, 8, 64), (168, 512))
    >>> round(float(out[0, 0, 0, 0]), 6)        # 5 * 5 * 32 ones
    800.0
    """
    kh, kw, c, f = kernel.shape
    xp = pad_images(x, pads)
    n, hp, wp, _ = xp.shape
    ho, wo = output_hw((hp, wp), (kh, kw), (1, 1), UNPADDED)
    dtype = np.result_type(x, kernel)
    x_spectrum = _dft(_pixels_first(xp.astype(dtype, copy=False)).reshape(hp, wp, -1),
                      hp, wp)                                                       # (2S, N*C)
    k_spectrum = _kernel_spectrum(kernel.astype(dtype, copy=False), hp, wp, workspace)
    out_spectrum = _complex_matmul(_parts(x_spectrum, n, c), _parts(k_spectrum, c, f),
                                   conjugate_b=True)                                # (2S, N*F)
    out = _images_first(_inverse_dft(out_spectrum, hp, wp, ho, wo), ho, wo, n, f)   # (N, Ho, Wo, F)
    # A window of zeros (MNIST is mostly background) gives exactly the bias by direct
    # convolution, but the bias plus rounding noise (~1e-17) here. Where a ReLU or a max pool
    # follows, that noise would choose a different side of the kink at 0 or a different winner
    # among tied values than im2col (and PyTorch) do; so such outputs get their exact value.
    out[~window_sees_ink(x, pads, kh, kw)] = 0
    if bias is not None:
        out += bias
    return out, SpectralCache(x_spectrum, k_spectrum, x.shape, (hp, wp), (kh, kw), pads,
                              bias is not None)


def _kernel_spectrum(kernel: np.ndarray, hp: int, wp: int, workspace: dict | None) -> np.ndarray:
    """DFT of the kernel zero-padded to Hp x Wp, stacked ``(2S, C*F)``; reused from
    ``workspace`` while the kernel's values are those it was computed from
    (``arrays.derived``)."""
    kh, kw, c, f = kernel.shape
    return derived(workspace, "kernel_spectrum", kernel,
                   lambda: _dft(kernel.reshape(kh, kw, c * f), hp, wp), tag=(hp, wp))


def conv2d_backward(grad_out: np.ndarray, cache: SpectralCache, need_input_grad: bool = True):
    """Gradients of :func:`conv2d_forward` for ``grad_out (N, Ho, Wo, F)``:
    ``(grad_x (N, H, W, C) or None, grad_kernel (KH, KW, C, F), grad_bias (F,) or None)``."""
    x_spectrum, k_spectrum, x_shape, (hp, wp), (kh, kw), pads, has_bias = cache
    n, ho, wo, f = grad_out.shape
    c = x_shape[3]
    grad_spectrum = _dft(_pixels_first(grad_out).reshape(ho, wo, -1), hp, wp)     # (2S, N*F)
    x_parts, g_parts = _parts(x_spectrum, n, c), _parts(grad_spectrum, n, f)
    kernel_spectrum = _complex_matmul(_transposed(x_parts), g_parts,
                                      conjugate_b=True)                             # (2S, C*F)
    grad_kernel = _inverse_dft(kernel_spectrum, hp, wp, kh, kw).reshape(kh, kw, c, f)
    grad_bias = column_sums(grad_out.reshape(-1, f)) if has_bias else None
    if not need_input_grad:
        return None, grad_kernel, grad_bias
    input_spectrum = _complex_matmul(g_parts, _transposed(_parts(k_spectrum, c, f)),
                                     conjugate_b=False)                             # (2S, N*C)
    grad_xp = _images_first(_inverse_dft(input_spectrum, hp, wp, hp, wp),
                            hp, wp, n, c)                                           # (N, Hp, Wp, C)
    (top, _), (left, _) = pads
    return grad_xp[:, top:top + x_shape[1], left:left + x_shape[2], :], grad_kernel, grad_bias
