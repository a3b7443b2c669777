"""bfloat16 arithmetic, emulated in float32 arrays: what a layer of the ``'mixed_bfloat16'``
dtype policy (``config.DTypePolicy``) does to its inputs, weights, outputs and gradients.

bfloat16 is float32 with the low 16 bits of the mantissa dropped: the same 8-bit exponent (so
the same range, and no loss scaling), 8 significant bits instead of 24. Rounding a float32 to
it is round-to-nearest-even on those 16 bits:

    forward   bits  = x viewed as uint32, any shape
              bits' = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000    NaN stays NaN (quiet)
    backward  the identity, as a cast's gradient is (``Layer.backward`` passes it through)

The result is kept in a float32 array. A product of two such values is exact in float32
(8 + 8 significant bits), so a layer whose inputs and weights are rounded, that sums in float32
and rounds its output, computes what bfloat16 hardware does (bfloat16 operands, float32
accumulation, a bfloat16 result) up to the order of the sums. On this CPU that is the numerics
of mixed precision without its speed: NumPy and Numba have no bfloat16 GEMM, and each rounding
is one more pass over the array. ``round_to_bfloat16`` takes its array module from its input,
so a CuPy array is rounded on the GPU.
"""

from __future__ import annotations

import numpy as np

from cnnlab.engine import compiled
from cnnlab.engine.arrays import array_module

# the bit patterns, as uint32 scalars (which CuPy takes as NumPy's)
_HIGH_HALF, _HALF_ULP, _ONE, _SIXTEEN = (np.uint32(0xFFFF0000), np.uint32(0x7FFF), np.uint32(1),
                                         np.uint32(16))
_MAGNITUDE, _INFINITY = np.uint32(0x7FFFFFFF), np.uint32(0x7F800000)
_QUIET_NAN, _SIGN = np.uint32(0x7FC00000), np.uint32(0x80000000)


def round_to_bfloat16(x):
    """``x`` (float32, any shape) with every value rounded to the nearest bfloat16, ties to
    even, in a new float32 array; infinities stay, a NaN becomes a quiet NaN of its sign, a
    finite value past bfloat16's largest (3.39e38) becomes an infinity, as a cast to bfloat16
    does. Compiled (``precision_kernels``): one pass instead of five."""
    xp = array_module(x)
    if x.dtype.name != "float32":
        raise TypeError(f"round_to_bfloat16 takes float32 arrays; received {x.dtype}.")
    bits = xp.ascontiguousarray(x).view(xp.uint32)
    kernels = compiled.module("precision_kernels", bits)
    if kernels is not None:
        out = np.empty_like(bits)
        kernels.round_to_bfloat16(bits.reshape(-1), out.reshape(-1))
        return out.view(np.float32).reshape(x.shape)      # (ascontiguousarray makes 0-d 1-d)
    return _round_reference(bits, xp).reshape(x.shape)


def _round_reference(bits, xp):
    """The NumPy (or CuPy) reference of :func:`round_to_bfloat16`, on the values' bits."""
    lowest_kept = (bits >> _SIXTEEN) & _ONE
    rounded = (bits + (_HALF_ULP + lowest_kept)) & _HIGH_HALF          # uint32 arithmetic
    is_nan = (bits & _MAGNITUDE) > _INFINITY
    if is_nan.any():
        rounded[is_nan] = _QUIET_NAN | (bits[is_nan] & _SIGN)
    return rounded.view(xp.float32)
