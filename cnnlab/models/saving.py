"""The ``.cnnlab`` file: one zip of ``.npy`` members (an npz), never a pickle.

Members::

    format            JSON {"format": "cnnlab", "kind": "model" | "weights", "version": 1}
    model             JSON {"class_name": "Sequential", "config": ..., "compile": ..., "history": ...}
    weights/0000 ...  one array per parameter, in ``model.get_weights()`` order
    optimizer/...     the optimizer's step count and slots, for resuming training

Loading trusts nothing: the format and version are checked, layer classes must be in the
registry, every argument goes through the layer's own validation, and every weight's shape and
dtype is checked from its header against the shapes the architecture needs *before* it is read.
"""

from __future__ import annotations

import os

import numpy as np

import cnnlab
from cnnlab import losses as losses_module
from cnnlab import optimizers as optimizers_module
from cnnlab.errors import CnnlabError, ModelFileError
from cnnlab.fileio import ArchiveReader, json_array, write_archive
from cnnlab.layers.base import layer_class
from cnnlab.models import checkpoint

FORMAT = "cnnlab"
VERSION = 1
MAX_LAYERS = 1000
MAX_INPUT_ELEMENTS = 2**28       # per sample: bigger than any image a CPU model would take


def _arrays_for(model, kind: str, include_optimizer: bool) -> dict[str, np.ndarray]:
    arrays = {"format": json_array({"format": FORMAT, "kind": kind, "version": VERSION,
                                    "cnnlab_version": cnnlab.__version__})}
    document = {"class_name": type(model).__name__, "config": model.get_config()}
    if kind == "model":
        if model.loss is not None:
            document["compile"] = {
                "optimizer": optimizers_module.serialize(model.optimizer),
                "loss": losses_module.serialize(model.loss),
                "metrics": [m for m in model._metric_names if isinstance(m, str)]}
        if model.history is not None and model.history.history:
            document["history"] = model.history.history
        if model.metadata:
            document["metadata"] = model.metadata
        record = checkpoint.capture(model)
        if record is not None:                 # saved during fit: where training is
            arrays["training"] = json_array(record)
    arrays["model"] = json_array(document)
    for i, weight in enumerate(model.weights):
        arrays[f"weights/{i:04d}"] = weight
    if kind == "model" and include_optimizer and model.optimizer is not None:
        for key, value in model.optimizer.state_arrays().items():
            arrays[f"optimizer/{key}"] = np.asarray(value)
    return arrays


def save_model(model, filepath, include_optimizer: bool = True) -> None:
    model._require_built()
    write_archive(filepath, _arrays_for(model, "model", include_optimizer))


def save_weights(model, filepath) -> None:
    model._require_built()
    write_archive(filepath, _arrays_for(model, "weights", False))


def _check_format(reader: ArchiveReader) -> dict:
    header = reader.json("format")
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ModelFileError(f"{reader.path!r} is not a cnnlab file (format {header!r}).")
    if header.get("version") != VERSION:
        raise ModelFileError(f"{reader.path!r} is format version {header.get('version')!r}; this "
                             f"cnnlab ({cnnlab.__version__}) reads version {VERSION}.")
    return header


def _layers_from(reader: ArchiveReader, document) -> tuple[list, tuple[int, ...], str]:
    """Construct (without allocating) the layers a document describes."""
    where = reader.path
    if not isinstance(document, dict) or document.get("class_name") != "Sequential" \
            or not isinstance(document.get("config"), dict):
        raise ModelFileError(f"{where!r}: the model description is not a Sequential model.")
    config = document["config"]
    entries = config.get("layers")
    if not isinstance(entries, list) or not 0 < len(entries) <= MAX_LAYERS:
        raise ModelFileError(f"{where!r}: expected a list of 1 to {MAX_LAYERS} layers.")
    input_shape = config.get("input_shape")
    if not isinstance(input_shape, list) or not input_shape or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape) \
            or np.prod(input_shape, dtype=np.float64) > MAX_INPUT_ELEMENTS:
        raise ModelFileError(f"{where!r}: invalid input shape {input_shape!r}.")
    layers = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
            raise ModelFileError(f"{where!r}: layer {index} is not a {{class_name, config}} entry.")
        try:
            cls = layer_class(entry.get("class_name"))
        except CnnlabError as exc:
            raise ModelFileError(f"{where!r}: layer {index}: {exc}") from None
        try:
            layers.append(cls.from_config(entry["config"]))
        except (CnnlabError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{where!r}: layer {index} ({entry['class_name']}) has an "
                                 f"invalid configuration: {exc}") from None
    return layers, tuple(input_shape), config.get("name")


