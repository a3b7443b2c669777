"""The ``.cnnlab`` file: one zip of ``.npy`` members (an npz), never a pickle.

Members (format version 2)::

    format                         JSON {"format": "cnnlab", "kind": "model" | "weights", "version": 2}
    model                          JSON {"class_name": "Sequential" | "Model", "config": the graph
                                   (layers and their inbound connections), "compile", "history",
                                   "metadata"}
    weights/<layer>/<variable>     one array per variable, by name ('weights/conv2d/kernel';
                                   a nested model's: 'weights/<model>/<layer>/<variable>')
    optimizer/<layer>/<variable>/<slot>, optimizer/iterations
    training                       JSON: where fit was (``training.progress``), in a checkpoint

Version 1 files (a Sequential, weights and optimizer slots by position) still load.

Loading trusts nothing: the format and version are checked, layer classes must be in the
registry, every argument goes through the layer's own validation, the graph is rebuilt without
allocating a single weight (``layers.base.deferred_variables``), and every array's shape and dtype
is checked from its header against the shapes the graph needs *before* it is read.
"""

from __future__ import annotations

import os

import numpy as np

from cnnlab.errors import CnnlabError, ConfigError, ModelFileError
from cnnlab.graph.functional import Functional
from cnnlab.io.files import ArchiveReader, json_array, write_archive
from cnnlab.layers.base import deferred_variables, layer_class, registered_name
from cnnlab.training import losses as losses_module
from cnnlab.training import optimizers as optimizers_module
from cnnlab.training import progress
from cnnlab.version import __version__

FORMAT = "cnnlab"
VERSION = 2
READABLE_VERSIONS = (1, 2)
MAX_LAYERS = 1000
MAX_INPUT_ELEMENTS = 2**28       # per sample: bigger than any image a CPU model would take
# what a file can hold that is not its fault to hold: anything else is a corrupt description
_CONFIG_ERRORS = (CnnlabError, TypeError, ValueError, KeyError, AttributeError, IndexError,
                  OverflowError, RecursionError)


def _arrays_for(model, kind: str, include_optimizer: bool) -> dict[str, np.ndarray]:
    arrays = {"format": json_array({"format": FORMAT, "kind": kind, "version": VERSION,
                                    "cnnlab_version": __version__})}
    document = {"class_name": registered_name(model), "config": model.get_config()}
    if kind == "model":
        if model.loss is not None:
            model._resolve_compile()
            document["compile"] = {
                "optimizer": optimizers_module.serialize(model.optimizer),
                "loss": [None if loss is None else losses_module.serialize(loss)
                         for loss in model.compiled_losses],
                "loss_weights": model.loss_weights,
                "metrics": [m for m in model._metric_names if isinstance(m, str)]}
        if model.history is not None and model.history.history:
            document["history"] = model.history.history
        if model.metadata:
            document["metadata"] = model.metadata
        updates = {name: v.updates for name, v in model.named_variables() if v.updates}
        if updates:                # how settled the moving statistics are (BatchNormalization)
            document["state_updates"] = updates
        record = progress.capture(model)
        if record is not None:                 # saved during fit: where training is
            arrays["training"] = json_array(record)
    arrays["model"] = json_array(document)
    for name, variable in model.named_variables():
        arrays[f"weights/{name}"] = variable.numpy()
    if kind == "model" and include_optimizer and model.optimizer is not None:
        for key, value in model.optimizer.state_arrays().items():
            arrays[f"optimizer/{key}"] = np.asarray(value)
    return arrays


def _check_extension(filepath) -> None:
    """A file is what its name says: cnnlab writes only ``.cnnlab`` (Keras 3 likewise refuses a
    name other than ``.keras``), so ``m.h5`` is never a zip that h5py then cannot open."""
    name = os.fspath(filepath)
    if not name.endswith(".cnnlab"):
        keras = name.endswith((".h5", ".keras", ".hdf5"))
        note = "; it does not write Keras files" if keras else ""
        raise ConfigError(f"Cannot save to {name!r}: cnnlab writes its own format, a .cnnlab "
                          f"file (a zip of JSON and arrays){note}. Name the file .cnnlab (ONNX: "
                          f"model.export('m.onnx'); PyTorch: cnnlab.export.to_torch).")


