"""Stride-1 convolution by Winograd's minimal filtering F(m x m, r x r) (Lavin & Gray, 2016).
3x3: F(2x2, 3x3) in NumPy (the reference path), F(4x4, 3x3) with compiled transforms
(``winograd_kernels``) when ``config.kernels()`` is 'numba', in one compiled pass over blocks
of tiles where channels and filters fill a vector (``winograd_fused_kernels``). 5x5:
F(4x4, 5x5) (:func:`cook_toom`), in that one pass, forward and backward
(``conv.ONE_PASS_MIN_CHANNELS``; forced with ``algorithm='winograd'`` elsewhere, the einsum
references run it). ``conv`` chooses.

Shapes (letters defined in ``cnnlab.engine``), for output tiles of m x m and ``alpha = m + r -
1`` (6 for F(4x4, 3x3), 8 for F(4x4, 5x5))::

    x       (N, H, W, C)          kernel (r, r, C, F)          out (N, Ho, Wo, F)
    tiles   T = N * th * tw       th = ceil(Ho / m), tw = ceil(Wo / m): one tile per m x m outputs
    d       (alpha, alpha, T, C)  the patch each tile reads (neighbours overlap by r - 1)
    V       (alpha^2, T, C)       V = B^T d B        the patches in the transform domain
    U       (alpha^2, C, F)       U = G g G^T        the kernel in the transform domain
    M       (alpha^2, T, F)       M[k] = V[k] @ U[k]       alpha^2 GEMMs
    y       (m, m, T, F)          y = A^T M A        the m x m outputs of each tile

Forward and backward side by side::

    forward                                   backward (given grad_y)
    V = B^T d B                               grad_M = A grad_y A^T           (adjoint of A^T . A)
    M[k] = V[k] @ U[k]                        grad_U[k] = V[k]^T @ grad_M[k]
    y = A^T M A                               grad_kernel = G^T grad_U G
                                              grad_x: a stride-1 convolution of grad_out with the
                                              flipped kernel (``conv.transposed_pads``), which is
                                              itself done here

Why: an m x m block of outputs from an alpha x alpha patch needs alpha^2 multiplies per (C, F)
pair instead of r^2 m^2 directly: 2.25x fewer for F(2x2, 3x3), 4x for F(4x4, 3x3), 6.25x for
F(4x4, 5x5); and the products are
GEMMs over all tiles at once. The price is the transforms. In NumPy each row of B^T and A^T is a
pass over arrays larger than the input or output (the tiles overlap), so they cost memory
traffic the GEMMs save in arithmetic; the compiled transforms read each patch once and keep it
in cache, which is what makes the larger tile pay. Where a path pays is measured, not assumed:
``conv.choose`` decides.

Exactness: G has entries 1/2 (F(2x2)) or 1/6, 1/12, 1/24 (F(4x4)), and A^T entries up to 8, so
the products round differently from the direct sum: in float64 the results equal the direct
convolution to ~1e-14 relative; in float32 F(4x4) is ~1e-6 relative, the accuracy oneDNN and
cuDNN accept for it. Padding is zeros in d, and the tiles past the output's edge are cropped.

5x5 kernels: an earlier session measured the three-pass transforms on the article's second
layer (64 images of 12 x 12 x 32 -> 64, forward and both gradients, 1 thread): F(2x2, 5x5)
12.3 ms, F(3x3, 5x5) 9.9 ms, F(4x4, 5x5) 7.1 ms, against 5.2 ms in the frequency domain and
11.7 ms by im2col, so its training stayed with ``fourier``. In one pass, F(4x4, 5x5)'s forward
alone takes 0.90-1.09 ms there against 2.39 (``conv.ONE_PASS_MIN_CHANNELS``); its float32 error
is ~5e-6 of the largest output. With the generated adjoint (:func:`output_adjoint`) for its
kernel gradient, its whole training step at 64 images ('same') took 9.2 ms against the
frequency domain's 15.9 and im2col's 36.3, and the article's network trains by it. Measured and
not adopted: F(6x6, 3x3) (points 0, +-1, +-2, +-1/2): float32 error ~1e-5 relative, twice
F(4x4)'s; but CIFAR-sized maps (32, 16, 8) are not multiples of 6, so its tiles overhang the
output by 27% or more, which takes back its saving (1.78 multiplies an output against 2.25).
"""

