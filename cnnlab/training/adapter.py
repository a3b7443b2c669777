"""One data adapter for every kind of data ``fit``, ``evaluate`` and ``predict`` take: arrays
(one, a list or a dict per model input), and streams (any iterable of ``(x, y)`` batches, such as
``image_dataset_from_directory``). An epoch is a sequence of :class:`Batch`; over MPI each rank
reads only its shard of every global batch.

Arrays are checked once, before the first step; a stream's batches as they come.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from cnnlab.errors import ConfigError, DataError
from cnnlab.training import placement
from cnnlab.training.data import as_float, batch_slices, check_inputs, check_pair


@dataclass
class Batch:
    step: int
    xs: list[np.ndarray]          # one per model input, in the network's dtype
    ys: list                      # one per model output (None when there are no targets)
    size: int                     # samples in the global batch (this rank's part may be fewer)


def as_list(data, names: list[str], what: str, where: str) -> list:
    """One array, a list/tuple (one per name) or a dict by name -> a list in ``names`` order."""
    if isinstance(data, dict):
        unknown = sorted(set(data) - set(names))
        missing = [n for n in names if n not in data]
        if unknown or missing:
            raise DataError(f"{where}: {what} is a dict with keys {sorted(data)}; the model's "
                            f"{what} are named {names}"
                            + (f" (missing {missing})" if missing else "") + ".")
        return [data[n] for n in names]
    if len(names) > 1:
        if not isinstance(data, (list, tuple)) or len(data) != len(names):
            count = len(data) if isinstance(data, (list, tuple)) else "one array"
            raise DataError(f"{where}: the model has {len(names)} {what} {names}; received "
                            f"{count}. Pass a list of {len(names)} arrays or a dict by name.")
        return list(data)
    if isinstance(data, (list, tuple)) and len(data) == 1 and isinstance(data[0], np.ndarray):
        return [data[0]]
    return [data]


class Adapter:
    """Checks and batches the data for one model; ``where`` names the call in errors, and
    ``device`` is where the model runs (``training.placement``): it is moved there with its
    first batch, once that batch's data has passed every check."""

    def __init__(self, model, where: str, device: str):
        self.model, self.where, self.device = model, where, device

    def inputs(self, x) -> list[np.ndarray]:
        """Checked input arrays (the model is built from the first data it sees)."""
        model = self.model
        xs = as_list(x, model.input_names, "inputs", self.where)
        if not model.built:
            model.build(np.asarray(xs[0]).shape[1:])
        xs = [check_inputs(a, shape, self.where) for a, shape in zip(xs, model.input_shapes)]
        if len({len(a) for a in xs}) > 1:
            raise DataError(f"{self.where}: the inputs have different numbers of samples "
                            f"{[len(a) for a in xs]}; they must match.")
        return xs

    def targets(self, y, n: int) -> list[np.ndarray]:
        """Checked targets, one per output, in the form each output's loss takes."""
        model = self.model
        model._resolve_compile()                      # the outputs are known once it is built
        ys = as_list(y, model.output_names, "outputs", self.where) if y is not None else None
        if ys is None:
            check_pair(range(n), None, self.where)
        prepared = []
        for target, loss, shape in zip(ys, model.compiled_losses, model.output_shapes):
            if loss is None:
                prepared.append(None)
                continue
            check_pair(range(n), target, self.where)
            prepared.append(loss.prepare_targets(target, (n, *shape)))
        return prepared

    def floats(self, xs, index) -> list[np.ndarray]:
        """A batch of checked inputs in the network's dtype. The model goes to its device here,
        at its first batch: data that is refused never got it moved."""
        placement.place(self.model, self.device)
        return [as_float(a[index], self.model.dtype) for a in xs]

    def array_epoch(self, xs, ys, batch_size: int, order=None, first_step: int = 0, comm=None):
        """Batches of arrays, in ``order`` (a permutation) or as they are; steps before
        ``first_step`` are skipped without reading them; over MPI each rank takes its shard."""
        n = len(xs[0])
        for step, index in enumerate(batch_slices(n, batch_size, order)):
            if step < first_step:
                continue
            size = (index.stop - index.start) if isinstance(index, slice) else len(index)
            if comm is not None:
                rows = np.arange(n)[index] if isinstance(index, slice) else index
                index = rows[comm.shard(size)]
            yield Batch(step, self.floats(xs, index),
                        [None if y is None else y[index] for y in ys], size)

    def stream_epoch(self, batches, steps: int | None = None, with_targets: bool = True,
                     first_step: int = 0):
        """Checked batches from an iterable of ``(x, y)`` (or of ``x`` without targets) whose
        first item is batch ``first_step`` of the epoch."""
        for step, item in enumerate(batches, start=first_step):
            if steps is not None and step >= steps:
                return
            if with_targets:
                if not isinstance(item, (tuple, list)) or len(item) != 2:
                    raise DataError(f"{self.where}: each batch must be a pair (x, y); received "
                                    f"{type(item).__name__}.")
                x, y = item
            else:
                x = item[0] if isinstance(item, tuple) and len(item) == 2 else item
            xs = self.inputs(x)
            ys = self.targets(y, len(xs[0])) if with_targets else []
            yield Batch(step, self.floats(xs, slice(None)), ys, len(xs[0]))