def save_model(model, filepath, include_optimizer: bool = True) -> None:
    _check_extension(filepath)
    model._require_built()
    write_archive(filepath, _arrays_for(model, "model", include_optimizer))


def save_weights(model, filepath) -> None:
    _check_extension(filepath)
    model._require_built()
    write_archive(filepath, _arrays_for(model, "weights", False))


def _check_format(reader: ArchiveReader) -> dict:
    header = reader.json("format")
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ModelFileError(f"{reader.path!r} is not a cnnlab file (format {header!r}).")
    version = header.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
        raise ModelFileError(f"{reader.path!r} is format version {version}, written by a newer "
                             f"cnnlab ({header.get('cnnlab_version')!r}); this cnnlab "
                             f"({__version__}) reads versions up to {VERSION}. Upgrade "
                             f"cnnlab to load it.")
    if version not in READABLE_VERSIONS:
        raise ModelFileError(f"{reader.path!r} has an invalid format version {version!r}.")
    return header


def _check_input_shapes(config, where) -> None:
    """Every input's shape is sane before anything is built from it."""
    shapes = []
    if "input_shape" in config:                                    # Sequential
        shapes.append(config["input_shape"])
    for entry in config.get("layers", []) if isinstance(config.get("layers"), list) else []:
        if isinstance(entry, dict) and entry.get("class_name") == "InputLayer":
            shapes.append((entry.get("config") or {}).get("shape"))
    for shape in shapes:
        if shape is None and "input_shape" in config:
            continue
        if not isinstance(shape, list) or not shape or not all(
                isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape) \
                or np.prod(shape, dtype=np.float64) > MAX_INPUT_ELEMENTS:
            raise ModelFileError(f"{where!r}: invalid input shape {shape!r}.")


def _model_from(document, where, model_classes):
    """The model a document describes, built without allocating its variables. Its class is
    looked up in ``model_classes`` (the models floor passes its own), then among the classes
    the user registered (a subclass of Model)."""
    if not isinstance(document, dict) or not isinstance(document.get("config"), dict):
        raise ModelFileError(f"{where!r}: the model description is not a {{class_name, config}} "
                             f"document.")
    config = document["config"]
    layers = config.get("layers")
    if not isinstance(layers, list) or not 0 < len(layers) <= MAX_LAYERS:
        raise ModelFileError(f"{where!r}: expected a list of 1 to {MAX_LAYERS} layers.")
    _check_input_shapes(config, where)
    try:
        name = document.get("class_name")
        cls = model_classes[name] if name in model_classes else layer_class(name)
        if not (isinstance(cls, type) and issubclass(cls, Functional)):
            raise ModelFileError(f"{where!r}: {document.get('class_name')!r} is not a model.")
        with deferred_variables():
            model = cls.from_config(config)
        if not model.built:
            raise ModelFileError(f"{where!r}: the model has no input shape.")
    except ModelFileError:
        raise
    except _CONFIG_ERRORS as exc:
        raise ModelFileError(f"{where!r}: the model's graph is invalid: {exc}") from None
    return model


def _fill_variables(reader, model, where, version: int) -> None:
    """Read every variable's array, checked against its shape first, into the model."""
    named = model.named_variables()
    if version == 1:                                 # by position, in the model's order
        stored = sorted(n for n in reader.names() if n.startswith("weights/"))
        if len(stored) != len(named):
            raise ModelFileError(f"{where!r} holds {len(stored)} weight arrays; its "
                                 f"architecture needs {len(named)}.")
    else:
        stored = [f"weights/{name}" for name, _ in named]
        expected = set(stored)
        present = {n for n in reader.names() if n.startswith("weights/")}
        if present != expected:
            missing, extra = sorted(expected - present), sorted(present - expected)
            raise ModelFileError(f"{where!r}: the weights do not match the graph"
                                 + (f"; missing {missing[:5]}" if missing else "")
                                 + (f"; unexpected {extra[:5]}" if extra else "") + ".")
    arrays = []                                     # all read and checked before any is used
    for member, (name, variable) in zip(stored, named):
        shape, dtype = variable.pending if variable.pending else (variable.value.shape,
                                                                  variable.value.dtype)
        _, stored_dtype = reader.header(member)
        if stored_dtype.kind != "f":
            raise ModelFileError(f"{where!r}: weight {name!r} has dtype {stored_dtype}; expected "
                                 f"float.")
        array = reader.array(member, expected_shape=shape)
        if not np.isfinite(array).all():
            raise ModelFileError(f"{where!r}: weight {name!r} contains NaN or Inf.")
        arrays.append(np.ascontiguousarray(array, dtype=dtype))
    for (_, variable), array in zip(named, arrays):
        if variable.pending:
            variable.value, variable.pending = array, None
        else:
            variable.assign(array)


