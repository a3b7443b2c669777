"""Compiled residual joins, beside their NumPy reference (``merge.py``, whose docstring has the
formulas). Every array is 1-D, one element per value of the (N, H, W, C) maps, C-contiguous.

    add_relu   y = max(a + b, 0)                  one pass: reads a and b, writes y
    relu_grad  dx = dy * (1 if y > 0 else 0)      one pass: reads dy and y, writes dx

ResNet's ``Add -> ReLU`` is two passes over the map on the reference (the sum, then the max in
place) and the ReLU's gradient two more (the mask, then the product); here each is one. The
values are the reference's bit for bit, NaN and signed zeros included: a NaN sum stays NaN and
a sum of -0 becomes +0 (as ``np.maximum(s, 0)`` gives them), and the gradient is a product
with 0 or 1, as ``dy * (y > 0)`` is.
"""

from __future__ import annotations

import numba


@numba.njit(cache=True, nogil=True)
def add_relu(a, b, out):
    zero = out.dtype.type(0)
    for i in range(out.shape[0]):
        total = a[i] + b[i]
        out[i] = total if total > zero or total != total else zero     # NaN stays, -0 is 0


@numba.njit(cache=True, nogil=True)
def relu_grad(grad, out, result):
    zero, one = result.dtype.type(0), result.dtype.type(1)
    for i in range(result.shape[0]):
        result[i] = grad[i] * (one if out[i] > zero else zero)
