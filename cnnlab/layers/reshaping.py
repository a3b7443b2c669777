"""Layers that change a feature map's size without weights: ``ZeroPadding2D``, ``Cropping2D``
and ``UpSampling2D`` (``engine.resample``). Input ``(N, H, W, C)``.

>>> import numpy as np
>>> from cnnlab import layers
>>> layers.ZeroPadding2D(((1, 2), (0, 1)))(np.zeros((1, 4, 4, 3))).shape
(1, 7, 5, 3)
>>> layers.UpSampling2D(2)(np.zeros((1, 4, 4, 3))).shape
(1, 8, 8, 3)
"""

from __future__ import annotations

import numpy as np

from cnnlab.engine import resample
from cnnlab.engine.shapes import as_pair
from cnnlab.errors import ConfigError, ShapeError
from cnnlab.layers.base import Layer


def _edges(value, name: str, owner: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """Keras' forms: ``n`` (all sides), ``(h, w)`` (top = bottom = h, left = right = w), or
    ``((top, bottom), (left, right))``; non-negative ints."""
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, (tuple, list)) for v in value):
        edges = tuple(tuple(v) for v in value)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        edges = ((value[0], value[0]), (value[1], value[1]))
    else:
        edges = ((value, value), (value, value))
    if not all(len(v) == 2 for v in edges) or not all(
            isinstance(e, (int, np.integer)) and not isinstance(e, bool) and e >= 0
            for v in edges for e in v):
        raise ConfigError(f"{owner}: {name} must be an int, (h, w) or ((top, bottom), (left, "
                          f"right)) of non-negative ints. Received: {name}={value!r}")
    return tuple((int(a), int(b)) for a, b in edges)


class ZeroPadding2D(Layer):
    """Zeros around each image: ``(N, H, W, C) -> (N, H + top + bottom, W + left + right, C)``."""

    input_rank = 4

    def __init__(self, padding=(1, 1), input_shape=None, name=None, dtype=None, trainable=True):
        super().__init__(name=name, dtype=dtype, trainable=trainable, input_shape=input_shape)
        self.padding = _edges(padding, "padding", self._describe())

    def compute_output_shape(self, input_shape):
        (t, b), (left, r) = self.padding
        return input_shape[0] + t + b, input_shape[1] + left + r, input_shape[2]

    def call(self, x, ctx):
        return resample.zero_pad_forward(x, self.padding)

    def call_backward(self, grad, cache, input_grad):
        return resample.zero_pad_backward(grad, cache), []

    def get_config(self):
        return {**super().get_config(), "padding": [list(p) for p in self.padding]}


class Cropping2D(Layer):
    """Rows and columns cut from each border: ``(N, H, W, C) -> (N, H - top - bottom,
    W - left - right, C)``."""

    input_rank = 4

    def __init__(self, cropping=((0, 0), (0, 0)), input_shape=None, name=None, dtype=None,
                 trainable=True):
        super().__init__(name=name, dtype=dtype, trainable=trainable, input_shape=input_shape)
        self.cropping = _edges(cropping, "cropping", self._describe())

    def compute_output_shape(self, input_shape):
        (t, b), (left, r) = self.cropping
        h, w = input_shape[0] - t - b, input_shape[1] - left - r
        if h <= 0 or w <= 0:
            raise ShapeError(f"{self._describe()}: cropping {self.cropping} leaves {h} x {w} of "
                             f"an input of {input_shape[0]} x {input_shape[1]}; at least 1 x 1 "
                             f"must stay.")
        return h, w, input_shape[2]

    def call(self, x, ctx):
        return resample.crop_forward(x, self.cropping)

    def call_backward(self, grad, cache, input_grad):
        return resample.crop_backward(grad, cache), []

    def get_config(self):
        return {**super().get_config(), "cropping": [list(c) for c in self.cropping]}


class UpSampling2D(Layer):
    """Each pixel repeated ``size`` times in each direction (nearest neighbour):
    ``(N, H, W, C) -> (N, H * sh, W * sw, C)``."""

    input_rank = 4

    def __init__(self, size=(2, 2), interpolation: str = "nearest", input_shape=None, name=None,
                 dtype=None, trainable=True):
        super().__init__(name=name, dtype=dtype, trainable=trainable, input_shape=input_shape)
        self.size = as_pair(size, "size", self._describe())
        if interpolation != "nearest":
            raise ConfigError(f"{self._describe()}: only interpolation='nearest' is supported. "
                              f"Received: interpolation={interpolation!r}")
        self.interpolation = interpolation

    def compute_output_shape(self, input_shape):
        return input_shape[0] * self.size[0], input_shape[1] * self.size[1], input_shape[2]

    def call(self, x, ctx):
        return resample.upsample_nearest_forward(x, self.size)

    def call_backward(self, grad, cache, input_grad):
        return resample.upsample_nearest_backward(grad, cache), []

    def get_config(self):
        return {**super().get_config(), "size": list(self.size),
                "interpolation": self.interpolation}
