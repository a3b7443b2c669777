"""Core layers: ``Input``, ``Dense``, ``Flatten``, ``Dropout``, ``Activation``, ``ReLU``, ``Softmax``.

>>> import numpy as np
>>> from cnnlab import layers
>>> layers.Flatten()(np.zeros((2, 4, 4, 64))).shape
(2, 1024)
>>> layers.Dense(10, activation='softmax')(np.zeros((2, 1024))).shape
(2, 10)
"""

from __future__ import annotations

import numpy as np

from cnnlab import seeding
from cnnlab.engine.activations import (
    dropout_backward,
    dropout_forward,
    elu_backward,
    elu_forward,
    leaky_relu_backward,
    leaky_relu_forward,
)
from cnnlab.engine.dense import dense_backward, dense_forward, flatten_backward, flatten_forward
from cnnlab.errors import ConfigError, ShapeError
from cnnlab.layers.base import Layer, check_input_shape, check_positive_int, linear_weights
from cnnlab.layers.symbolic import SymbolicTensor, make_input


class InputLayer(Layer):
    """A model's input: its shape (batch axis excluded) and dtype; passes data through unchanged.
    ``Input(...)`` makes one and returns the symbolic tensor it stands for."""

    input_count = 0

    def __init__(self, shape=None, name=None, dtype=None, input_shape=None, trainable=True):
        shape = shape if shape is not None else input_shape
        if shape is None:
            raise ConfigError("Input: shape is required, e.g. Input(shape=(28, 28, 1)).")
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        self.shape = check_input_shape(tuple(shape) if isinstance(shape, list) else shape,
                                       self._describe())
        if len(self.shape) < 1:
            raise ConfigError(f"{self._describe()}: shape must have at least one axis.")
        self.input_shape = self._output_shape = self.shape
        self.built = True

    def get_config(self):
        return {**super().get_config(), "shape": list(self.shape)}


def Input(shape, dtype=None, name=None) -> SymbolicTensor:  # noqa: N802 (Keras' name)
    """Keras' ``Input(shape=...)``: a symbolic tensor to call layers on (the functional API), or
    the first entry of a ``Sequential``. ``shape`` excludes the batch axis.

    >>> Input((28, 28, 1)).shape
    (None, 28, 28, 1)
    """
    return make_input(InputLayer(shape=shape, name=name, dtype=dtype))


class Dense(Layer):
    """Fully connected: ``out = activation(x @ kernel + bias)``.

    Input ``(N, D_in)`` (or ``(N, ..., D_in)``: applied to the last axis, as Keras does);
    output ``(N, units)``. Kernel ``(D_in, units)``, bias ``(units,)``.
    """

    folds_output_affine = True
    fresh_output = True

    def __init__(self, units: int, activation=None, use_bias: bool = True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 input_shape=None, name=None, dtype=None, trainable=True):
        super().__init__(name=name, dtype=dtype, trainable=trainable, input_shape=input_shape,
                         activation=activation)
        self.units = check_positive_int(units, "units", self._describe())
        self._set_weight_options(use_bias, kernel_initializer, bias_initializer)

    def build_params(self, input_shape):
        self.add_weight("kernel", (input_shape[-1], self.units),            # (D_in, units)
                        self.kernel_initializer)
        if self.use_bias:
            self.add_weight("bias", (self.units,), self.bias_initializer)   # (units,)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def call(self, x, ctx):
        x2 = x.reshape(-1, x.shape[-1])                                     # (N*..., D_in)
        kernel, bias = linear_weights(self, ctx.output_affine)              # (D_in, units)
        out, cache = dense_forward(x2, kernel, bias)                        # (N*..., units)
        return out.reshape(*x.shape[:-1], self.units), (cache, x.shape[:-1])

    def call_backward(self, grad_out, cache, input_grad):
        cache, lead_shape = cache
        grad_x, grad_kernel, grad_bias = dense_backward(
            grad_out.reshape(-1, self.units), cache, input_grad)
        grads = [grad_kernel, grad_bias] if self.use_bias else [grad_kernel]
        return (None if grad_x is None else grad_x.reshape(*lead_shape, -1)), grads

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation,
                "use_bias": self.use_bias, "kernel_initializer": self.kernel_initializer,
                "bias_initializer": self.bias_initializer}


