"""Which pixels made the model say what it said: Grad-CAM and saliency, from cnnlab's own
backward pass. Pure NumPy; no plotting here.

    grad_cam(model, image)  ->  (H, W) heat map in [0, 1] over the input
    saliency(model, image)  ->  (H, W) |d score / d pixel|, scaled to [0, 1]

The score is the class's *logit* (before softmax): its gradient says how each activation pushes
that class up, undiluted by how confident the softmax already is.
"""

from __future__ import annotations

import contextlib

import numpy as np

from cnnlab.errors import ConfigError, ShapeError
from cnnlab.layers.conv import Conv2D


def as_batch(model, image) -> np.ndarray:
    """One image ``(H, W)``, ``(H, W, C)`` or ``(1, H, W, C)`` -> ``(1, H, W, C)`` floats."""
    image = np.asarray(image)
    model._require_built()
    expected = tuple(model.input_shape)
    if image.shape == expected[:-1] and expected[-1] == 1:
        image = image[..., None]
    if image.shape == expected:
        image = image[None]
    if image.shape != (1, *expected):
        raise ShapeError(f"Expected one image of shape {expected} (or {expected[:-1]} for one "
                         f"channel); received {image.shape}.")
    return image.astype(model._layers[0].dtype)


@contextlib.contextmanager
def _backward_ready(model):
    """Run inference (no dropout) while every layer keeps what its backward pass needs."""
    saved = [layer.keep_backward_cache for layer in model.layers]
    for layer in model.layers:
        layer.keep_backward_cache = True
    try:
        yield
    finally:
        for layer, value in zip(model.layers, saved):
            layer.keep_backward_cache = value


def _class_gradient(model, outputs, class_index, until):
    """Gradient of the class logit w.r.t. the output of layer ``until`` (-1: the input)."""
    last = model._layers[-1]
    units = outputs[-1].shape[-1]
    if class_index is None:
        class_index = int(np.argmax(outputs[-1][0]))
    if not 0 <= class_index < units:
        raise ConfigError(f"class_index must be in [0, {units}); received {class_index}.")
    onehot = np.zeros_like(outputs[-1])
    onehot[0, class_index] = 1
    # straight to the logits: skip the softmax, whose gradient would fade as confidence grows
    grad = last.backward_logits(onehot) if last.activation == "softmax" else last.backward(onehot)
    if len(model._layers) - 2 > until:
        grad = model.backward(grad, start=len(model._layers) - 2, until=until)
    return grad, class_index


def receptive_field_centres(model, index: int) -> list[tuple[float, float]]:
    """Per axis, ``(a, b)`` such that output cell ``o`` of layer ``index`` is centred on input
    pixel ``a * o + b``. Each windowed layer maps its output ``o`` to the centre of its window,
    ``S * o - P_before + (K_eff - 1) / 2``, in its own input's coordinates; composing them from
    the input up gives the map. (A 'valid' conv stack's last maps cover only the middle of the
    image: resizing them to the full image would smear the heat onto the border.)"""
    axes = [(1.0, 0.0), (1.0, 0.0)]
    for layer in model.layers[:index + 1]:
        window = getattr(layer, "kernel_size", None) or getattr(layer, "pool_size", None)
        if window is None or layer.input_shape is None or len(layer.input_shape) != 3:
            continue
        pads = layer.pads_for(layer.input_shape[:2])
        dilation = getattr(layer, "dilation_rate", (1, 1))
        for axis in (0, 1):
            k_eff = dilation[axis] * (window[axis] - 1) + 1
            a, b = axes[axis]
            step, offset = layer.strides[axis], -pads[axis][0] + (k_eff - 1) / 2
            axes[axis] = (a * step, a * offset + b)
    return axes


def _to_input_grid(heat: np.ndarray, size_hw, centres) -> np.ndarray:
    """Bilinear interpolation of ``heat (h, w)`` at every input pixel, in input coordinates."""
    out = heat
    for axis, size in ((0, size_hw[0]), (1, size_hw[1])):
        a, b = centres[axis]
        position = np.clip((np.arange(size) - b) / a, 0, out.shape[axis] - 1)
        low = np.floor(position).astype(int)
        high = np.minimum(low + 1, out.shape[axis] - 1)
        frac = position - low
        lo, hi = np.take(out, low, axis=axis), np.take(out, high, axis=axis)
        shape = [1, 1]
        shape[axis] = size
        out = lo * (1 - frac.reshape(shape)) + hi * frac.reshape(shape)
    return out


def _unit_scale(values: np.ndarray) -> np.ndarray:
    top = values.max()
    return values / top if top > 0 else np.zeros_like(values)


def last_conv_index(model) -> int:
    for index in reversed(range(len(model.layers))):
        if isinstance(model.layers[index], Conv2D):
            return index
    raise ConfigError("Grad-CAM needs a Conv2D layer; this model has none.")


def grad_cam(model, image, class_index: int | None = None, layer=None) -> np.ndarray:
    """Grad-CAM (Selvaraju et al., 2017) for one image: ``(H, W)`` in [0, 1].

    For the conv layer's feature maps ``A (h, w, C)`` and the gradients ``G`` of the class logit
    w.r.t. them: each map's weight is its mean gradient, ``alpha_c = mean_hw G``, and the map is
    ``relu(sum_c alpha_c A_c)``, upsampled to the input's size. ``class_index`` defaults to the
    predicted class; ``layer`` (name or index) to the last Conv2D.
    """
    x = as_batch(model, image)
    index = (last_conv_index(model) if layer is None else
             layer if isinstance(layer, int) else model.layers.index(model.get_layer(layer)))
    with _backward_ready(model):
        outputs = model.forward_all(x)
        grad, _ = _class_gradient(model, outputs, class_index, until=index)
    maps = outputs[index][0]                                      # (h, w, C)
    if maps.ndim != 3:
        raise ConfigError(f"Grad-CAM needs a layer with (H, W, C) outputs; "
                          f"{model.layers[index].name} has {maps.shape}.")
    alpha = grad[0].mean(axis=(0, 1))                              # (C,)
    cam = np.maximum(maps @ alpha, 0)                              # (h, w)
    centres = receptive_field_centres(model, index)
    return _unit_scale(_to_input_grid(cam, x.shape[1:3], centres))


def saliency(model, image, class_index: int | None = None) -> np.ndarray:
    """Gradient saliency (Simonyan et al., 2013): ``max_c |d logit / d x|``, ``(H, W)`` in [0, 1]."""
    x = as_batch(model, image)
    first = model._layers[0]
    saved, first.need_input_grad = first.need_input_grad, True    # the input's gradient, this once
    try:
        with _backward_ready(model):
            outputs = model.forward_all(x)
            grad, _ = _class_gradient(model, outputs, class_index, until=-1)
    finally:
        first.need_input_grad = saved
    return _unit_scale(np.abs(grad[0]).max(axis=-1))