from __future__ import annotations

import functools
from fractions import Fraction
from typing import NamedTuple

import numpy as np

from cnnlab.engine import compiled
from cnnlab.engine.shapes import Pads


class Tiling(NamedTuple):
    """F(m x m, 3x3): its output tile ``m`` and matrices ``B^T (alpha, alpha)``, ``G (alpha, 3)``
    and ``A^T (m, alpha)``, ``alpha = m + 2``."""
    m: int
    bt: np.ndarray
    g: np.ndarray
    at: np.ndarray

    @property
    def alpha(self) -> int:
        return len(self.bt)

    @property
    def taps(self) -> int:
        """The kernel's size r of F(m x m, r x r)."""
        return self.alpha - self.m + 1


def cook_toom(m: int, taps: int, points) -> Tiling:
    """F(m x m, taps x taps) from its ``m + taps - 2`` finite interpolation points and infinity
    (Lavin & Gray, 2016), in exact rational arithmetic: for point ``p_j``, ``A^T[i, j] =
    p_j^i``, ``G[j, k] = p_j^k / prod_{l != j} (p_j - p_l)`` and row j of ``B^T`` the
    coefficients of ``prod_{l != j} (x - p_l)``, lowest power first; infinity's column of
    ``A^T`` is ``[0, .., 0, 1]``, its row of ``G`` ``[0, .., 0, 1]`` and its row of ``B^T`` the
    coefficients of ``prod_l (x - p_l)``. ``cook_toom(4, 3, (0, 1, -1, 2, -2))`` is ``F4``."""
    points = [Fraction(p) for p in points]
    alpha = m + taps - 1
    if len(points) != alpha - 1:
        raise ValueError(f"F({m}x{m}, {taps}x{taps}) takes {alpha - 1} finite points")

    def coefficients(roots):                   # prod (x - root), lowest power first
        poly = [Fraction(1)]
        for root in roots:
            poly = [a - root * b for a, b in zip([Fraction(0)] + poly, poly + [Fraction(0)])]
        return poly + [Fraction(0)] * (alpha - len(poly))

    bt = [coefficients(points[:j] + points[j + 1:]) for j in range(alpha - 1)]
    bt.append(coefficients(points))
    g = [[p ** k / np.prod([p - q for q in points if q != p]) for k in range(taps)]
         for p in points] + [[0] * (taps - 1) + [1]]
    at = [[p ** i for p in points] + [int(i == m - 1)] for i in range(m)]
    return Tiling(m, *(np.array(matrix, float) for matrix in (bt, g, at)))


F2 = Tiling(2, np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], float),
            np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]),
            np.array([[1, 1, 1, 0], [0, 1, -1, -1]], float))
# points 0, 1, -1, 2, -2 and infinity (Lavin & Gray's choice, as oneDNN's and cuDNN's)
F4 = Tiling(4, np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], float),
            np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                      [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
            np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                      [0, 1, -1, 8, -8, 1]], float))


#: F(4x4, 5x5): points 0, +-1, +-2, +-1/2 and infinity; float32 error 4.2e-6 relative on
#: random 32-channel data against 2.4e-6 for F4 (one-off script), run by the one-pass kernels
#: only (``winograd_fused_kernels``)
F4_5 = cook_toom(4, 5, (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2)))


def tiling() -> Tiling:
    """The tiling the next convolution uses: F(4x4) where its transforms are compiled, else
    F(2x2), whose NumPy transforms are the cheaper ones to run as NumPy passes."""
    return F4 if compiled.module("winograd_kernels") is not None else F2


