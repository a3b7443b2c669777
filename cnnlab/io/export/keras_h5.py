"""Bring a Keras model's trained weights into cnnlab: read a Keras 3 ``.weights.h5`` file
(``model.save_weights(...)``) with h5py (``pip install 'cnnlab[keras]'``).

Keras 3 stores each layer's variables as ``layers/<layer name>/vars/0, 1, ...`` (kernel, then
bias; BatchNormalization's gamma, beta, moving mean and variance), in Keras' own layouts, which
cnnlab shares: Conv2D ``(KH, KW, C, F)``, Dense ``(in, out)``, and both flatten NHWC in the same
order, so the arrays load unchanged. A functional model's layers are matched by name.

HDF5 lists groups alphabetically, not in model order, so layers are matched by name first, and
otherwise by Keras' automatic names in creation order (``conv2d``, ``conv2d_1``, ...) against
cnnlab's layers of the same type, in order. Every shape is checked before anything is set.
"""

from __future__ import annotations

import re

import numpy as np

from cnnlab.errors import CnnlabError, ModelFileError

_KERAS_PREFIX = {"Conv2D": "conv2d", "Dense": "dense",
                 "BatchNormalization": "batch_normalization"}


def _groups(handle) -> dict[str, list[np.ndarray]]:
    """``{layer name: [var 0, var 1, ...]}`` for every layer group that holds variables."""
    found = {}
    layers = handle.get("layers")
    if layers is None:
        raise ModelFileError("Not a Keras 3 weights file: it has no 'layers' group.")
    for name, group in layers.items():
        variables = group.get("vars")
        if variables is None or not len(variables):
            continue
        keys = sorted(variables.keys(), key=int)
        found[name] = [np.asarray(variables[k]) for k in keys]
    return found


def _order_key(name: str):
    match = re.fullmatch(r"(.*?)(?:_(\d+))?", name)
    return match.group(1), int(match.group(2) or 0)


def load_keras_weights(model, path) -> None:
    """Set ``model``'s weights from a Keras ``.weights.h5`` file of the same architecture."""
    try:
        import h5py
    except ImportError:
        raise CnnlabError("Reading Keras weights needs h5py: pip install 'cnnlab[keras]'") \
            from None
    model._require_built()
    try:
        with h5py.File(path, "r") as handle:
            groups = _groups(handle)
    except (OSError, KeyError, ValueError) as exc:
        raise ModelFileError(f"Cannot read {str(path)!r} as a Keras weights file ({exc}).") \
            from None
    targets = [layer for layer in model.layers if layer.weights]
    by_name = all(layer.name in groups for layer in targets)
    if not by_name:                       # fall back on Keras' automatic names, per layer type
        queues = {}
        for name in sorted(groups, key=_order_key):
            queues.setdefault(_order_key(name)[0], []).append(name)
    plan = []
    for layer in targets:
        if by_name:
            source = layer.name
        else:
            prefix = _KERAS_PREFIX.get(type(layer).__name__)
            queue = queues.get(prefix, [])
            if not queue:
                raise ModelFileError(f"{str(path)!r} has no weights for {layer.name!r} "
                                     f"({type(layer).__name__}); its layers are "
                                     f"{sorted(groups)}.")
            source = queue.pop(0)
        arrays = groups[source]
        expected = [w.shape for w in layer.weights]
        if [a.shape for a in arrays] != expected:
            raise ModelFileError(f"Keras layer {source!r} has weights of shapes "
                                 f"{[a.shape for a in arrays]}; cnnlab layer {layer.name!r} "
                                 f"needs {expected}.")
        if not all(np.isfinite(a).all() for a in arrays):
            raise ModelFileError(f"Keras layer {source!r} has NaN or Inf weights.")
        plan.append((layer, arrays))
    leftover = set(groups) - {layer.name for layer in targets} if by_name else \
        {n for q in queues.values() for n in q}
    if leftover:
        raise ModelFileError(f"{str(path)!r} has weights for layers the model does not have: "
                             f"{sorted(leftover)}.")
    for layer, arrays in plan:
        layer.set_weights(arrays)
