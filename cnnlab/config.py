"""Global defaults, Keras style: the float dtype new layers use, the threads a batch is split
across, which kernels the engine runs (compiled, or the NumPy reference), and the device.

>>> import cnnlab
>>> cnnlab.config.floatx()
'float32'
"""

import os

import numpy as np

from cnnlab.errors import ConfigError

_SUPPORTED_FLOATX = ("float32", "float64")
_floatx = "float32"


def floatx() -> str:
    """The default float dtype of new layers and of data conversions, as a string."""
    return _floatx


def set_floatx(value: str) -> None:
    """Set the default float dtype: ``'float32'`` (fast) or ``'float64'`` (for gradient checks)."""
    global _floatx
    name = np.dtype(value).name if isinstance(value, (str, type, np.dtype)) else value
    if name not in _SUPPORTED_FLOATX:
        raise ConfigError(f"set_floatx expects one of {_SUPPORTED_FLOATX}. Received: {value!r}")
    _floatx = name


def resolve_dtype(dtype) -> np.dtype:
    """``None`` means the current floatx; anything else must name float32 or float64."""
    if dtype is None:
        return np.dtype(_floatx)
    try:
        resolved = np.dtype(dtype)
    except TypeError as exc:
        raise ConfigError(f"dtype must be 'float32' or 'float64'. Received: dtype={dtype!r}") from exc
    if resolved.name not in _SUPPORTED_FLOATX:
        raise ConfigError(f"dtype must be 'float32' or 'float64'. Received: dtype={dtype!r}")
    return resolved


def home_dir():
    """Where cnnlab keeps files between runs (downloaded datasets, the web app's models):
    ``$CNNLAB_HOME``, else ``~/.cache/cnnlab``."""
    from pathlib import Path
    return Path(os.environ.get("CNNLAB_HOME") or Path.home() / ".cache" / "cnnlab")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), which a container or ``taskset``
    may make fewer than the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:          # not on Linux
        return os.cpu_count() or 1


def physical_memory() -> int | None:
    """This machine's physical memory in bytes; None where the system cannot tell (not POSIX)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


_threads = min(usable_cores(), 8)


def threads() -> int:
    """How many threads a training step, ``evaluate`` and ``predict`` split each batch across."""
    return _threads


def set_threads(count: int) -> None:
    """Use ``count`` threads per batch (1: the plain single-threaded loop). Results are bitwise
    repeatable for a given thread count; a different count changes the float rounding order."""
    global _threads
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"set_threads expects a positive int. Received: {count!r}")
    _threads = count


#: "numba": the engine's compiled kernels where it has them (the default); "numpy": the NumPy
#: reference paths everywhere, for tests and debugging. CNNLAB_KERNELS sets it at start.
KERNELS = ("numba", "numpy")


def _checked(choices: tuple, name, where: str) -> str:
    """``name`` if it is one of ``choices``; else a ConfigError naming ``where`` it came from."""
    if name not in choices:
        raise ConfigError(f"{where} must be one of {choices}. Received: {name!r}")
    return name


def _from_environment(variable: str, choices: tuple) -> str:
    return _checked(choices, os.environ.get(variable, choices[0]).strip().lower(), variable)


_kernels = _from_environment("CNNLAB_KERNELS", KERNELS)


def kernels() -> str:
    """Which kernels the engine runs: ``'numba'`` (compiled, where it has them) or ``'numpy'``
    (the reference)."""
    return _kernels


def set_kernels(name: str) -> None:
    """Run the engine's compiled kernels (``'numba'``) or its NumPy reference (``'numpy'``)."""
    global _kernels
    _kernels = _checked(KERNELS, name, "set_kernels's name")


#: where models run: "auto" (the GPU when cnnlab can use one, else the CPU, as Keras does),
#: "cpu", or "gpu" (an error that says why when it cannot be had: ``engine.devices``).
#: CNNLAB_DEVICE sets it at start.
DEVICES = ("auto", "cpu", "gpu")
_device = _from_environment("CNNLAB_DEVICE", DEVICES)


def device() -> str:
    """The device setting: ``'auto'``, ``'cpu'`` or ``'gpu'`` (what it resolves to:
    ``cnnlab.engine.devices.resolve()``)."""
    return _device


def set_device(name: str) -> None:
    """Run models on ``'gpu'``, the ``'cpu'``, or ``'auto'`` (the GPU when one can be used)."""
    global _device
    _device = _checked(DEVICES, name, "set_device's name")
