"""Where a training run is, so that a killed run resumes exactly where its last checkpoint was.

A checkpoint is a ``.cnnlab`` model file (weights, optimizer state) plus a ``training`` record:

    epoch, step          the next batch to train: batch ``step`` of epoch ``epoch``
    shuffle_rng          the shuffling generator's state at the start of that epoch (fit's for
                         arrays, an image folder's own for it), so the same permutation is drawn
                         again and the finished batches are skipped
    generators           every random layer's generator state (Dropout, augmentation), by layer
                         name (files before the graph kept a list, 'dropout_rngs', by position)
    partial              the epoch's running loss and metric sums, so its logged loss is exact too
    history, threads     the epochs logged so far, and the thread count (a different count
                         changes the rounding order, so bitwise equality needs the same one)

Resuming restores all of it, so the final weights equal an uninterrupted run's bit for bit.
"""

from __future__ import annotations

import warnings

import numpy as np

from cnnlab import config
from cnnlab.errors import ModelFileError
from cnnlab.training.step import random_layers


def position(model, epoch, step, shuffle_rng, loss_sum, seen, reset_metrics=False) -> dict:
    """Where ``fit`` is: the next batch to train, and the epoch's sums so far."""
    metrics = [[0.0, 0] if reset_metrics else [m.total, m.count]
               for _, m in model.compiled_metrics]
    return {"epoch": epoch, "step": step, "shuffle_rng": shuffle_rng,
            "partial": {"loss_sum": loss_sum, "seen": seen, "metrics": metrics}}


def capture(model) -> dict | None:
    """The training record for a checkpoint written now (None outside ``fit``)."""
    if model.fit_position is None:
        return None
    return {
        **model.fit_position,
        "generators": {layer.name: layer.rng.bit_generator.state
                       for layer in random_layers(model)},
        "history": model.history.history if model.history is not None else {},
        "threads": config.threads(),
    }


def _generator_state(state) -> dict:
    """A PCG64 state that numpy accepts, or ValueError."""
    if not isinstance(state, dict):
        raise ValueError("generator state is not a mapping")
    scratch = np.random.PCG64()
    scratch.state = state                   # numpy validates every field
    return state


def check(record, where: str) -> dict:
    """Validate a training record read from a file, field by field, before fit trusts it."""
    try:
        if not isinstance(record, dict):
            raise ValueError("not a mapping")
        epoch, step = record["epoch"], record["step"]
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**40
                   for v in (epoch, step)):
            raise ValueError("epoch and step must be non-negative integers")
        if record["shuffle_rng"] is not None:        # None: a stream that cannot be rewound
            _generator_state(record["shuffle_rng"])
        if "dropout_rngs" in record:          # before the graph: a list per thread replica
            legacy = record.pop("dropout_rngs")
            if not isinstance(legacy, list) or not all(isinstance(s, list) for s in legacy):
                raise ValueError("dropout states must be lists")
            record["generators"] = legacy[0] if legacy else []
        generators = record.get("generators", {})
        if not isinstance(generators, (dict, list)):
            raise ValueError("generators must map layer names to states")
        for state in (generators.values() if isinstance(generators, dict) else generators):
            _generator_state(state)
        partial = record["partial"]
        float(partial["loss_sum"])
        if not isinstance(partial["seen"], int) or not isinstance(partial["metrics"], list):
            raise ValueError("bad partial sums")
        for pair in partial["metrics"]:
            float(pair[0])
            int(pair[1])
        history = record.get("history", {})
        if not isinstance(history, dict) or not all(
                isinstance(v, list) and all(isinstance(n, (int, float)) for n in v)
                for v in history.values()):
            raise ValueError("history must map names to lists of numbers")
        if record.get("threads") is not None and not isinstance(record["threads"], int):
            raise ValueError("threads must be an integer")
    except (KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
        raise ModelFileError(f"{where!r}: invalid training record ({exc}).") from None
    return record


def restore_generators(model, record) -> None:
    """Put every random layer's generator back where the checkpoint had it."""
    layers = random_layers(model)
    states = record.get("generators", {})
    if isinstance(states, list):                   # an old file: by position
        if len(states) != len(layers):
            raise ModelFileError("The checkpoint's dropout state does not match the model.")
        states = {layer.name: state for layer, state in zip(layers, states)}
    if set(states) != {layer.name for layer in layers}:
        raise ModelFileError(f"The checkpoint has generator states for {sorted(states)}; the "
                             f"model's random layers are {[layer.name for layer in layers]}.")
    for layer in layers:
        try:
            layer.rng.bit_generator.state = states[layer.name]
        except (TypeError, ValueError, KeyError) as exc:
            raise ModelFileError(f"Invalid generator state in checkpoint: {exc}") from None
    if record.get("threads") not in (None, config.threads()):
        warnings.warn(f"This checkpoint was written with {record['threads']} threads and this "
                      f"run uses {config.threads()}: training resumes, but the result will differ "
                      f"from an uninterrupted run in the last bits. Call "
                      f"cnnlab.config.set_threads({record['threads']}) for an exact resume.",
                      RuntimeWarning, stacklevel=3)