def step_work(batch: int, out_hw, channels: int, filters: int, gradients: str = "all",
              m: int = 2):
    """``(multiply-adds, elements moved, NumPy calls)`` of the forward pass and the
    ``gradients`` after it (``conv.GRADIENTS``; the input gradient is another Winograd
    convolution) with tiles of ``m x m``; ``conv.choose`` turns them into seconds."""
    th, tw = tile_counts(out_hw, m)
    points = (m + 2) ** 2 * batch * th * tw
    products = points * channels * filters
    # NumPy calls, counted in the code: F(2x2) makes a pass per row of each transform; F(4x4)
    # one kernel call per transform, around it the kernel transform's GEMMs and the buffers
    # (forward 15; the kernel gradient 12 more; the input gradient, a forward, 16 more)
    calls = (25, 45, 70) if m == 2 else (15, 27, 43)
    # the kernel's transforms (U forward, grad_U back, and the input gradient's flipped U): a
    # few passes over (alpha^2, C, F) each, whatever the batch, which is what small batches feel
    kernel = 3 * (m + 2) ** 2 * channels * filters
    if gradients in ("none", "input"):    # U is transformed at every call
        return products, points * (channels + filters) * 3 + kernel, calls[0]
    if gradients == "kernel":
        return 2 * products, points * (channels + 2 * filters) * 3 + 2 * kernel, calls[1]
    # each pass reads two arrays and writes one
    return 3 * products, points * (2 * channels + 3 * filters) * 3 + 3 * kernel, calls[2]


