"""What a layer owns and what one call of it is given.

``Variable``: one array a layer owns, with a name and a kind (a trained parameter, or state the
forward pass updates). ``CallContext``: everything one call needs besides its inputs, made by the
caller for that call and never kept by the layer.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import numpy as np

from cnnlab.engine import arrays


@dataclass(eq=False)
class Variable:
    """One array a layer owns. ``kind`` is ``'param'`` (trained by the optimizer when the layer is
    trainable) or ``'state'`` (updated by the forward pass itself, e.g. BatchNormalization's
    moving mean; never trained). Compared and hashed by identity."""

    name: str
    value: np.ndarray | None
    kind: str = "param"
    #: ``(shape, dtype)`` of a variable created under :func:`deferred_variables`, until filled
    pending: tuple | None = None
    #: how many training steps have replaced a state variable's value (saved with the model):
    #: BatchNormalization's moving statistics are only as good as the steps behind them
    updates: int = 0

    def apply_update(self, value) -> None:
        """A state update the forward pass asked for (the new moving average, say)."""
        self.value[...] = value
        self.updates += 1

    def numpy(self, copy: bool = False) -> np.ndarray:
        """The value as a NumPy array, wherever it lives (copied off a GPU; with ``copy``, never
        the live array)."""
        return arrays.to_host(self.value, copy)

    def assign(self, value) -> None:
        """Copy ``value`` (NumPy, or an array on the variable's device) into the live array,
        on whichever device it lives."""
        self.value[...] = arrays.on_device(value, arrays.array_module(self.value))


_deferred = threading.local()


@contextlib.contextmanager
def deferred_variables():
    """Build layers without allocating their variables: each gets ``value=None`` and its
    ``pending`` shape and dtype. A model file's loader builds the graph this way, checks every
    array in the file against those shapes, and only then fills them: a file cannot make cnnlab
    allocate more than it holds."""
    previous = variables_deferred()
    _deferred.on = True
    try:
        yield
    finally:
        _deferred.on = previous


def variables_deferred() -> bool:
    """Whether this thread is inside :func:`deferred_variables`."""
    return getattr(_deferred, "on", False)


class CallContext:
    """Everything one call of a layer (or a graph) may need besides its inputs. Made per call by
    whoever runs it; layers read it and never keep it.

    ``training``        batch statistics, dropout and augmentation on
    ``keep_cache``      a backward pass may follow (always in training; for attribution too)
    ``workspace``       a dict of scratch buffers the caller keeps for this call site, or None
                        (``workspaces`` holds them all, ``scope`` names the site)
    ``state_updates``   ``(variable, new value)`` pairs the call asks for; the caller applies
                        them once per batch, after the step
    ``gradients``       which gradients a backward pass will want of this call: 'all', 'kernel'
                        (parameters only: nothing upstream needs one) or 'none' (no backward);
                        a convolution picks its algorithm by it
    ``output_affine``   ``(scale, shift)`` per output channel that a layer able to (conv, dense:
                        ``folds_output_affine``) folds into its weights for this call: the
                        inference-mode BatchNormalization after it (``graph.fusion``)
    ``output_residual`` an array of the output's shape that a layer able to
                        (``folds_output_residual``) adds to its output before its activation:
                        the other input of the Add after it (``graph.fusion``'s residual join)
    ``output_pool``     ``(PH, PW)``: a layer able to (``folds_output_pool``) runs the max
                        pooling after it (stride = pool, no padding) in its own call and returns
                        the pooled map (``graph.fusion``'s pooled convolution)
    ``output_chain``    ``((layer, (scale, shift) or None, relu), ...)``: a Conv2D (a stem, a
                        1x1 or a depthwise one) runs these 1x1 and depthwise convs after it,
                        each with its folded BatchNormalization and ReLU, in its own call and
                        returns the last one's output (``graph.fusion``'s 7.; inference)
    """

    def __init__(self, training: bool = False, keep_cache: bool | None = None,
                 batch_sum=None, generators=None):
        self.training = bool(training)
        self.keep_cache = self.training if keep_cache is None else bool(keep_cache)
        self.workspaces = None
        self.scope: tuple = ()
        self.workspace: dict | None = None
        self.state_updates: list[tuple[Variable, np.ndarray]] = []
        self.output_affine: tuple[np.ndarray, np.ndarray] | None = None
        self.output_residual: np.ndarray | None = None
        self.output_pool: tuple[int, int] | None = None
        self.output_chain: tuple | None = None
        self.gradients = "all" if self.keep_cache else "none"
        self._batch_sum = batch_sum
        self._generators = generators

    @property
    def free_list(self) -> arrays.FreeList | None:
        """Where an op takes its output from (``engine.arrays.empty``): this thread's free
        list (``engine.arrays.FreeList``), whose arrays nothing refers to any more are handed
        out again, the one freed last first; None where the caller keeps no workspaces.

        Why not fresh arrays: glibc hands large freed blocks back to the system, and the next
        step or call faults every 4 KB of them in again (mobilenet_small's training, 64 images
        on one core: 37,365 page faults a step; ResNet-20's inference, 128 images on 2 cores:
        ~10,000 a call, 75.9-83.1 -> 59.8-67.6 ms a call with the free list, 3 interleaved
        pairs of fresh processes).

        Why not one array per call site, kept from step to step (session 30's way in training):
        a site's array is held even after its last reader, so its memory serves nothing else
        (ResNet-20's BatchNormalization outputs, which no later cache reads, once Winograd keeps
        its transformed tiles instead of its input: peak RSS 814.7 MB with per-site arrays,
        744.5-744.8 MB with the free list, training process and worker), and it is cold by
        the time the site runs again (ResNet-20's inference with per-site outputs: 69 against 63
        ms a batch of 128, one run each)."""
        return None if self.workspaces is None else self.workspaces.free_list

    def sum_over_batch(self, partial: np.ndarray) -> np.ndarray:
        """A sum over this call's samples -> the sum over the whole batch, when the batch is
        split over threads or MPI ranks (every part gets the same total). Identity otherwise."""
        return partial if self._batch_sum is None else self._batch_sum(partial)

    def generator(self, layer) -> np.random.Generator:
        """The random stream ``layer`` draws from in this call (a shard's own when sharded)."""
        if self._generators is not None and layer in self._generators:
            return self._generators[layer]
        return layer.rng

    def child(self) -> CallContext:
        """The context for a nested model's layers: the same call, with buffers of their own."""
        inner = CallContext(self.training, self.keep_cache, self._batch_sum, self._generators)
        inner.state_updates = self.state_updates
        inner.workspaces, inner.scope = self.workspaces, self.scope
        return inner
