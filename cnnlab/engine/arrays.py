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
for CuPy arrays and the op's reference runs on CuPy. The training loop still keeps its
variables and batches as NumPy arrays, so the GPU runs no whole model yet
(``engine.devices.GPU_ENGINE``).
"""

from __future__ import annotations

import importlib

import numpy as np


def array_module(*arrays):
    """``cupy`` if any of ``arrays`` is a CuPy array, else ``numpy``."""
    for array in arrays:
        if type(array) is not np.ndarray and type(array).__module__.split(".")[0] == "cupy":
            return importlib.import_module("cupy")
    return np
