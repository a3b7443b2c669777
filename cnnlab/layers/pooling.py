"""Pooling layers: ``MaxPooling2D``, ``AveragePooling2D``, ``GlobalAveragePooling2D``,
``GlobalMaxPooling2D``.

>>> import numpy as np
>>> from cnnlab import layers
>>> layers.MaxPooling2D()(np.zeros((1, 24, 24, 32))).shape     # the article's 2x2, stride 2
(1, 12, 12, 32)
"""

from __future__ import annotations

from cnnlab.engine import pool as pool_ops
from cnnlab.engine import resample
from cnnlab.engine.shapes import as_pair, output_hw, resolve_padding
from cnnlab.errors import ConfigError
from cnnlab.layers.base import Layer


class _Pooling2D(Layer):
    """Shared argument handling; subclasses name the engine functions they call."""

    input_rank = 4
    _forward = _backward = None

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", input_shape=None,
                 name=None, dtype=None, trainable=True):
        super().__init__(name=name, dtype=dtype, trainable=trainable, input_shape=input_shape)
        owner = self._describe()
        self.pool_size = as_pair(pool_size, "pool_size", owner)
        # Keras: strides default to the pool size, so windows tile the image without overlap.
        self.strides = as_pair(strides, "strides", owner) if strides is not None else self.pool_size
        if not isinstance(padding, str) or padding.lower() not in ("valid", "same"):
            raise ConfigError(f"{owner}: padding must be 'valid' or 'same'. Received: "
                              f"padding={padding!r}")
        self.padding = padding.lower()

    def pads_for(self, input_hw):
        return resolve_padding(self.padding, input_hw, self.pool_size, self.strides)

    def compute_output_shape(self, input_shape):
        hw = (input_shape[0], input_shape[1])
        return (*output_hw(hw, self.pool_size, self.strides, self.pads_for(hw)), input_shape[2])

    def call(self, x, ctx):
        return type(self)._forward(x, self.pool_size, self.strides, self.pads_for(x.shape[1:3]))

    def call_backward(self, grad_out, cache, input_grad):
        return type(self)._backward(grad_out, cache), []

    def get_config(self):
        return {**super().get_config(), "pool_size": list(self.pool_size),
                "strides": list(self.strides), "padding": self.padding}


class MaxPooling2D(_Pooling2D):
    """The maximum of each ``pool_size`` window. Input ``(N, H, W, C)``, output ``(N, Ho, Wo, C)``."""

    _forward = staticmethod(pool_ops.max_pool2d_forward)
    _backward = staticmethod(pool_ops.max_pool2d_backward)
    fresh_output = True           # a new (or recycled) array: the ReLU moved after it runs in place

    def call(self, x, ctx):
        # at inference nobody asks where each maximum was (unless an attribution method will
        # backpropagate): skip tracking it
        return pool_ops.max_pool2d_forward(x, self.pool_size, self.strides,
                                           self.pads_for(x.shape[1:3]), keep_cache=ctx.keep_cache,
                                           free=ctx.free_list)


class AveragePooling2D(_Pooling2D):
    """The mean of each window's real (unpadded) cells. ``(N, H, W, C) -> (N, Ho, Wo, C)``."""

    _forward = staticmethod(pool_ops.avg_pool2d_forward)
    _backward = staticmethod(pool_ops.avg_pool2d_backward)


class _GlobalPooling2D(Layer):
    """One number per feature map: ``(N, H, W, C) -> (N, C)``; subclasses name the engine's
    forward and backward."""

    input_rank = 4
    _forward = _backward = None

    def __init__(self, input_shape=None, name=None, dtype=None, trainable=True):
        super().__init__(name=name, dtype=dtype, trainable=trainable, input_shape=input_shape)

    def compute_output_shape(self, input_shape):
        return (input_shape[-1],)

    def call(self, x, ctx):
        return type(self)._forward(x)

    def call_backward(self, grad_out, cache, input_grad):
        return type(self)._backward(grad_out, cache), []


class GlobalAveragePooling2D(_GlobalPooling2D):
    """The mean of each feature map: ``(N, H, W, C) -> (N, C)``."""

    _forward = staticmethod(pool_ops.global_avg_pool2d_forward)
    _backward = staticmethod(pool_ops.global_avg_pool2d_backward)


class GlobalMaxPooling2D(_GlobalPooling2D):
    """The maximum of each feature map: ``(N, H, W, C) -> (N, C)``."""

    _forward = staticmethod(resample.global_max_pool2d_forward)
    _backward = staticmethod(resample.global_max_pool2d_backward)
