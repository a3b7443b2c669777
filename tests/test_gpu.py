"""The ops that take their array module from their inputs (``engine.arrays``), on CuPy arrays
on a GPU, against the same ops on NumPy in float64: at most 1e-10 relative, forward and
backward, arrays of CuPy's type back; and a whole model trained there (``training.placement``)
against the same training on the CPU. Skipped, with the reason, where CuPy finds no GPU (every
development machine and CI); ``bash benchmarks/device.sh`` runs them on the lent GPU machine."""

import numpy as np
import pytest
from array_ops import (
    image_inputs,
    image_op_cases,
    op_cases,
    sample_inputs,
    small_network,
    values_in,
)

import cnnlab
from cnnlab import config
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


def _trained(device: str):
    """20 steps of Adam in float64 on ``device``: the losses, the weights and the outputs."""
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((160, 8, 8, 3)), rng.integers(0, 4, 160)
    cnnlab.utils.clear_session()
    cnnlab.utils.set_random_seed(11)
    config.set_device(device)
    model = small_network()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    return history.history["loss"], model.get_weights(), model.predict(x[:16], verbose=0), model


def test_a_model_trains_on_cupy_as_on_the_cpu_in_float64(monkeypatch):
    monkeypatch.setattr(devices, "GPU_ENGINE", True)       # the switch the GPU path waits on
    floatx, device = config.floatx(), config.device()
    config.set_floatx("float64")
    try:
        cpu_loss, cpu_weights, cpu_outputs, _ = _trained("cpu")
        loss, weights, outputs, model = _trained("gpu")
    finally:
        config.set_floatx(floatx)
        config.set_device(device)
    import cupy
    assert all(isinstance(v.value, cupy.ndarray) for v in model.variables)
    assert type(outputs) is np.ndarray
    np.testing.assert_allclose(loss, cpu_loss, rtol=1e-9)
    np.testing.assert_allclose(outputs, cpu_outputs, rtol=1e-9, atol=1e-12)
    for got, want in zip(weights, cpu_weights, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_rounding_to_bfloat16_on_cupy_equals_the_cpus_bit_for_bit():
    """The ``mixed_bfloat16`` policy's rounding (``engine.precision``) on the GPU."""
    import cupy

    from cnnlab.engine import precision
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2 ** 32, 100_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    got = precision.round_to_bfloat16(cupy.asarray(x))
    assert isinstance(got, cupy.ndarray)
    want, nan = precision.round_to_bfloat16(x), np.isnan(x)
    assert np.array_equal(cupy.asnumpy(got)[~nan].view(np.uint32), want[~nan].view(np.uint32))
    assert np.isnan(cupy.asnumpy(got)[nan]).all()
