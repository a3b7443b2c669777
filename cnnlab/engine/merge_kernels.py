"""The compiled residual join, beside its NumPy reference (``merge.py``, whose docstring has the
formulas). Every array is 1-D, one element per value of the (N, H, W, C) maps, C-contiguous.

    add_relu   y = max(a + b, 0)                  one pass: reads a and b, writes y

ResNet's ``Add -> ReLU`` is two passes over the map on the reference (the sum, then the max in
place); here it is one. Its gradient is ReLU's (``activations.relu_backward``, compiled in
``activations_kernels``). The values are the reference's bit for
bit, NaN and signed zeros included: a NaN sum stays NaN and a sum of -0 becomes +0, as
``np.maximum(s, 0)`` gives them.
"""

from __future__ import annotations

import numba


@numba.njit(cache=True, nogil=True)
def add_relu(a, b, out):
    zero = out.dtype.type(0)
    for i in range(out.shape[0]):
        total = a[i] + b[i]
        out[i] = total if total > zero or total != total else zero     # NaN stays, -0 is 0

