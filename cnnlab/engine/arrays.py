"""The array module an op computes with, taken from its inputs: NumPy for NumPy arrays, CuPy for
CuPy's (``pip install 'cnnlab[gpu]'``). One lookup at the top of an op,

    xp = array_module(x)

lets the same code run on either wherever NumPy and CuPy spell it the same, instead of a copy
of each op for the GPU. CuPy is imported only when an input is one of its arrays, so a CPU run
never imports it. The ops that take their module this way: the activations (dropout draws
its mask from a NumPy generator and copies it over, so a seed drops the same values on
either), the losses, the merges, Dense and Flatten, BatchNormalization (training and
inference), max, average and global average pooling, convolutions on the im2col path (CuPy's
arrays always take it: the Winograd and frequency paths are CPU code), depthwise convolutions,
the optimizer updates, and the window helpers under them (padding, im2col, col2im, column
sums). Where such an op has a compiled kernel, ``compiled.module(name, *inputs)`` answers None
for CuPy arrays and the op's reference runs on CuPy.

Crossing between the two is explicit, as CuPy itself insists (it refuses to turn its arrays
into NumPy's behind the caller's back): :func:`on_device` copies to the module of a device,
:func:`to_host` back to NumPy. ``training.placement`` uses them to move a model.
"""

from __future__ import annotations

import importlib
import sys

import numpy as np


def _is_cupy(array) -> bool:
    return type(array) is not np.ndarray and type(array).__module__.split(".")[0] == "cupy"


def array_module(*arrays):
    """``cupy`` if any of ``arrays`` is a CuPy array, else ``numpy``."""
    for array in arrays:             # a loop, not any(): every op of a step asks (~2,000 calls)
        if _is_cupy(array):
            return importlib.import_module("cupy")
    return np


def device_module(device: str):
    """The array module of ``'cpu'`` (NumPy) or ``'gpu'`` (CuPy)."""
    return importlib.import_module("cupy") if device == "gpu" else np


def to_host(array, copy: bool = False):
    """``array`` as a NumPy array: a CuPy array is copied off its device; a NumPy one is itself
    (a copy of it with ``copy``); anything else goes through ``np.asarray``."""
    if _is_cupy(array):
        return array.get()
    return np.array(array, copy=True) if copy else np.asarray(array)


def unshared(array) -> bool:
    """Whether ``array`` is a NumPy array that owns writeable memory and that one container
    alone holds, besides the caller's one name for it: so it may be written in place or handed
    out again. CPython's reference count tells, since a cache, another entry, a view of it or a
    caller's variable would each add one."""
    return type(array) is np.ndarray and array.base is None and array.flags.writeable \
        and sys.getrefcount(array) == _ONE_HOLDER


#: ``sys.getrefcount(array)`` in :func:`unshared` when one container holds it: that container,
#: the caller's name, this function's parameter and getrefcount's own argument
_ONE_HOLDER = 4


def recycled(workspace: dict | None, key, shape: tuple, dtype) -> np.ndarray:
    """An uninitialised array for a call site's output, kept in its ``workspace`` and handed
    out again by the site's next call once nothing else refers to it (:func:`unshared`: the
    tape of the step before no longer does). ``workspace`` None: a new array."""
    if workspace is None:
        return np.empty(shape, dtype)
    held = workspace.get(key)
    if held is not None and held.shape == tuple(shape) and held.dtype == dtype \
            and unshared(held):
        return held
    held = workspace[key] = np.empty(shape, dtype)
    return held


def on_device(array, module):
    """``array`` on the device of ``module`` (NumPy or CuPy): itself when it is already there."""
    if module is np:
        return to_host(array)
    return module.asarray(array)
