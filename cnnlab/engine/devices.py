"""Which device a model runs on: ``config.device()`` (``'auto'``, ``'cpu'`` or ``'gpu'``,
also ``CNNLAB_DEVICE`` and ``--device``) resolved against what this machine has.

    resolve()        # 'cpu' or 'gpu'; asking for 'gpu' where it cannot be had is a ConfigError
                     # that says what was looked for and how to get it

The GPU is CuPy's (``pip install 'cnnlab[gpu]'``). Every op of the zoo's networks takes its
array module from its inputs (``engine.arrays``), and ``training.placement`` keeps a model's
variables, optimizer slots and batches on the device it runs on. Both are tested on a stand-in
for CuPy (``tests/test_arrays.py``, ``tests/test_placement.py``); on CuPy itself only where
there is a GPU (``tests/test_gpu.py``), and none has run them yet. Until they pass on one,
``GPU_ENGINE`` stays False and every model runs on the CPU: ``'auto'`` resolves to it, and
``'gpu'`` says why it cannot be had, even where CuPy sees a device.
"""

from __future__ import annotations

import functools

from cnnlab import config
from cnnlab.errors import ConfigError

#: whether models may run on CuPy; False until ``tests/test_gpu.py`` has passed on a GPU
GPU_ENGINE = False
INSTALL = "pip install 'cnnlab[gpu]' (CuPy for CUDA 13) or 'cnnlab[gpu-cuda12]' (CUDA 12)"


@functools.lru_cache(maxsize=1)
def cupy_devices() -> tuple[int, str | None]:
    """``(CUDA devices CuPy sees, why it sees none or None)``. Asked once: the answer (CuPy's
    import, the driver's device count) does not change while the process runs."""
    try:
        import cupy
    except ImportError as exc:
        return 0, f"CuPy is not installed ({exc}); {INSTALL}"
    except Exception as exc:                   # CuPy is there, its CUDA libraries are not
        return 0, f"CuPy failed to import ({type(exc).__name__}: {exc}); reinstall it: {INSTALL}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:                   # no driver, or no device the driver can see
        return 0, f"CuPy found no CUDA device ({type(exc).__name__}: {exc})"
    return (count, None) if count else (0, "CuPy found no CUDA device (the driver reports 0)")


def gpu_unavailable() -> str | None:
    """Why this process cannot run models on a GPU, in words; None when it can."""
    count, why = cupy_devices()
    if why is None and not GPU_ENGINE:
        why = (f"CuPy sees {count} CUDA device{'s' * (count > 1)}, but cnnlab's engine runs on "
               f"the CPU only for now (its GPU path is not yet tested on a GPU)")
    return why


def gpu_name() -> str:
    """The name of the CUDA device CuPy uses (``'NVIDIA H200'``), for the one line that says
    where a command runs."""
    import cupy
    try:
        name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
    except Exception:                          # a driver that will not say: the device anyway
        return "CUDA device"
    return name.decode() if isinstance(name, bytes) else str(name)


def resolve(setting: str | None = None) -> str:
    """``'cpu'`` or ``'gpu'``: where a model runs under ``setting`` (default: the current
    ``config.device()``). ``'auto'`` takes the GPU only when it can be used; ``'gpu'`` where it
    cannot is a ConfigError that says why. Every fit, evaluate and predict asks, so ``'auto'``
    without a GPU engine answers without looking for CuPy."""
    setting = setting or config.device()
    if setting == "cpu" or (setting == "auto" and not GPU_ENGINE):
        return "cpu"
    reason = gpu_unavailable()
    if reason is None:
        return "gpu"
    if setting == "gpu":
        raise ConfigError(f"The GPU was asked for (device 'gpu'), but {reason}. Run on the CPU "
                          f"with --device cpu (cnnlab.config.set_device('cpu')), or 'auto' to "
                          f"use a GPU only when one can be used.")
    return "cpu"