def _expected_weights(layers, input_shape, where) -> list[tuple[str, tuple[int, ...]]]:
    """Every parameter's shape, by walking the architecture with shapes only."""
    expected, shape = [], input_shape
    for layer in layers:
        try:
            layer._check_rank(len(shape) + 1, shape)
            expected += [(f"{layer.name}/{name}", s) for name, s in layer.weight_shapes(shape)]
            shape = tuple(layer.compute_output_shape(shape))
        except CnnlabError as exc:
            raise ModelFileError(f"{where!r}: the architecture is inconsistent at layer "
                                 f"{layer.name!r}: {exc}") from None
    return expected


def _read_weights(reader, expected, where) -> list[np.ndarray]:
    names = sorted(n for n in reader.names() if n.startswith("weights/"))
    if len(names) != len(expected):
        raise ModelFileError(f"{where!r} holds {len(names)} weight arrays; its architecture "
                             f"needs {len(expected)}.")
    arrays = []
    for name, (label, shape) in zip(names, expected):
        _, dtype = reader.header(name)
        if dtype.kind != "f":
            raise ModelFileError(f"{where!r}: weight {label!r} has dtype {dtype}; expected float.")
        array = reader.array(name, expected_shape=shape)
        if not np.isfinite(array).all():
            raise ModelFileError(f"{where!r}: weight {label!r} contains NaN or Inf.")
        arrays.append(array)
    return arrays


def load_model(filepath, compile: bool = True):
    """Rebuild a model saved with ``model.save``: architecture, weights, optimizer state."""
    from cnnlab.models.sequential import Sequential
    where = os.fspath(filepath)
    with ArchiveReader(where) as reader:
        header = _check_format(reader)
        document = reader.json("model")
        layers, input_shape, name = _layers_from(reader, document)
        expected = _expected_weights(layers, input_shape, where)
        weights = _read_weights(reader, expected, where)
        model = Sequential(name=name if isinstance(name, str) and name else None)
        model.input_shape = input_shape
        for layer in layers:
            model.add(layer)
        model.set_weights(weights)
        if header.get("kind") == "model" and compile and isinstance(document.get("compile"), dict):
            _restore_compile(model, reader, document["compile"], where)
        if isinstance(document.get("metadata"), dict):
            model.metadata = document["metadata"]
        if header.get("kind") == "model" and "training" in reader.names():
            model._resume = checkpoint.check(reader.json("training"), where)
        history = document.get("history")
        if isinstance(history, dict):
            from cnnlab.callbacks import History
            model.history = History()
            model.history.history = {str(k): [float(v) for v in values]
                                     for k, values in history.items()
                                     if isinstance(values, list) and all(
                                         isinstance(v, (int, float)) for v in values)}
    return model


def _restore_compile(model, reader, compile_config, where) -> None:
    try:
        optimizer = optimizers_module.get(compile_config.get("optimizer"))
        loss = losses_module.deserialize(compile_config.get("loss"))
        metrics = compile_config.get("metrics") or []
        model.compile(optimizer=optimizer, loss=loss, metrics=list(metrics))
    except (CnnlabError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{where!r}: invalid training configuration: {exc}") from None
    state_names = [n for n in reader.names() if n.startswith("optimizer/")]
    if not state_names:
        return
    params = model.weights
    largest = max((p.nbytes for p in params), default=0)
    state = {n[len("optimizer/"):]: reader.array(n, max_bytes=max(largest, 8))
             for n in state_names}
    optimizer.load_state_arrays(state, params)


def load_weights(model, filepath) -> None:
    """Load weights saved by ``save_weights`` or ``save`` into a model of the same architecture."""
    where = os.fspath(filepath)
    model._require_built()
    with ArchiveReader(where, what="weights file") as reader:
        _check_format(reader)
        expected = [(f"{layer.name}/{n}", w.shape) for layer in model.layers
                    for n, w in zip(layer.weight_names, layer.weights)]
        model.set_weights(_read_weights(reader, expected, where))