def split_validation(xs, ys, validation_split):
    """Keras semantics: the *last* ``validation_split`` fraction, taken before any shuffling."""
    if isinstance(validation_split, bool) or not isinstance(validation_split, (int, float)) \
            or not 0 <= validation_split < 1:
        raise ConfigError(f"validation_split must be a number in [0, 1). Received: "
                          f"validation_split={validation_split!r}")
    if validation_split == 0:
        return xs, ys, None
    n = len(xs[0])
    cut = int(n * (1 - validation_split))
    if cut == 0 or cut == n:
        raise DataError(f"validation_split={validation_split} of {n} samples leaves "
                        f"{cut} for training and {n - cut} for validation; both need at "
                        f"least one.")
    return ([a[:cut] for a in xs], [y[:cut] for y in ys],
            ([a[cut:] for a in xs], [y[cut:] for y in ys]))


class ArrayEpochs:
    """The epochs of ``fit`` on arrays: each a permutation drawn from ``rng`` (``fit``'s own), so
    an epoch starts from the generator's state, and a resumed one skips its finished batches."""

    def __init__(self, adapter: Adapter, xs, ys, batch_size: int, shuffle: bool, rng, comm):
        self.adapter, self.xs, self.ys, self.batch_size = adapter, xs, ys, batch_size
        self.shuffle, self.rng, self.comm = shuffle, rng, comm

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def batches(self, state: dict, first_step: int):
        self.rng.bit_generator.state = state
        order = self.rng.permutation(len(self.xs[0])) if self.shuffle else None
        return self.adapter.array_epoch(self.xs, self.ys, self.batch_size, order, first_step,
                                        self.comm)


class StreamEpochs:
    """The epochs of ``fit`` on a stream of batches. A stream with ``state()`` and
    ``epoch_from(state, first_step)`` (cnnlab's image folders) starts each epoch from a state a
    checkpoint can keep, so a resumed run equals an uninterrupted one; any other stream cannot be
    rewound, and a run resumed mid-epoch redoes that epoch (with a warning that says so)."""

    def __init__(self, adapter: Adapter, stream, steps: int | None):
        self.adapter, self.stream, self.steps = adapter, stream, steps
        self.resumable = hasattr(stream, "state") and hasattr(stream, "epoch_from")

    def state(self) -> dict | None:
        return self.stream.state() if self.resumable else None

    def batches(self, state: dict | None, first_step: int):
        if self.resumable and state is not None:
            return self.adapter.stream_epoch(self.stream.epoch_from(state, first_step),
                                             self.steps, first_step=first_step)
        if first_step:
            warnings.warn(f"This {type(self.stream).__name__} cannot skip to batch "
                          f"{first_step}: the interrupted epoch restarts, so the resumed run "
                          f"differs from an uninterrupted one. (Streams with state() and "
                          f"epoch_from(), like image_dataset_from_directory's, resume exactly.)",
                          RuntimeWarning, stacklevel=4)
        return self.adapter.stream_epoch(self.stream, self.steps)