class Flatten(Layer):
    """``(N, H, W, C) -> (N, H*W*C)``, in (H, W, C) order as Keras flattens NHWC."""

    def __init__(self, input_shape=None, name=None, dtype=None, trainable=True):
        super().__init__(name=name, dtype=dtype, trainable=trainable, input_shape=input_shape)

    def compute_output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def _check_input(self, x):
        self._check_rank(x.ndim, x.shape[1:])
        if self.input_shape is not None and x.shape[1:] != self.input_shape:
            raise ShapeError(f"{self._describe()}: was built for inputs of shape "
                             f"(N, {', '.join(map(str, self.input_shape))}); received {x.shape}. "
                             f"The layers after Flatten need exactly that many features.")

    def call(self, x, ctx):
        return flatten_forward(x)

    def call_backward(self, grad_out, cache, input_grad):
        return flatten_backward(grad_out, cache), []


class Dropout(Layer):
    """Inverted dropout: during training, zero each value with probability ``rate`` and scale the
    rest by ``1 / (1 - rate)``; at inference, pass through. Any input shape."""

    def __init__(self, rate: float, seed: int | None = None, input_shape=None, name=None,
                 dtype=None, trainable=True):
        super().__init__(name=name, dtype=dtype, trainable=trainable, input_shape=input_shape)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ConfigError(f"{self._describe()}: rate must be a number in [0, 1). Received: "
                              f"rate={rate!r}")
        self.rate = float(rate)
        self.seed = seed
        self.rng = seeding.new_generator(seed)     # the stream; a sharded call draws its own

    def call(self, x, ctx):
        if not ctx.training or self.rate == 0:
            return x, None
        return dropout_forward(x, self.rate, ctx.generator(self))

    def call_backward(self, grad_out, mask, input_grad):
        return (grad_out if mask is None else dropout_backward(grad_out, mask)), []

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


class Activation(Layer):
    """Applies an activation by name: ``Activation('relu')``. Same code as ``activation='relu'``."""

    def __init__(self, activation, input_shape=None, name=None, dtype=None, trainable=True):
        if activation is None:
            raise ConfigError("Activation: activation is required, e.g. Activation('relu').")
        super().__init__(name=name, dtype=dtype, trainable=trainable, input_shape=input_shape,
                         activation=activation)

    def get_config(self):
        return {**super().get_config(), "activation": self.activation}


class ReLU(Layer):
    """``max(x, 0)``, any shape."""

    def __init__(self, input_shape=None, name=None, dtype=None, trainable=True):
        super().__init__(name=name, dtype=dtype, trainable=trainable, input_shape=input_shape,
                         activation="relu")


class Softmax(Layer):
    """Softmax over the last axis."""

    def __init__(self, axis: int = -1, input_shape=None, name=None, dtype=None, trainable=True):
        super().__init__(name=name, dtype=dtype, trainable=trainable, input_shape=input_shape,
                         activation="softmax")
        if axis != -1:
            raise ConfigError(f"{self._describe()}: only axis=-1 (the last axis) is supported. "
                              f"Received: axis={axis!r}")
        self.axis = axis

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


def _check_number(value, name: str, owner: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) \
            or (positive and value <= 0):
        raise ConfigError(f"{owner}: {name} must be a finite{' positive' if positive else ''} "
                          f"number. Received: {name}={value!r}")
    return float(value)


class LeakyReLU(Layer):
    """``x`` where positive, ``negative_slope * x`` elsewhere (Keras' layer default 0.3; the
    ``'leaky_relu'`` activation string uses Keras' function default, 0.2). Any shape."""

    def __init__(self, negative_slope: float = 0.3, input_shape=None, name=None, dtype=None,
                 trainable=True):
        super().__init__(name=name, dtype=dtype, trainable=trainable, input_shape=input_shape)
        self.negative_slope = _check_number(negative_slope, "negative_slope", self._describe())

    def call(self, x, ctx):
        return leaky_relu_forward(x, self.negative_slope)

    def call_backward(self, grad_out, cache, input_grad):
        return leaky_relu_backward(grad_out, cache), []

    def get_config(self):
        return {**super().get_config(), "negative_slope": self.negative_slope}


class ELU(Layer):
    """``x`` where positive, ``alpha * (exp(x) - 1)`` elsewhere. Any shape."""

    def __init__(self, alpha: float = 1.0, input_shape=None, name=None, dtype=None,
                 trainable=True):
        super().__init__(name=name, dtype=dtype, trainable=trainable, input_shape=input_shape)
        self.alpha = _check_number(alpha, "alpha", self._describe(), positive=True)

    def call(self, x, ctx):
        return elu_forward(x, self.alpha)

    def call_backward(self, grad_out, cache, input_grad):
        return elu_backward(grad_out, cache), []

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}
