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


def empty(shape: tuple, dtype, free: FreeList | None) -> np.ndarray:
    """An uninitialised array: from the free list ``free`` (:class:`FreeList`), or a new one
    where there is none."""
    return np.empty(shape, dtype) if free is None else free.take(shape, dtype)


def recycled(workspace: dict | None, key, shape: tuple, dtype) -> np.ndarray:
    """An uninitialised array kept in a call site's ``workspace`` under ``key`` and handed out
    again by the site's next call once nothing else refers to it (:func:`unshared`: the tape
    of the step before no longer does): for what must outlive the forward pass (Winograd's
    kept tiles). ``workspace`` None: a new array."""
    if workspace is None:
        return np.empty(shape, dtype)
    held = workspace.get(key)
    if held is not None and held.shape == tuple(shape) and held.dtype == dtype \
            and unshared(held):
        return held
    held = workspace[key] = np.empty(shape, dtype)
    return held


def derived(workspace: dict | None, key, source: np.ndarray, make, tag=None):
    """``make()``, a value computed from ``source`` (a kernel's spectrum or transform), kept in
    a call site's ``workspace`` under ``key`` and reused while ``source``'s values, compared
    exactly (~20 us for a wide layer's kernel), and ``tag`` are those it was made from: a
    folded BatchNormalization makes a new kernel array at every call, with the same values.
    ``workspace`` None: made afresh."""
    saved = workspace.get(key) if workspace is not None else None
    if saved is not None and saved[1] == tag and saved[0].shape == source.shape \
            and saved[0].dtype == source.dtype and np.array_equal(saved[0], source):
        return saved[2]
    value = make()
    if workspace is not None:
        workspace[key] = (source.copy(), tag, value)
    return value


class FreeList:
    """Arrays kept for reuse by shape and dtype, for the outputs and scratch of forward passes
    (``CallContext.free_list``). :meth:`take` hands out again the most recently taken
    array of a shape that nothing refers to any more (:func:`unshared`'s test: a view, a cache
    or a caller's name would each hold a reference), the one most likely still in cache; else
    a new one.

    Why not glibc's own reuse: arrays past its thresholds (a map of 128 images is megabytes)
    go back to the operating system when freed, so the next call faults every 4 KB of them in
    again (ResNet-20's inference, 128 images on 2 cores: ~10,000 faults a call). Unlike an
    array per call site (:func:`recycled`), an output dead before the pass ends serves the
    next output of its shape in the same pass.

    What it holds stays bounded: :meth:`start_pass` at the top of each forward pass drops the
    arrays the pass before did not take, so a model run on ever new shapes (an image pyramid,
    the last short batch) keeps at most one pass's arrays beyond those in use."""

    def __init__(self):
        self._kept: dict[tuple, list[np.ndarray]] = {}     # (shape, dtype) -> oldest first
        self._taken: set[int] = set()                      # ids taken since start_pass

    def start_pass(self) -> None:
        """A new forward pass begins: forget the kept arrays the previous one never took."""
        for key, kept in list(self._kept.items()):
            kept[:] = [array for array in kept if id(array) in self._taken]
            if not kept:
                del self._kept[key]
        self._taken = set()

    def take(self, shape, dtype) -> np.ndarray:
        key = (shape if type(shape) is tuple else tuple(shape),
               dtype if isinstance(dtype, np.dtype) else np.dtype(dtype))
        kept = self._kept.get(key)
        if kept is None:
            kept = self._kept[key] = []
        for index in range(len(kept) - 1, -1, -1):
            if sys.getrefcount(kept[index]) == 2:        # the list and getrefcount's argument
                array = kept.pop(index)
                break
        else:
            array = np.empty(*key)
        kept.append(array)
        self._taken.add(id(array))
        return array


def on_device(array, module):
    """``array`` on the device of ``module`` (NumPy or CuPy): itself when it is already there."""
    if module is np:
        return to_host(array)
    return module.asarray(array)
