"""Independent references the engine is checked against: PyTorch on the CPU, naive loops, and
central finite differences. Nothing here imports the code under test's helpers."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

TOLERANCE = {np.float64: 1e-10, np.float32: 1e-5}


def rel_error(actual, expected, scale=None) -> float:
    """max |a - e| / max |e|: one number that is small only when every element agrees.

    ``scale`` replaces max |e| for results that are sums whose terms can cancel (a bias
    gradient is a sum of upstream gradients): there the rounding error is relative to the sum
    of the terms' sizes, which a nearly cancelled result can be far below.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape} != expected {expected.shape}"
    if scale is None:
        scale = np.abs(expected).max(initial=0.0)
    return float(np.abs(actual - expected).max(initial=0.0) / max(scale, 1e-30))


def assert_close(actual, expected, dtype, what="", scale=None):
    tol = TOLERANCE[np.dtype(dtype).type]
    err = rel_error(actual, expected, scale)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"


def nchw(x: np.ndarray, grad=True) -> torch.Tensor:
    """NHWC NumPy -> NCHW torch tensor that records gradients."""
    return torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), requires_grad=grad)


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def torch_kernel(kernel: np.ndarray, grad=True) -> torch.Tensor:
    """Keras (KH, KW, C, F) -> torch (F, C, KH, KW)."""
    return torch.tensor(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)), requires_grad=grad)


def torch_pad(t: torch.Tensor, pads, value=0.0) -> torch.Tensor:
    (top, bottom), (left, right) = pads
    return F.pad(t, (left, right, top, bottom), value=value)


# --- naive loops, written straight from the definitions ---------------------------------------
def naive_conv2d(x, kernel, bias, strides, pads, dilation):
    n, h, w, c = x.shape
    kh, kw, _, f = kernel.shape
    (top, bottom), (left, right) = pads
    xp = np.zeros((n, h + top + bottom, w + left + right, c), dtype=x.dtype)
    xp[:, top:top + h, left:left + w, :] = x
    ho = (xp.shape[1] - (dilation[0] * (kh - 1) + 1)) // strides[0] + 1
    wo = (xp.shape[2] - (dilation[1] * (kw - 1) + 1)) // strides[1] + 1
    out = np.zeros((n, ho, wo, f), dtype=x.dtype)
    for b in range(n):
        for oy in range(ho):
            for ox in range(wo):
                for i in range(kh):
                    for j in range(kw):
                        pixel = xp[b, oy * strides[0] + i * dilation[0],
                                   ox * strides[1] + j * dilation[1], :]
                        out[b, oy, ox, :] += pixel @ kernel[i, j]
    if bias is not None:
        out += bias
    return out


def naive_pool(x, pool, strides, pads, kind):
    n, h, w, c = x.shape
    (top, bottom), (left, right) = pads
    ho = (h + top + bottom - pool[0]) // strides[0] + 1
    wo = (w + left + right - pool[1]) // strides[1] + 1
    out = np.zeros((n, ho, wo, c), dtype=x.dtype)
    for oy in range(ho):
        for ox in range(wo):
            y0, x0 = oy * strides[0] - top, ox * strides[1] - left
            ys = slice(max(y0, 0), min(y0 + pool[0], h))
            xs = slice(max(x0, 0), min(x0 + pool[1], w))
            window = x[:, ys, xs, :]
            out[:, oy, ox, :] = (window.max(axis=(1, 2)) if kind == "max"
                                 else window.mean(axis=(1, 2)))
    return out


def finite_difference_grad(f, x: np.ndarray, eps: float = 1e-6, max_entries: int = 40,
                           rng: np.random.Generator | None = None):
    """Central differences of scalar ``f`` at up to ``max_entries`` random entries of ``x``.

    Returns ``(indices, numeric_gradients)``: ``(f(x + eps) - f(x - eps)) / 2 eps``.
    """
    rng = rng or np.random.default_rng(0)
    flat = x.reshape(-1)
    picks = rng.choice(flat.size, size=min(max_entries, flat.size), replace=False)
    numeric = []
    for index in picks:
        saved = flat[index]
        flat[index] = saved + eps
        plus = f()
        flat[index] = saved - eps
        minus = f()
        flat[index] = saved
        numeric.append((plus - minus) / (2 * eps))
    return picks, np.array(numeric)