def tile_counts(out_hw, m: int = 2) -> tuple[int, int]:
    return -(-out_hw[0] // m), -(-out_hw[1] // m)


def kernel_transform(kernel: np.ndarray, tiles: Tiling = F2) -> np.ndarray:
    """``U[a, b] = sum_{i, j} G[a, i] kernel[i, j] G[b, j]``: (r, r, C, F) -> (alpha^2, C, F).
    One GEMM in the kernel's dtype, ``U = (G kron G) @ kernel`` with the kernel as (r^2, C*F):
    no float64 copies of a wide layer's kernel and U (``benchmarks/kernels.py --wide``). In
    float32, G kron G's entries (1/36 ... 1/576) are rounded once: U stays within a few float32
    epsilons of the float64 U, relative to its largest entry (tested)."""
    c, f = kernel.shape[2:]
    return (_kron(tiles.m, tiles.taps, kernel.dtype) @ kernel.reshape(-1, c * f)).reshape(
        -1, c, f)


def kernel_grad_transform(grad_u: np.ndarray, tiles: Tiling) -> np.ndarray:
    """``grad_kernel = G^T grad_U G``: (alpha^2, C, F) -> (r, r, C, F), the adjoint of
    :func:`kernel_transform`: ``(G kron G)^T @ grad_U`` with grad_U as (alpha^2, C*F)."""
    c, f = grad_u.shape[1:]
    return (_kron(tiles.m, tiles.taps, grad_u.dtype).T @ grad_u.reshape(-1, c * f)).reshape(
        tiles.taps, tiles.taps, c, f)


@functools.cache
def _kron(m: int, taps: int, dtype: np.dtype) -> np.ndarray:
    """``G kron G`` (alpha^2, r^2) of F(m x m, r x r) in ``dtype``: row ``a * alpha + b``,
    column ``i * r + j`` holds ``G[a, i] G[b, j]``, each product taken in float64 and rounded
    once."""
    g = {(2, 3): F2, (4, 3): F4, (4, 5): F4_5}[m, taps].g   # a Tiling holds arrays: keyed on m, r
    product = np.kron(g, g).astype(dtype)
    product.setflags(write=False)        # shared by every caller
    return product


# --- the reference transforms for any tiling, as the formulas read (einsum) ---------------------
def patches(x: np.ndarray, pads: Pads, tiles_hw, m: int, taps: int = 3) -> np.ndarray:
    """Every tile's patch ``d (alpha, alpha, N, th, tw, C)``, ``alpha = m + taps - 1``, a
    strided view of the image zero-padded to exactly the tiles' extent
    ``(m*th + taps - 1, m*tw + taps - 1)``."""
    n, h, w, c = x.shape
    th, tw = tiles_hw
    (top, _), (left, _) = pads
    halo = taps - 1
    xp = np.zeros((n, m * th + halo, m * tw + halo, c), dtype=x.dtype)     # (N, Hp, Wp, C)
    xp[:, top:top + h, left:left + w] = x          # m*th + halo >= Ho + halo = H + top + bottom
    s_n, s_h, s_w, s_c = xp.strides
    return np.lib.stride_tricks.as_strided(
        xp, (m + halo, m + halo, n, th, tw, c), (s_h, s_w, s_n, m * s_h, m * s_w, s_c),
        writeable=False)


def input_transform_reference(x: np.ndarray, pads: Pads, tiles_hw, tiles: Tiling) -> np.ndarray:
    """``V = B^T d B``: (N, H, W, C) -> (alpha^2, T, C)."""
    d = patches(x, pads, tiles_hw, tiles.m, tiles.taps)
    bt = tiles.bt.astype(x.dtype)
    v = np.einsum("ai,ijntsc,bj->abntsc", bt, d, bt, optimize=True)
    return np.ascontiguousarray(v).reshape(tiles.alpha ** 2, -1, x.shape[3])


def output_transform_reference(m: np.ndarray, n: int, tiles_hw, out_hw, tiles: Tiling,
                               bias=None) -> np.ndarray:
    """``y = A^T M A (+ bias)``: (alpha^2, T, F) -> (N, Ho, Wo, F)."""
    th, tw = tiles_hw
    at, alpha, f = tiles.at.astype(m.dtype), tiles.alpha, m.shape[-1]
    y = np.einsum("ai,ijntsf,bj->ntasbf", at, m.reshape(alpha, alpha, n, th, tw, f), at,
                  optimize=True).reshape(n, th * tiles.m, tw * tiles.m, f)
    y = np.ascontiguousarray(y[:, :out_hw[0], :out_hw[1]])
    return y if bias is None else y + bias


def output_adjoint_reference(grad_out: np.ndarray, tiles_hw, tiles: Tiling) -> np.ndarray:
    """``grad_M = A grad_y A^T``: (N, Ho, Wo, F) -> (alpha^2, T, F); the cropped overhang's
    gradient is zero."""
    n, ho, wo, f = grad_out.shape
    th, tw = tiles_hw
    mt = tiles.m
    padded = np.zeros((n, th * mt, tw * mt, f), dtype=grad_out.dtype)
    padded[:, :ho, :wo] = grad_out
    at = tiles.at.astype(grad_out.dtype)
    grad_m = np.einsum("ai,ntasbf,bj->ijntsf", at, padded.reshape(n, th, mt, tw, mt, f), at,
                       optimize=True)
    return np.ascontiguousarray(grad_m).reshape(tiles.alpha ** 2, -1, f)


def _rows_bt(d, out):
    """``out[a] = sum_i B^T[a, i] d[i]`` along the first axis, B^T = [[1, 0, -1, 0], [0, 1, 1, 0],
    [0, -1, 1, 0], [0, 1, 0, -1]]."""
    np.subtract(d[0], d[2], out=out[0])
    np.add(d[1], d[2], out=out[1])
    np.subtract(d[2], d[1], out=out[2])
    np.subtract(d[1], d[3], out=out[3])
    return out


def input_transform(x: np.ndarray, pads: Pads, tiles_hw) -> np.ndarray:
    """``V = B^T d B`` for every tile: (N, H, W, C) -> (4, 4, N*th*tw, C).

    d is :func:`patches` (a strided view of the padded image, no copy), and each transform pass
    writes one contiguous (4, 4, T, C) array."""
    n, c = x.shape[0], x.shape[3]
    th, tw = tiles_hw
    d = patches(x, pads, tiles_hw, 2)                                    # (4, 4, N, th, tw, C)
    rows = _rows_bt(d, np.empty((4, 4, n, th, tw, c), dtype=x.dtype))  # B^T d
    v = np.empty((4, 4, n, th, tw, c), dtype=x.dtype)
    _rows_bt(rows.transpose(1, 0, 2, 3, 4, 5), v.transpose(1, 0, 2, 3, 4, 5))  # (B^T d) B
    return v.reshape(4, 4, n * th * tw, c)


def output_transform(m: np.ndarray, n: int, tiles_hw, out_hw) -> np.ndarray:
    """``y = A^T M A`` for every tile, A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]:
    (4, 4, T, F) -> (N, Ho, Wo, F), the tiles laid side by side and the overhang cropped."""
    th, tw = tiles_hw
    f = m.shape[-1]
    m = m.reshape(4, 4, n, th, tw, f)
    s = np.empty((2, 4, n, th, tw, f), dtype=m.dtype)                   # s = A^T M
    np.add(m[0], m[1], out=s[0])
    s[0] += m[2]
    np.subtract(m[1], m[2], out=s[1])
    s[1] -= m[3]
    out = np.empty((n, th, 2, tw, 2, f), dtype=m.dtype)                 # (A^T M) A
    for a in range(2):
        np.add(s[a, 0], s[a, 1], out=out[:, :, a, :, 0])
        out[:, :, a, :, 0] += s[a, 2]
        np.subtract(s[a, 1], s[a, 2], out=out[:, :, a, :, 1])
        out[:, :, a, :, 1] -= s[a, 3]
    return out.reshape(n, 2 * th, 2 * tw, f)[:, :out_hw[0], :out_hw[1]]


def output_transform_adjoint(grad_out: np.ndarray, tiles_hw) -> np.ndarray:
    """``grad_M = A grad_y A^T``: (N, Ho, Wo, F) -> (4, 4, T, F); the cropped overhang's
    gradient is zero."""
    n, ho, wo, f = grad_out.shape
    th, tw = tiles_hw
    padded = np.zeros((n, th, 2, tw, 2, f), dtype=grad_out.dtype)
    padded.reshape(n, 2 * th, 2 * tw, f)[:, :ho, :wo] = grad_out
    # q[b] = sum_j A[b, j] y[j] along the tile's columns: A = A^T's transpose, rows
    # (1, 0), (1, 1), (1, -1), (0, -1)
    q = np.empty((4, 2, n, th, tw, f), dtype=grad_out.dtype)            # (columns b, rows a)
    for a in range(2):
        y0, y1 = padded[:, :, a, :, 0], padded[:, :, a, :, 1]
        q[0, a] = y0
        np.add(y0, y1, out=q[1, a])
        np.subtract(y0, y1, out=q[2, a])
        np.negative(y1, out=q[3, a])
    grad_m = np.empty((4, 4, n, th, tw, f), dtype=grad_out.dtype)       # then along the rows
    grad_m[0] = q[:, 0]
    np.add(q[:, 0], q[:, 1], out=grad_m[1])
    np.subtract(q[:, 0], q[:, 1], out=grad_m[2])
    np.negative(q[:, 1], out=grad_m[3])
    return grad_m.reshape(4, 4, n * th * tw, f)


# --- the convolution -----------------------------------------------------------------------------
def transform_input(x: np.ndarray, pads: Pads, tiles_hw, tiles: Tiling,
                    v: np.ndarray | None = None) -> np.ndarray:
    """``V (alpha^2, T, C)`` by the fastest transform there is for ``tiles`` (compiled: into
    ``v`` when it is given with that shape and dtype)."""
    kernels = compiled.module("winograd_kernels")
    if kernels is not None and tiles is F4:
        shape = (36, x.shape[0] * tiles_hw[0] * tiles_hw[1], x.shape[3])
        if v is None or v.shape != shape or v.dtype != x.dtype:    # the kernel trusts its shape
            v = np.empty(shape, dtype=x.dtype)
        kernels.input_tiles(np.ascontiguousarray(x), pads[0][0], pads[1][0], *tiles_hw, v)
        return v
    if tiles is F2:
        return input_transform(x, pads, tiles_hw).reshape(16, -1, x.shape[3])
    return input_transform_reference(x, pads, tiles_hw, tiles)


def conv3x3_forward(x: np.ndarray, kernel: np.ndarray, bias, pads: Pads, out_hw,
                    tiles: Tiling | None = None, u: np.ndarray | None = None,
                    out: np.ndarray | None = None, relu: bool = False,
                    v: np.ndarray | None = None, m: np.ndarray | None = None,
                    residual: np.ndarray | None = None):
    """``out = A^T [(B^T d B) * (G g G^T)] A (+ bias)``: (N, H, W, C) -> (N, Ho, Wo, F), and the
    cache for :func:`transformed_kernel_grad` (the transformed tiles V). ``tiles``: the tiling
    (default :func:`tiling`). A batch done in chunks passes ``u``, the kernel already
    transformed with it, and ``out``, its chunk of the output (C-contiguous) to write into.
    ``residual`` (shaped as ``out``, of its dtype, C-contiguous; inference only): ``+=
    residual`` after the bias. ``relu``: ``max(out, 0)`` last. Both in the output transform's
    pass where it is compiled."""
    tiles = tiles or tiling()
    n, f = x.shape[0], kernel.shape[3]
    dtype = np.result_type(x, kernel)
    tiles_hw = tile_counts(out_hw, tiles.m)
    v = transform_input(x.astype(dtype, copy=False), pads, tiles_hw, tiles, v)  # (alpha^2, T, C)
    if u is None:
        u = kernel_transform(kernel.astype(dtype, copy=False), tiles)         # (alpha^2, C, F)
    m = np.matmul(v, u, out=m)                                          # (alpha^2, T, F)
    kernels = compiled.module("winograd_kernels")
    if kernels is not None and tiles is F4:
        out = np.empty((n, *out_hw, f), dtype=m.dtype) if out is None else out
        shift = np.zeros(f, m.dtype) if bias is None else bias.astype(m.dtype)
        kernels.output_tiles(m, shift, *tiles_hw, out, relu,
                             out if residual is None else residual, residual is not None)
        return out, v
    if tiles is F2:
        y = output_transform(m.reshape(4, 4, -1, f), n, tiles_hw, out_hw)
        y = np.ascontiguousarray(y if bias is None else y + bias)
    else:
        y = output_transform_reference(m, n, tiles_hw, out_hw, tiles, bias)
    if residual is not None:
        y += residual
    if relu:
        np.maximum(y, 0, out=y)
    if out is None:
        return y, v
    out[...] = y
    return out, v


def output_adjoint(grad_out: np.ndarray, tiles_hw, tiles: Tiling) -> np.ndarray:
    """``grad_M = A grad_y A^T``: grad_y (N, Ho, Wo, F) -> (alpha^2, T, F), the overhang past
    the output's edge taken as zeros, by the fastest path there is for ``tiles``:
    compiled for F(4x4, 3x3) and F(4x4, 5x5) (``winograd_fused_kernels.adjoint3x3`` and
    ``adjoint5x5``; a gradient of fewer filters than a vector holds is padded with zero
    filters to one, and the result is a view of the real ones), NumPy for F(2x2), else the
    reference."""
    kernels = compiled.module("winograd_fused_kernels", grad_out)
    n, f = grad_out.shape[0], grad_out.shape[-1]
    if kernels is not None and (tiles is F4 or tiles is F4_5) \
            and grad_out.dtype in compiled.KERNEL_DTYPES:
        lanes = kernels.VECTOR_BYTES // grad_out.itemsize
        wide = np.pad(grad_out, ((0, 0),) * 3 + ((0, lanes - f),)) if f < lanes \
            else np.ascontiguousarray(grad_out)
        grad_m = np.empty((tiles.alpha ** 2, n * tiles_hw[0] * tiles_hw[1], wide.shape[-1]),
                          grad_out.dtype)
        adjoint = kernels.adjoint3x3 if tiles.taps == 3 else kernels.adjoint5x5
        adjoint(wide, *tiles_hw, grad_m, kernels.adjoint_block(wide.shape[-1],
                                                               grad_out.itemsize, tiles.taps))
        return grad_m[..., :f]
    if tiles is F2:
        return output_transform_adjoint(grad_out, tiles_hw).reshape(16, -1, f)
    return output_adjoint_reference(grad_out, tiles_hw, tiles)


def transformed_kernel_grad(grad_out: np.ndarray, v: np.ndarray, tiles: Tiling) -> np.ndarray:
    """``grad_U = V^T @ (A grad_y A^T)`` (alpha^2, C, F), the kernel's gradient before its
    transform back (linear: the grad_U of a batch's chunks add up to the batch's)."""
    grad_m = output_adjoint(grad_out, tile_counts(grad_out.shape[1:3], tiles.m), tiles)
    return np.matmul(v.transpose(0, 2, 1), grad_m)                      # (alpha^2, C, F)
