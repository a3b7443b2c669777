"""The device setting (``config.set_device``, ``CNNLAB_DEVICE``, ``--device``): where the GPU
cannot be used, asking for it is one clear error before any work, and ``auto`` runs on the
CPU. CuPy is faked here (this machine has none, and no GPU)."""

import subprocess
import sys
import types

import numpy as np
import pytest

import cnnlab
from cnnlab import config
from cnnlab.cli import main
from cnnlab.engine import devices
from cnnlab.errors import ConfigError


@pytest.fixture
def fresh_probe(monkeypatch):
    """Each test asks CuPy afresh, and leaves the device setting as it found it."""
    devices.cupy_devices.cache_clear()
    before = config.device()
    yield monkeypatch
    devices.cupy_devices.cache_clear()
    config.set_device(before)


def _fake_cupy(monkeypatch, count=None, error=None):
    runtime = types.SimpleNamespace()

    def device_count():
        if error is not None:
            raise error
        return count

    runtime.getDeviceCount = device_count
    monkeypatch.setitem(sys.modules, "cupy",
                        types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime)))


def test_asking_for_a_gpu_without_cupy_says_what_to_install(fresh_probe, tmp_path, capsys):
    monkeypatch = fresh_probe
    monkeypatch.setitem(sys.modules, "cupy", None)              # import cupy -> ImportError
    out = tmp_path / "m.cnnlab"
    assert main(["train", "--epochs", "1", "--device", "gpu", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CuPy is not installed" in err
    assert "pip install 'cnnlab[gpu]'" in err and "--device cpu" in err
    assert not out.exists()
    assert config.device() == "auto"                           # --device held for the command
    with pytest.raises(ConfigError, match="CuPy is not installed"):
        config.set_device("gpu")
        cnnlab.zoo.find("digits").predict(np.zeros((1, 28, 28, 1), np.float32), verbose=0)


@pytest.mark.parametrize("count, error, reason", [
    (0, None, "found no CUDA device"),
    (None, RuntimeError("cudaErrorNoDevice"), "found no CUDA device (RuntimeError"),
    (2, None, "sees 2 CUDA devices, but cnnlab's engine runs on the CPU only"),
])
def test_each_reason_a_gpu_cannot_be_used_is_named(fresh_probe, count, error, reason):
    _fake_cupy(fresh_probe, count, error)
    assert reason in devices.gpu_unavailable()
    assert devices.resolve("auto") == "cpu" and devices.resolve("cpu") == "cpu"
    with pytest.raises(ConfigError, match="The GPU was asked for"):
        devices.resolve("gpu")


def test_auto_says_in_one_line_that_it_passed_over_a_gpu_it_saw(fresh_probe, tmp_path, capsys):
    from PIL import Image
    _fake_cupy(fresh_probe, count=1)
    digit = tmp_path / "digit.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(digit)
    assert main(["predict", "digits", "--device", "auto", str(digit)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("Running on the CPU: CuPy sees 1 CUDA device, but cnnlab's engine runs on "
                      "the CPU only for now (its GPU path is not yet tested on a GPU).")
    assert len(out) == 2 and out[1].startswith(f"{digit}: ")


def test_the_device_setting_is_checked():
    with pytest.raises(ConfigError, match=r"set_device's name must be one of \('auto', 'cpu', 'gpu'\)"):
        config.set_device("tpu")
    result = subprocess.run([sys.executable, "-c", "import cnnlab"], capture_output=True,
                            text=True, env={"CNNLAB_DEVICE": "cuda", "PATH": ""})
    assert result.returncode == 1 and "CNNLAB_DEVICE must be one of" in result.stderr


def test_auto_looks_for_no_cupy_while_the_engine_has_no_gpu_path(fresh_probe):
    """Every fit, evaluate and predict resolves the device: 'auto' must not import CuPy (a
    second on first use where it is installed) to learn what cannot change the answer."""
    config.set_device("auto")
    cnnlab.zoo.find("digits").predict(np.zeros((1, 28, 28, 1), np.float32), verbose=0)
    assert devices.cupy_devices.cache_info().misses == 0
