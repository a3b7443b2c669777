"""Where a training run is, so that a killed run resumes exactly where its last checkpoint was.

A checkpoint is a ``.cnnlab`` model file (weights, optimizer state) plus a ``training`` record:

    epoch, step          the next batch to train: batch ``step`` of epoch ``epoch``
    shuffle_rng          the shuffling generator's state at the start of that epoch, so the same
                         permutation is drawn again and the finished batches are skipped
    dropout_rngs         every Dropout generator's state, of the model and of each thread replica
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


def _random_layers(model) -> list[int]:
    """Layers that draw random numbers in training (Dropout, augmentation): those with an
    ``rng``, the same rule ``Layer.replica`` uses. (The file key keeps its first name,
    'dropout_rngs', so existing checkpoints stay readable.)"""
    return [i for i, layer in enumerate(model._layers) if hasattr(layer, "rng")]


def capture(model) -> dict | None:
    """The training record for a checkpoint written now (None outside ``fit``)."""
    progress = model._progress
    if progress is None:
        return None
    replicas = model._replicas or [model]
    return {
        **progress,
        "dropout_rngs": [[replica._layers[i].rng.bit_generator.state
                          for i in _random_layers(model)] for replica in replicas],
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
        _generator_state(record["shuffle_rng"])
        if not isinstance(record["dropout_rngs"], list) or not all(
                isinstance(states, list) for states in record["dropout_rngs"]):
            raise ValueError("dropout states must be lists")
        for states in record["dropout_rngs"]:
            for state in states:
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


def restore_rngs(model, record) -> None:
    """Put every Dropout generator (model and replicas) back where the checkpoint had it."""
    states = record["dropout_rngs"]
    indices = _random_layers(model)
    if len(states) > 1:
        model._shard_models(len(states))        # create the replicas first: that draws seeds
    replicas = model._replicas or [model]
    for replica, replica_states in zip(replicas, states):
        if len(replica_states) != len(indices):
            raise ModelFileError("The checkpoint's dropout state does not match the model.")
        for i, state in zip(indices, replica_states):
            try:
                replica._layers[i].rng.bit_generator.state = state
            except (TypeError, ValueError, KeyError) as exc:
                raise ModelFileError(f"Invalid generator state in checkpoint: {exc}") from None
    if record.get("threads") not in (None, config.threads()):
        warnings.warn(f"This checkpoint was written with {record['threads']} threads and this "
                      f"run uses {config.threads()}: training resumes, but the result will differ "
                      f"from an uninterrupted run in the last bits. Call "
                      f"cnnlab.config.set_threads({record['threads']}) for an exact resume.",
                      RuntimeWarning, stacklevel=3)