def load_model(filepath, compile: bool = True, model_classes: dict | None = None):
    """Rebuild a model saved with ``model.save``: graph, weights, optimizer state.
    ``model_classes``: ``{class name: class}`` for the model itself; ``cnnlab.models.load_model``
    passes Model and Sequential (this floor is below them and does not import them)."""
    where = os.fspath(filepath)
    with ArchiveReader(where) as reader:
        header = _check_format(reader)
        document = reader.json("model")
        if header["version"] == 1 and (not isinstance(document, dict)
                                       or document.get("class_name") != "Sequential"):
            raise ModelFileError(f"{where!r}: the model description is not a Sequential model.")
        model = _model_from(document, where, model_classes or {})
        _fill_variables(reader, model, where, header["version"])
        if header.get("kind") == "model" and compile and isinstance(document.get("compile"), dict):
            _restore_compile(model, reader, document["compile"], where, header["version"])
        if isinstance(document.get("metadata"), dict):
            model.metadata = document["metadata"]
        updates = document.get("state_updates")
        if isinstance(updates, dict):
            for name, variable in model.named_variables():
                count = updates.get(name)
                if isinstance(count, int) and not isinstance(count, bool) and count > 0:
                    variable.updates = count
        if header.get("kind") == "model" and "training" in reader.names():
            model._resume = progress.check(reader.json("training"), where)
        history = document.get("history")
        if isinstance(history, dict):
            from cnnlab.training.callbacks import History
            model.history = History()
            model.history.history = {str(k): [float(v) for v in values]
                                     for k, values in history.items()
                                     if isinstance(values, list) and all(
                                         isinstance(v, (int, float)) for v in values)}
    return model


def _restore_compile(model, reader, compile_config, where, version) -> None:
    try:
        optimizer = optimizers_module.get(compile_config.get("optimizer"))
        loss = compile_config.get("loss")
        losses = [None if spec is None else losses_module.deserialize(spec)
                  for spec in (loss if isinstance(loss, list) else [loss])]
        weights = compile_config.get("loss_weights")
        model.compile(optimizer=optimizer, loss=losses if len(losses) > 1 else losses[0],
                      metrics=list(compile_config.get("metrics") or []),
                      loss_weights=weights if isinstance(weights, list) else None)
        model._resolve_compile()
    except _CONFIG_ERRORS as exc:
        raise ModelFileError(f"{where!r}: invalid training configuration: {exc}") from None
    names = [n for n in reader.names() if n.startswith("optimizer/")]
    if not names:
        return
    params = dict(model.named_trainable_params())
    largest = max((v.value.nbytes for v in params.values()), default=0)
    state = {}
    for member in names:
        key = member[len("optimizer/"):]
        if version == 1 and key != "iterations":    # by position among the trainable parameters
            index, _, slot = key.partition("/")
            if not index.isdigit() or int(index) >= len(params):
                raise ModelFileError(f"Optimizer state has an unexpected entry {key!r} for "
                                     f"{type(optimizer).__name__} with {len(params)} "
                                     f"parameters.")
            key = f"{list(params)[int(index)]}/{slot}"
        state[key] = reader.array(member, max_bytes=max(largest, 8))
    optimizer.load_state_arrays(state, {name: v.value for name, v in params.items()})


def load_weights(model, filepath) -> None:
    """Load weights saved by ``save_weights`` or ``save`` into a model of the same graph."""
    where = os.fspath(filepath)
    model._require_built()
    with ArchiveReader(where, what="weights file") as reader:
        header = _check_format(reader)
        _fill_variables(reader, model, where, header["version"])
