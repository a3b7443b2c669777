"""The ops that take their array module from their inputs (``engine.arrays``), on CuPy arrays
on a GPU, against the same ops on NumPy in float64: at most 1e-10 relative, forward and
backward, arrays of CuPy's type back. Skipped, with the reason, where CuPy finds no GPU (every
development machine and CI); ``bash benchmarks/device.sh`` runs them on the lent GPU machine."""

import numpy as np
import pytest
from array_ops import image_inputs, image_op_cases, op_cases, sample_inputs, values_in

from cnnlab.engine import devices

count, why = devices.cupy_devices()
pytestmark = pytest.mark.skipif(count == 0, reason=f"needs an NVIDIA GPU that CuPy sees: {why}")


def _on_cupy_equal_numpy(cases_of, inputs):
    """Every case on CuPy copies of ``inputs`` against the same on NumPy: arrays of CuPy's type
    back (they stayed on the GPU), equal at 1e-10."""
    import cupy
    expected = {name: case() for name, case in cases_of(*inputs)}
    for name, case in cases_of(*[cupy.asarray(a) for a in inputs]):
        result = case()
        for got, want in zip(values_in(result, cupy.ndarray), values_in(expected[name]),
                             strict=True):
            assert isinstance(got, cupy.ndarray), name
            np.testing.assert_allclose(cupy.asnumpy(got), want, rtol=1e-10, atol=1e-12,
                                       err_msg=name)


@pytest.mark.parametrize("seed, rows, classes", [(0, 3, 5), (1, 64, 10), (2, 1, 2)])
def test_ops_on_cupy_equal_numpy_in_float64(seed, rows, classes):
    _on_cupy_equal_numpy(op_cases, sample_inputs(seed, rows, classes))


@pytest.mark.parametrize("seed, n, size, channels", [(0, 2, 6, 3), (1, 8, 16, 16)])
def test_image_ops_on_cupy_equal_numpy_in_float64(seed, n, size, channels):
    _on_cupy_equal_numpy(image_op_cases, image_inputs(seed, n, size, channels))
