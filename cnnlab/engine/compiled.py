"""Where the engine's compiled kernels come from: Numba, imported at the first kernel's use (an
import of cnnlab that never reaches one does not pay Numba's 0.2 s).

    kernels = compiled.module("normalization_kernels")   # None: run the NumPy reference

Each kernel module sits beside the NumPy op it speeds up (``normalization_kernels`` beside
``normalization``) and is plain loops over named indices, compiled with ``cache=True``: the
machine code is kept in ``__pycache__`` beside the module, or in Numba's user cache folder when
the package folder is read-only, so only the first run on a machine pays for compiling.
Kernels take no thread count and use no ``prange`` yet: a batch is already split across
``config.threads()`` shards, each running a kernel on its part (which also keeps a step's
result the same for 1 and 2 threads up to the shards' own sums). So every kernel is compiled
``nogil=True``: one that held the GIL would run the shards one after another (measured on
ResNet-20 at 2 threads: 0.547 s a step compiled against 0.521 s on the reference while the
kernels held it, 0.418 s against 0.552 s once they released it).

Threads inside the kernels instead (``prange`` twins of the three Winograd transforms, the
thread count passed in, run where a batch is not split) were measured and dropped, 2 cores,
ResNet-20 training steps: at batch 8, 132 ms a step with OpenMP's threads beside BLAS's, which
spin and take each other's core, and 35-39 ms with BLAS held to one thread, against 36-46 ms
for these serial kernels over the same session; at batch 128, 589 ms unsplit against 353 ms in
shards; a 640x480 face detection took 0.19-0.31 s against 0.165 s. The transforms alone ran
1.8-2.9x faster on two threads, bit for bit the same, but the rest of a step stayed on one
core. To pay, every op of a step would have to use the cores itself, the GEMMs included.

The Winograd convolution's cache-sized pieces shared over the shards' Python threads (BLAS held
to one thread each) where a batch is too small to shard were measured and dropped too. One 3x3
layer alone trained 1.4-1.8x faster at ResNet-20's first two stages at batches 8 and 16
(4.2 -> 2.4 ms, 2.5 -> 1.8 ms) but slower at the third (2.2 -> 3.0 ms) and at batch 1
(0.28 -> 0.70 ms). Whole ResNet-20 steps were not faster: batch 16 went from 60-67 to 71-74 ms,
batch 8 from 52 to 55 ms; a 640x480 face detection from 0.148 to 0.151 s. Each fork-join hands
the GIL over and wakes a thread. Switching BLAS between one and two threads around every region
seems to cost too: interleaved in one process, steps without the sharing ran at 84 ms after
steps with it, against 69 ms in a process of their own.

``config.set_kernels("numpy")`` or ``CNNLAB_KERNELS=numpy`` selects the reference everywhere.
Without Numba (an unsupported platform, a failed import) the reference runs, and one warning
says how to get the compiled kernels.
"""

from __future__ import annotations

import importlib
import warnings

import numpy as np

from cnnlab import config

#: the dtypes every compiled kernel takes: a layer's (``config.set_floatx``); Numba has no
#: float16 arithmetic, so an op handed anything else by a direct call runs its reference
KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_loaded: dict[str, object] = {}
_numba_missing: str | None = None


def module(name: str, *arrays):
    """The kernel module ``cnnlab.engine.<name>`` when compiled kernels are on and Numba
    imports, else None (the caller runs its NumPy reference). ``arrays``: the op's inputs;
    None where one is not a NumPy array (a CuPy array runs the reference, on its own module:
    the kernels are CPU code)."""
    global _numba_missing
    if config.kernels() != "numba" or _numba_missing is not None:
        return None
    for array in arrays:                    # a loop, not any(): a step makes ~1,000 of these calls
        if type(array) is not np.ndarray:
            return None
    if name not in _loaded:
        try:
            _loaded[name] = importlib.import_module(f"cnnlab.engine.{name}")
        except ImportError as exc:
            _numba_missing = str(exc)
            warnings.warn(f"cnnlab's compiled kernels need Numba ({exc}); running the NumPy "
                          f"reference, which is slower. pip install numba to get them.",
                          RuntimeWarning, stacklevel=3)
            return None
    return _loaded[name]
