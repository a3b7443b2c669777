"""Merge layers: join two or more branches of a graph (``engine.merge``).

``Add``, ``Subtract``, ``Multiply``, ``Average`` and ``Maximum`` take inputs of one shape;
``Concatenate(axis=-1)`` joins along an axis. A shape mismatch names every input and its shape.

>>> from cnnlab import Input, layers
>>> a, b = Input((8, 8, 16)), Input((8, 8, 16))
>>> layers.Add()([a, b]).shape
(None, 8, 8, 16)
>>> layers.Concatenate()([a, b]).shape
(None, 8, 8, 32)
"""

from __future__ import annotations

from cnnlab.engine import merge as ops
from cnnlab.errors import ConfigError, ShapeError
from cnnlab.layers.base import Layer


class _Merge(Layer):
    """Element-wise merges: ``_forward(xs) -> (out, cache)``, ``_backward(grad, cache) -> grads``."""

    input_count = None               # a list of inputs
    min_inputs, max_inputs = 2, None
    _forward = _backward = None

    def __init__(self, name=None, dtype=None, trainable=True, **kwargs):
        super().__init__(name=name, dtype=dtype, trainable=trainable, **kwargs)

    def _check_shapes(self, input_shape):
        if not isinstance(input_shape, list) or not (
                self.min_inputs <= len(input_shape) <= (self.max_inputs or len(input_shape))):
            count = "exactly 2" if self.max_inputs == 2 else f"at least {self.min_inputs}"
            raise ShapeError(f"{self._describe()} takes a list of {count} inputs; received "
                             f"{input_shape!r}.")
        self._check_compatible(input_shape)

    def _check_compatible(self, shapes):
        if any(tuple(s) != tuple(shapes[0]) for s in shapes):
            raise ShapeError(f"{self._describe()}: inputs must have the same shape; received "
                             + ", ".join(f"input {i} {(None, *s)}" for i, s in enumerate(shapes))
                             + ".")

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def _check_input(self, xs):
        if not isinstance(xs, list):
            raise ShapeError(f"{self._describe()} takes a list of arrays; received one array "
                             f"of shape {getattr(xs, 'shape', None)}.")
        self._check_shapes([x.shape[1:] for x in xs])

    def call(self, xs, ctx):
        return type(self)._forward(xs)

    def call_backward(self, grad, cache, input_grad):
        return type(self)._backward(grad, cache), []


class Add(_Merge):
    """``x_0 + x_1 + ...`` (ResNet's shortcut)."""

    _forward, _backward = staticmethod(ops.add_forward), staticmethod(ops.add_backward)

    def fuses(self, activation, ctx):
        """A ReLU after it runs in the sum's own pass (``graph.fusion``: ResNet's join)."""
        return activation == "relu"

    def call(self, xs, ctx, activation="linear"):
        return ops.add_forward(xs, relu=activation == "relu", free=ctx.free_list)


class Subtract(_Merge):
    """``x_0 - x_1``; exactly two inputs."""

    max_inputs = 2
    _forward, _backward = staticmethod(ops.subtract_forward), staticmethod(ops.subtract_backward)


class Multiply(_Merge):
    """``x_0 * x_1 * ...``, element-wise."""

    _forward, _backward = staticmethod(ops.multiply_forward), staticmethod(ops.multiply_backward)


class Average(_Merge):
    """``(x_0 + x_1 + ...) / k``."""

    _forward, _backward = staticmethod(ops.average_forward), staticmethod(ops.average_backward)


class Maximum(_Merge):
    """The element-wise maximum."""

    _forward, _backward = staticmethod(ops.maximum_forward), staticmethod(ops.maximum_backward)


class Concatenate(_Merge):
    """Join along ``axis`` (default -1, the channels: Inception's branches); every other axis
    must agree."""

    def __init__(self, axis: int = -1, name=None, dtype=None, trainable=True, **kwargs):
        super().__init__(name=name, dtype=dtype, trainable=trainable, **kwargs)
        if isinstance(axis, bool) or not isinstance(axis, int) or axis == 0:
            raise ConfigError(f"{self._describe()}: axis must be a non-batch axis (an int other "
                              f"than 0). Received: axis={axis!r}")
        self.axis = axis

    def _feature_axis(self, rank: int) -> int:
        """``axis`` as an index into a shape without the batch axis."""
        axis = self.axis if self.axis < 0 else self.axis - 1
        if not -rank <= axis < rank:
            raise ShapeError(f"{self._describe()}: axis={self.axis} is out of range for inputs "
                             f"of rank {rank + 1}.")
        return axis % rank

    def _check_compatible(self, shapes):
        ranks = {len(s) for s in shapes}
        axis = self._feature_axis(len(shapes[0]))
        others = {tuple(d for i, d in enumerate(s) if i != axis) for s in shapes}
        if len(ranks) > 1 or len(others) > 1:
            raise ShapeError(f"{self._describe()}: inputs must agree on every axis but axis "
                             f"{self.axis}; received "
                             + ", ".join(f"input {i} {(None, *s)}" for i, s in enumerate(shapes))
                             + ".")

    def compute_output_shape(self, input_shape):
        axis = self._feature_axis(len(input_shape[0]))
        out = list(input_shape[0])
        out[axis] = sum(s[axis] for s in input_shape)
        return tuple(out)

    def call(self, xs, ctx):
        return ops.concatenate_forward(xs, self._feature_axis(xs[0].ndim - 1) + 1)

    def call_backward(self, grad, cache, input_grad):
        return ops.concatenate_backward(grad, cache), []

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}
