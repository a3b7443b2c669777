"""3x3 stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, 2016).

Shapes (letters defined in ``cnnlab.engine``)::

    x       (N, H, W, C)          kernel (3, 3, C, F)          out (N, Ho, Wo, F)
    tiles   T = N * th * tw       th = ceil(Ho / 2), tw = ceil(Wo / 2): one tile per 2x2 outputs
    d       (4, 4, T, C)          the 4x4 input patch each tile reads (they overlap by 2)
    V       (4, 4, T, C)          V = B^T d B        the patches in the transform domain
    U       (4, 4, C, F)          U = G g G^T        the kernel in the transform domain
    M       (4, 4, T, F)          M[a, b] = V[a, b] @ U[a, b]      16 GEMMs
    y       (2, 2, T, F)          y = A^T M A        the 2x2 outputs of each tile

Forward and backward side by side::

    forward                                   backward (given grad_y)
    V = B^T d B                               grad_M = A grad_y A^T           (adjoint of A^T . A)
    M[a, b] = V[a, b] @ U[a, b]               grad_U[a, b] = V[a, b]^T @ grad_M[a, b]
    y = A^T M A                               grad_kernel = G^T grad_U G
                                              grad_x: a stride-1 convolution of grad_out with the
                                              flipped kernel (``conv.transposed_pads``), which is
                                              itself done here

Why: a 2x2 block of outputs from a 4x4 patch needs 16 multiplies per (C, F) pair here instead of
36 directly, 2.25x fewer, and the 16 products are GEMMs over all tiles at once. The price is the
transforms: B^T d B and A^T M A are only additions and subtractions, but in NumPy each is a pass
over arrays 4x the size of the input or output (the tiles overlap), so they cost memory traffic
the GEMMs save in arithmetic. Where that pays is measured, not assumed: ``conv.choose`` decides.

Exactness: G has entries 1/2, so U differs from the kernel's own products in the last bits;
in float64 the results equal the direct convolution to ~1e-15 relative. No window is ever blank
in a way that matters: padding is zeros in d, and the tiles past the output's edge are cropped.
"""

from __future__ import annotations

import numpy as np

from cnnlab.engine.shapes import Pads

# G (4, 3): the kernel transform.  B^T and A^T are applied as the additions they are (below).
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def step_work(batch: int, out_hw, channels: int, filters: int, gradients: str = "all"):
    """``(multiply-adds, elements moved, NumPy calls)`` of the forward pass and the
    ``gradients`` after it ('all', 'kernel' or 'none'; the input gradient is another Winograd
    convolution); ``conv.choose`` turns them into seconds."""
    th, tw = tile_counts(out_hw)
    tiles = batch * th * tw
    products = 16 * tiles * channels * filters
    if gradients == "none":
        return products, 16 * tiles * (channels + filters) * 3, 25
    if gradients == "kernel":
        return 2 * products, 16 * tiles * (channels + 2 * filters) * 3, 45
    # each pass reads two arrays and writes one
    return 3 * products, 16 * tiles * (2 * channels + 3 * filters) * 3, 70


def tile_counts(out_hw) -> tuple[int, int]:
    return -(-out_hw[0] // 2), -(-out_hw[1] // 2)


def kernel_transform(kernel: np.ndarray) -> np.ndarray:
    """``U[a, b] = sum_{i, j} G[a, i] kernel[i, j] G[b, j]``: (3, 3, C, F) -> (4, 4, C, F)."""
    g = _G.astype(kernel.dtype)
    return np.einsum("ai,ijcf,bj->abcf", g, kernel, g, optimize=True)


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

    The image is zero-padded to exactly the tiles' extent, (2*th + 2, 2*tw + 2); d is a strided
    view of it (no copy), and each transform pass writes one contiguous (4, 4, T, C) array."""
    n, h, w, c = x.shape
    th, tw = tiles_hw
    (top, _), (left, _) = pads
    xp = np.zeros((n, 2 * th + 2, 2 * tw + 2, c), dtype=x.dtype)         # (N, Hp, Wp, C)
    xp[:, top:top + h, left:left + w] = x          # 2*th + 2 >= Ho + 2 = H + top + bottom
    s_n, s_h, s_w, s_c = xp.strides
    d = np.lib.stride_tricks.as_strided(                                 # (4, 4, N, th, tw, C)
        xp, (4, 4, n, th, tw, c), (s_h, s_w, s_n, 2 * s_h, 2 * s_w, s_c), writeable=False)
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


def conv3x3_forward(x: np.ndarray, kernel: np.ndarray, bias, pads: Pads, out_hw):
    """``out = A^T [(B^T d B) * (G g G^T)] A (+ bias)``: (N, H, W, C) -> (N, Ho, Wo, F), and the
    cache for :func:`conv3x3_kernel_grad` (the transformed tiles V)."""
    n, c, f = x.shape[0], kernel.shape[2], kernel.shape[3]
    tiles = tile_counts(out_hw)
    v = input_transform(x, pads, tiles)                                 # (4, 4, T, C)
    u = kernel_transform(kernel)                                        # (4, 4, C, F)
    m = np.matmul(v.reshape(16, -1, c), u.reshape(16, c, f))            # (16, T, F)
    out = output_transform(m.reshape(4, 4, -1, f), n, tiles, out_hw)
    if bias is not None:
        out = out + bias
    return np.ascontiguousarray(out), v


def conv3x3_kernel_grad(grad_out: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``grad_kernel = G^T (V^T @ (A grad_y A^T)) G``: the forward's V and grad_out
    (N, Ho, Wo, F) -> (3, 3, C, F)."""
    f, c = grad_out.shape[-1], v.shape[-1]
    grad_m = output_transform_adjoint(grad_out, tile_counts(grad_out.shape[1:3]))
    grad_u = np.matmul(v.reshape(16, -1, c).transpose(0, 2, 1),
                       grad_m.reshape(16, -1, f))                       # (16, C, F)
    g = _G.astype(grad_out.dtype)
    return np.einsum("ai,abcf,bj->ijcf", g, grad_u.reshape(4, 4, c, f), g, optimize=True)
