"""The ops that take their array module from their inputs (``engine.arrays``), on CuPy arrays
on a GPU, against the same ops on NumPy in float64: at most 1e-10 relative, forward and
backward, arrays of CuPy's type back; a whole model trained there (``training.placement``)
against the same training on the CPU; ResNet-20's float64 loss curve against PyTorch's on the
same GPU; a model trained there predicting the same once loaded on the CPU; and a run killed
with SIGKILL and resumed there, bit for bit. Skipped, with the reason, where CuPy finds no GPU
(every development machine and CI); ``bash benchmarks/device.sh`` runs them on the lent GPU
machine. The helpers take the device, so each can be tried on the CPU too."""

import sys

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
from interrupted import killed_and_resumed

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


def resnet20_curves(device: str):
    """20 SGD steps of ResNet-20 (16 x 16 inputs, BatchNormalization in training, residual
    adds, strided and 1x1 convolutions) in float64 on ``device``, and PyTorch's on the same
    device from the same weights: ``(ours, theirs)``, the losses."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    from cnnlab.export import to_torch
    config.set_floatx("float64")
    config.set_device(device)
    cnnlab.utils.set_random_seed(0)
    model = cnnlab.zoo.get("resnet20", input_shape=(16, 16, 3), num_classes=5)
    model.compile(optimizer=cnnlab.optimizers.SGD(0.05, momentum=0.9),
                  loss="sparse_categorical_crossentropy")
    where = "cuda" if device == "gpu" else "cpu"
    net = to_torch(model).train().to(where)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    rng = np.random.default_rng(0)
    x, y = rng.random((320, 16, 16, 3)), rng.integers(0, 5, 320)
    ours, theirs = [], []
    for step in range(20):
        batch = slice((step % 10) * 32, (step % 10) * 32 + 32)
        ours.append(model.train_on_batch(x[batch], y[batch]))
        opt.zero_grad()
        probabilities = net(torch.tensor(x[batch].transpose(0, 3, 1, 2), device=where))
        loss = F.nll_loss(torch.log(probabilities), torch.tensor(y[batch], device=where))
        loss.backward()
        opt.step()
        theirs.append(loss.item())
    return ours, theirs


def test_twenty_resnet20_steps_on_cupy_follow_pytorch_on_the_gpu_in_float64(monkeypatch):
    import torch
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA device here")
    monkeypatch.setattr(devices, "GPU_ENGINE", True)
    floatx, device = config.floatx(), config.device()
    try:
        ours, theirs = resnet20_curves("gpu")
    finally:
        config.set_floatx(floatx)
        config.set_device(device)
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)
    assert ours[-1] < ours[0] - 0.1                                 # it really trained


def saved_and_reloaded_on_the_cpu(device: str, path):
    """``small_network`` trained 20 steps in float32 on ``device`` and saved to ``path``; its
    predictions there, and those of the file loaded on the CPU: ``(there, here)``."""
    rng = np.random.default_rng(8)
    x, y = rng.random((160, 8, 8, 3), dtype=np.float32), rng.integers(0, 4, 160)
    cnnlab.utils.set_random_seed(12)
    config.set_device(device)
    model = small_network()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    there = model.predict(x[:32], verbose=0)
    model.save(path)
    config.set_device("cpu")
    return there, cnnlab.load_model(path).predict(x[:32], verbose=0)


def test_a_model_trained_on_the_gpu_predicts_the_same_loaded_on_the_cpu(monkeypatch, tmp_path):
    monkeypatch.setattr(devices, "GPU_ENGINE", True)
    device = config.device()
    try:
        there, here = saved_and_reloaded_on_the_cpu("gpu", tmp_path / "trained.cnnlab")
    finally:
        config.set_device(device)
    assert type(there) is np.ndarray and type(here) is np.ndarray
    np.testing.assert_allclose(here, there, rtol=1e-4, atol=1e-6)      # float32's rounding


#: the ``cnnlab`` command with the GPU path switched on (``engine.devices.GPU_ENGINE``)
GPU_COMMAND = ("import sys; from cnnlab.engine import devices; devices.GPU_ENGINE = True; "
               "from cnnlab.cli import run; sys.exit(run())")


def gpu_run_killed_and_resumed(device: str, folder):
    """``cnnlab train`` on the bundled digits, 2 epochs of 64-image batches, on ``device``,
    SIGKILLed after its first checkpoint (batch 20) and resumed, beside the same run straight
    through (``tests/interrupted.py``): ``(resumed, reference, progress)``."""
    def command(out, *extra):
        return [sys.executable, "-c", GPU_COMMAND, "train", "--device", device, "--out",
                str(out), "--verbose", "0", *extra]
    options = ["--data", "mnist_sample", "--epochs", "2", "--batch-size", "64"]
    return killed_and_resumed(command, options, folder, every=20)


def test_a_run_killed_on_the_gpu_resumes_bit_for_bit(tmp_path):
    resumed, reference, progress = gpu_run_killed_and_resumed("gpu", tmp_path)
    assert 0 < progress < reference.optimizer.iterations == resumed.optimizer.iterations
    for ours, theirs in zip(resumed.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
