"""Global defaults, Keras style: the float dtype new layers use and their dtype policy (mixed
precision), the threads a batch is split across, which kernels the engine runs (compiled, or
the NumPy reference), and the device.

>>> import cnnlab
>>> cnnlab.config.floatx()
'float32'
"""

import contextlib
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


# --- dtype policies: Keras' mixed precision -------------------------------------------------------
#: the policies a layer may have: its variables' dtype and the dtype it computes in
_POLICIES = {"float32": ("float32", "float32"), "float64": ("float64", "float64"),
             "mixed_bfloat16": ("float32", "bfloat16")}
_UNSUPPORTED_POLICIES = {
    "mixed_float16": "float16 needs loss scaling and NumPy has no float16 GEMM",
    "float16": "float16 variables lose most updates to rounding",
    "bfloat16": "bfloat16 variables lose most updates to rounding"}


class DTypePolicy:
    """Keras' dtype policy: the dtype a layer's variables are kept in and the dtype it computes
    in. ``'float32'`` and ``'float64'`` compute in their own dtype; ``'mixed_bfloat16'`` keeps
    float32 variables and computes in bfloat16 (``engine.precision``: each layer's inputs,
    weights, outputs and gradients rounded to bfloat16; the loss and the optimizer in float32).

    >>> DTypePolicy("mixed_bfloat16").compute_dtype, DTypePolicy("mixed_bfloat16").variable_dtype
    ('bfloat16', 'float32')
    """

    def __init__(self, name: str):
        if isinstance(name, DTypePolicy):
            name = name.name
        if name in _UNSUPPORTED_POLICIES:
            raise ConfigError(f"The dtype policy {name!r} is not supported: "
                              f"{_UNSUPPORTED_POLICIES[name]}. Use 'mixed_bfloat16' for mixed "
                              f"precision (it needs no loss scaling), or one of "
                              f"{sorted(_POLICIES)}.")
        if name not in _POLICIES:
            raise ConfigError(f"A dtype policy must be one of {sorted(_POLICIES)}. Received: "
                              f"{name!r}")
        self.name = name
        self.variable_dtype, self.compute_dtype = _POLICIES[name]

    @property
    def rounds(self) -> bool:
        """Whether a layer of this policy rounds what it computes to a narrower dtype."""
        return self.compute_dtype != self.variable_dtype

    def __eq__(self, other) -> bool:
        return isinstance(other, DTypePolicy) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f'<DTypePolicy "{self.name}">'


_dtype_policy: DTypePolicy | None = None          # None: floatx's own policy


def dtype_policy() -> DTypePolicy:
    """The policy new layers get when they are given no ``dtype`` (Keras'
    ``keras.config.dtype_policy()``): the one set, else the current floatx's."""
    return _dtype_policy if _dtype_policy is not None else DTypePolicy(_floatx)


def set_dtype_policy(policy) -> None:
    """Set the policy of the layers made from now on: ``'mixed_bfloat16'``, ``'float32'``,
    ``'float64'``, a ``DTypePolicy``, or None for floatx's (Keras' ``set_dtype_policy``; also
    ``cnnlab.mixed_precision.set_global_policy``). Layers already made keep theirs."""
    global _dtype_policy
    _dtype_policy = None if policy is None else DTypePolicy(policy)


@contextlib.contextmanager
def dtype_policy_scope(policy):
    """``with dtype_policy_scope('mixed_bfloat16'):`` layers made inside get ``policy``; the
    setting is as it was after the block."""
    global _dtype_policy
    before = _dtype_policy
    set_dtype_policy(policy)
    try:
        yield
    finally:
        _dtype_policy = before


def resolve_policy(dtype) -> DTypePolicy:
    """A layer's ``dtype`` argument as its policy: None means :func:`dtype_policy`; a policy
    name or a ``DTypePolicy`` is that policy; a float dtype is the policy of that name."""
    if dtype is None:
        return dtype_policy()
    if isinstance(dtype, DTypePolicy):
        return dtype
    if isinstance(dtype, str) and (dtype in _POLICIES or dtype in _UNSUPPORTED_POLICIES):
        return DTypePolicy(dtype)
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in _POLICIES:
        raise ConfigError(f"dtype must be 'float32', 'float64' or a dtype policy "
                          f"('mixed_bfloat16'). Received: dtype={dtype!r}")
    return DTypePolicy(name)


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
    """Use ``count`` threads per batch (1: the plain single-threaded loop). Training steps,
    ``evaluate`` and ``predict`` run BLAS at one thread inside each, so this alone decides how
    many cores they use (``training.parallel``).
    Results are bitwise repeatable for a given thread count; a different count changes the float
    rounding order."""
    global _threads
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"set_threads expects a positive int. Received: {count!r}")
    _threads = count


#: how a batch's shards run (training, evaluation, prediction): "processes" (one forked worker
#: process per shard beyond the first, where the platform forks: Linux; ``training.workers``
#: says why) or "threads" (every shard in this process). CNNLAB_SHARDS sets it at start.
SHARDS = ("processes", "threads")


def shards() -> str:
    """How a batch's shards run: ``'processes'`` or ``'threads'``."""
    return _shards


def set_shards(name: str) -> None:
    """Run a batch's shards (training, evaluation, prediction) in worker ``'processes'`` or in
    ``'threads'`` of this process. The same shards give the same results bit for bit;
    processes are faster, and split smaller batches than threads do (``training.workers``)."""
    global _shards
    _shards = _checked(SHARDS, name, "set_shards's name")


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
_shards = _from_environment("CNNLAB_SHARDS", SHARDS)


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


#: glibc's mallopt parameters, and the values :func:`keep_freed_memory` sets
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 << 20              # glibc's ceiling for it on 64-bit systems
_TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Ask glibc's allocator to keep freed memory for the next allocation instead of handing
    it back to the operating system. Returns whether it could (glibc only; elsewhere nothing
    changes). The same as starting Python with ``MALLOC_MMAP_THRESHOLD_=33554432
    MALLOC_TRIM_THRESHOLD_=1073741824``.

    Why: every training step allocates its activations, gradients and Winograd tiles afresh
    and frees them at its end. By default glibc gives arrays past a size threshold to the
    operating system as their own mappings, and trims freed memory off the heap's top, so the
    next step pays a page fault for every 4 KB it touches again. Measured on 2 cores, fresh
    processes, medians of 20 steps, one run each: ResNet-20 training steps at batch 8
    40.1 -> 25.9 ms, at 16 59.8 -> 48.6 ms, at 32 104.7 -> 74.1 ms, at 128 261.6 -> 210.0 ms;
    the article's network 5.6 -> 5.3 ms (16) and 18.4 -> 18.2 ms (128); PyTorch's ResNet-20
    23.3 -> 21.5, 40.6 -> 35.2 and 276.2 -> 262.6 ms at 8, 16 and 128. The price: the
    process keeps its peak memory until it exits.

    The allocator belongs to the whole process, so importing cnnlab never calls this: a
    program calls it when it wants the speed, and ``cnnlab``'s own command does (it owns its
    process)."""
    import ctypes
    import platform
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and \
        bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
