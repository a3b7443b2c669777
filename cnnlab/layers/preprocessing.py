"""Keras' preprocessing layers: ``Rescaling`` and seeded augmentations that are active only in
training (``RandomFlip``, ``RandomTranslation``, ``RandomRotation``, ``RandomZoom``,
``RandomContrast``, ``RandomBrightness``). They sit inside a ``Sequential`` and are saved with
it. Input and output ``(N, H, W, C)``.

>>> import numpy as np
>>> flip = RandomFlip("horizontal", seed=1)
>>> x = np.arange(6.0).reshape(1, 1, 6, 1)
>>> bool((flip(x) == x).all())                  # inference: untouched
True
"""

from __future__ import annotations

import numpy as np

from cnnlab import seeding
from cnnlab.engine import augment
from cnnlab.errors import ConfigError, ShapeError
from cnnlab.layers.base import Layer, check_positive_int

_FILL_MODES = ("reflect", "constant", "nearest", "wrap")


def _factor_range(value, name, owner, symmetric=True) -> tuple[float, float]:
    """Keras' factor argument: ``f`` means ``(-f, f)``; a pair is ``(lower, upper)``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = (-abs(value), abs(value)) if symmetric else (0.0, float(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        low, high = float(value[0]), float(value[1])
    else:
        raise ConfigError(f"{owner}: {name} must be a number or a (lower, upper) pair. "
                          f"Received: {name}={value!r}")
    if low > high:
        raise ConfigError(f"{owner}: {name} lower bound {low} exceeds upper bound {high}.")
    return low, high


class Rescaling(Layer):
    """``x * scale + offset``, always (e.g. ``Rescaling(1/255)`` turns pixels into [0, 1])."""

    def __init__(self, scale, offset=0.0, input_shape=None, name=None, dtype=None,
                 trainable=True):
        super().__init__(name=name, dtype=dtype, trainable=trainable, input_shape=input_shape)
        self.scale, self.offset = float(scale), float(offset)

    def call(self, x, ctx):
        return x * np.asarray(self.scale, x.dtype) + np.asarray(self.offset, x.dtype), None

    def call_backward(self, grad_out, cache, input_grad):
        return grad_out * np.asarray(self.scale, grad_out.dtype), []

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "offset": self.offset}


class _RandomLayer(Layer):
    """Shared: a seeded generator of its own; identity at inference."""

    input_rank = 4

    def __init__(self, seed=None, input_shape=None, name=None, dtype=None, trainable=True):
        super().__init__(name=name, dtype=dtype, trainable=trainable, input_shape=input_shape)
        self.seed = seed
        self.rng = seeding.new_generator(seed)     # the stream; a sharded call draws its own

    def call(self, x, ctx):
        if not ctx.training:
            return x, None
        return self.augment(x, ctx.generator(self))

    def call_backward(self, grad_out, cache, input_grad):
        return (grad_out if cache is None else self.augment_backward(grad_out, cache)), []

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


class RandomFlip(_RandomLayer):
    """Mirror each training image with probability 1/2 along the chosen axes."""

    def __init__(self, mode="horizontal_and_vertical", seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if mode not in ("horizontal", "vertical", "horizontal_and_vertical"):
            raise ConfigError(f"{self._describe()}: mode must be 'horizontal', 'vertical' or "
                              f"'horizontal_and_vertical'. Received: mode={mode!r}")
        self.mode = mode

    def augment(self, x, rng):
        n = len(x)
        horizontal = (rng.random(n) < 0.5) & ("horizontal" in self.mode)
        vertical = (rng.random(n) < 0.5) & ("vertical" in self.mode)
        return augment.flip_forward(x, horizontal, vertical)

    def augment_backward(self, grad_out, cache):
        return augment.flip_backward(grad_out, cache)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


class _AffineLayer(_RandomLayer):
    def __init__(self, fill_mode="reflect", fill_value=0.0, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if fill_mode not in _FILL_MODES:
            raise ConfigError(f"{self._describe()}: fill_mode must be one of {_FILL_MODES}. "
                              f"Received: fill_mode={fill_mode!r}")
        self.fill_mode, self.fill_value = fill_mode, float(fill_value)

    def augment(self, x, rng):
        out, cache = augment.affine_sample_forward(x, self.matrices(x.shape, rng), self.fill_mode,
                                                   self.fill_value)
        return out, cache

    def augment_backward(self, grad_out, cache):
        return augment.affine_sample_backward(grad_out, cache)

    def get_config(self):
        return {**super().get_config(), "fill_mode": self.fill_mode,
                "fill_value": self.fill_value}


class RandomTranslation(_AffineLayer):
    """Shift by up to ``height_factor`` x H and ``width_factor`` x W pixels (down/right > 0)."""

    def __init__(self, height_factor, width_factor, fill_mode="reflect", fill_value=0.0,
                 seed=None, **kwargs):
        super().__init__(fill_mode, fill_value, seed, **kwargs)
        self.height_factor = _factor_range(height_factor, "height_factor", self._describe())
        self.width_factor = _factor_range(width_factor, "width_factor", self._describe())

    def matrices(self, shape, rng):
        n, h, w, _ = shape
        dy = rng.uniform(*self.height_factor, n) * h
        dx = rng.uniform(*self.width_factor, n) * w
        return augment.translation_matrices(dy, dx)

    def get_config(self):
        return {**super().get_config(), "height_factor": list(self.height_factor),
                "width_factor": list(self.width_factor)}


class RandomRotation(_AffineLayer):
    """Rotate by a random fraction of a full turn in ``factor`` (counter-clockwise > 0)."""

    def __init__(self, factor, fill_mode="reflect", fill_value=0.0, seed=None, **kwargs):
        super().__init__(fill_mode, fill_value, seed, **kwargs)
        self.factor = _factor_range(factor, "factor", self._describe())

    def matrices(self, shape, rng):
        n, h, w, _ = shape
        return augment.rotation_matrices(rng.uniform(*self.factor, n) * 2 * np.pi, h, w)

    def get_config(self):
        return {**super().get_config(), "factor": list(self.factor)}


class RandomZoom(_AffineLayer):
    """Zoom by ``1 + u``, u drawn from ``height_factor`` (and ``width_factor``, else the same:
    the aspect ratio is kept); u > 0 zooms out, as in Keras."""

    def __init__(self, height_factor, width_factor=None, fill_mode="reflect", fill_value=0.0,
                 seed=None, **kwargs):
        super().__init__(fill_mode, fill_value, seed, **kwargs)
        self.height_factor = _factor_range(height_factor, "height_factor", self._describe())
        self.width_factor = (None if width_factor is None else
                             _factor_range(width_factor, "width_factor", self._describe()))

    def matrices(self, shape, rng):
        n, h, w, _ = shape
        zy = 1 + rng.uniform(*self.height_factor, n)
        zx = zy if self.width_factor is None else 1 + rng.uniform(*self.width_factor, n)
        return augment.zoom_matrices(zy, zx, h, w)

    def get_config(self):
        return {**super().get_config(), "height_factor": list(self.height_factor),
                "width_factor": None if self.width_factor is None else list(self.width_factor)}


class RandomContrast(_RandomLayer):
    """Scale each image's deviation from its mean by a factor in ``[1 - lower, 1 + upper]``,
    clipped to ``value_range``."""

    def __init__(self, factor, value_range=(0, 255), seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if isinstance(factor, (int, float)) and not isinstance(factor, bool):
            low = high = float(factor)                     # Keras: f means [1 - f, 1 + f]
        elif isinstance(factor, (tuple, list)) and len(factor) == 2:
            low, high = float(factor[0]), float(factor[1])
        else:
            low = high = -1.0                              # reported just below
        if not 0 <= low <= 1 or high < 0:
            raise ConfigError(f"{self._describe()}: factor must be in [0, 1] (or a pair of "
                              f"such). Received: factor={factor!r}")
        self.factor = (low, high)
        self.value_range = (float(value_range[0]), float(value_range[1]))

    def augment(self, x, rng):
        factors = rng.uniform(1 - self.factor[0], 1 + self.factor[1], len(x))
        return augment.contrast_forward(x, factors, self.value_range)

    def augment_backward(self, grad_out, cache):
        return augment.contrast_backward(grad_out, cache)

    def get_config(self):
        return {**super().get_config(), "factor": list(self.factor),
                "value_range": list(self.value_range)}


class RandomBrightness(_RandomLayer):
    """Keras' ``RandomBrightness``: add to each image one random ``delta`` drawn from
    ``factor`` (``f`` means ``[-f, f]``, each bound in [-1, 1]) times the width of
    ``value_range``, then clip to ``value_range``: a face photographed in brighter or dimmer
    light is still a face."""

    def __init__(self, factor, value_range=(0, 255), seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        low, high = _factor_range(factor, "factor", self._describe())
        if not -1 <= low <= high <= 1:
            raise ConfigError(f"{self._describe()}: factor must be in [-1, 1] (or a pair of "
                              f"such). Received: factor={factor!r}")
        self.factor = (low, high)
        self.value_range = (float(value_range[0]), float(value_range[1]))

    def augment(self, x, rng):
        span = self.value_range[1] - self.value_range[0]
        deltas = rng.uniform(*self.factor, len(x)) * span
        return augment.brightness_forward(x, deltas, self.value_range)

    def augment_backward(self, grad_out, cache):
        return augment.brightness_backward(grad_out, cache)

    def get_config(self):
        return {**super().get_config(), "factor": list(self.factor),
                "value_range": list(self.value_range)}


class RandomCrop(_RandomLayer):
    """Keras 3's ``RandomCrop(height, width)``: in training, each image is cropped to
    ``(height, width)`` at a random place; at inference, the centre crop. The usual CIFAR
    augmentation, "pad 4 then crop 32", is ``ZeroPadding2D(4)`` followed by ``RandomCrop(32, 32)``:
    at inference that crop is the original image. ``(N, H, W, C) -> (N, height, width, C)``;
    inputs smaller than the crop are refused (Keras would resize them)."""

    def __init__(self, height: int, width: int, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        owner = self._describe()
        self.height = check_positive_int(height, "height", owner)
        self.width = check_positive_int(width, "width", owner)

    def compute_output_shape(self, input_shape):
        h, w, c = input_shape
        if h < self.height or w < self.width:
            raise ShapeError(f"{self._describe()}: a {self.height} x {self.width} crop of "
                             f"{h} x {w} images; the images must be at least that large (pad "
                             f"them first, e.g. ZeroPadding2D).")
        return self.height, self.width, c

    def centre_crop(self, h: int, w: int):
        """The inference crop of an ``h x w`` image, as ``((top, bottom), (left, right))``."""
        top, left = (h - self.height) // 2, (w - self.width) // 2
        return (top, h - self.height - top), (left, w - self.width - left)

    def _offsets(self, x, rng):
        n, h, w, _ = x.shape
        if rng is None:                                  # inference: the centre
            (top, _), (left, _) = self.centre_crop(h, w)
            return np.full(n, top), np.full(n, left)
        return (rng.integers(0, h - self.height + 1, n), rng.integers(0, w - self.width + 1, n))

    def call(self, x, ctx):
        tops, lefts = self._offsets(x, ctx.generator(self) if ctx.training else None)
        return augment.crop_forward(x, tops, lefts, (self.height, self.width))

    def call_backward(self, grad_out, cache, input_grad):
        return augment.crop_backward(grad_out, cache), []

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width}
