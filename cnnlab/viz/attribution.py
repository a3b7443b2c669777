"""Which pixels made the model say what it said: Grad-CAM, saliency, Integrated Gradients and
occlusion, from cnnlab's own forward and backward passes. Pure NumPy; no plotting here.

    grad_cam(model, image)              ->  (H, W) heat map in [0, 1] over the input
    saliency(model, image)              ->  (H, W) |d score / d pixel|, scaled to [0, 1]
    integrated_gradients(model, image)  ->  (H, W, C) attributions summing to f(x) - f(baseline)
    occlusion(model, image)             ->  (H, W) how much the score drops with a patch hidden

The score is the class's *logit* (before softmax): its gradient says how each activation pushes
that class up, undiluted by how confident the softmax already is.
"""

from __future__ import annotations

import functools

import numpy as np

from cnnlab.engine.shapes import receptive_field_step
from cnnlab.errors import ConfigError, ShapeError
from cnnlab.layers.conv import Conv2D


def as_batch(model, image) -> np.ndarray:
    """One image ``(H, W)``, ``(H, W, C)`` or ``(1, H, W, C)`` -> ``(1, H, W, C)`` floats."""
    image = np.asarray(image)
    model._require_built()
    expected = tuple(model.input_shapes[0])
    if image.shape == expected[:-1] and expected[-1] == 1:
        image = image[..., None]
    if image.shape == expected:
        image = image[None]
    if image.shape != (1, *expected):
        raise ShapeError(f"Expected one image of shape {expected} (or {expected[:-1]} for one "
                         f"channel); received {image.shape}.")
    return image.astype(model.dtype)


def sees_nested_layers(function):
    """For a function whose first argument is a model: run it on ``model.flattened()``, so that
    a backbone nested in a model (``--pretrained``) shows its layers like any other."""
    @functools.wraps(function)
    def wrapper(model, *args, **kwargs):
        return function(model.flattened() if hasattr(model, "flattened") else model, *args,
                        **kwargs)
    return wrapper


def target_node(model, layer):
    """The node whose output Grad-CAM reads: the last Conv2D call, or the (last) call of the
    named layer (or index into ``model.layers``)."""
    if layer is None:
        for node in reversed(model.nodes):
            if isinstance(node.layer, Conv2D):
                return node
        raise ConfigError("Grad-CAM needs a Conv2D layer; this model has none.")
    chosen = model.layers[layer] if isinstance(layer, int) else model.get_layer(layer)
    nodes = [node for node in model.nodes if node.layer is chosen]
    if not nodes:
        raise ConfigError(f"Layer {chosen.name!r} is an input of the model, not a layer it runs.")
    return nodes[-1]


def _class_gradient(model, x, class_index, wanted=()):
    """Backward from one class's *logit* (the softmax skipped: its gradient would fade as
    confidence grows). Returns ``(tape, gradients, class_index)``."""
    outputs, tape = model.run(x, keep_cache=True, logits=True)
    logits = outputs[0]
    units = logits.shape[-1]
    if class_index is None:
        class_index = int(np.argmax(logits[0]))
    if not 0 <= class_index < units:
        raise ConfigError(f"class_index must be in [0, {units}); received {class_index}.")
    onehot = np.zeros_like(logits)
    onehot[0, class_index] = 1
    grads = model.backward_from(tape, [onehot] + [None] * (len(outputs) - 1),
                                want_inputs=not wanted, wanted=wanted)
    return tape, grads, class_index


def _path_to(node) -> list:
    """The nodes from the input to ``node`` along each node's first input: the chain whose
    windows define where ``node``'s cells sit over the image."""
    path = []
    while node is not None and node.inbound:
        path.append(node)
        node = node.inbound[0].node
    return path[::-1]


def receptive_field(node) -> list[tuple[int, int, int]]:
    """Per axis (rows, columns), ``(start, jump, size)``: output cell ``o`` of ``node`` sees the
    input pixels ``start + jump * o`` to ``start + jump * o + size - 1`` (``start`` < 0 or the
    end past the image where it sees padding), composed layer by layer from the input up by
    ``engine.shapes.receptive_field_step`` along the node's first inputs."""
    axes = [(0, 1, 1), (0, 1, 1)]
    for step in _path_to(node):
        layer = step.layer
        window = getattr(layer, "kernel_size", None) or getattr(layer, "pool_size", None)
        in_shape = step.inbound[0].shape[1:]
        if window is None or len(in_shape) != 3:
            continue
        pads = layer.pads_for(in_shape[:2])
        dilation = getattr(layer, "dilation_rate", (1, 1))
        axes = [receptive_field_step(axes[axis], window[axis], layer.strides[axis],
                                     pads[axis][0], dilation[axis]) for axis in (0, 1)]
    return axes


def receptive_field_centres(node) -> list[tuple[float, float]]:
    """Per axis, ``(a, b)`` such that output cell ``o`` of ``node`` is centred on input pixel
    ``a * o + b``: the middle of its receptive field. (A 'valid' conv stack's last maps cover
    only the middle of the image: resizing them to the full image would smear the heat onto
    the border.)"""
    return [(jump, start + (size - 1) / 2) for start, jump, size in receptive_field(node)]


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


@sees_nested_layers
def grad_cam(model, image, class_index: int | None = None, layer=None) -> np.ndarray:
    """Grad-CAM (Selvaraju et al., 2017) for one image: ``(H, W)`` in [0, 1].

    For the conv layer's feature maps ``A (h, w, C)`` and the gradients ``G`` of the class logit
    w.r.t. them: each map's weight is its mean gradient, ``alpha_c = mean_hw G``, and the map is
    ``relu(sum_c alpha_c A_c)``, upsampled to the input's size. ``class_index`` defaults to the
    predicted class; ``layer`` (name or index) to the last Conv2D node of the graph.
    """
    x = as_batch(model, image)
    node = target_node(model, layer)
    tensor = node.outputs[0]
    if len(tensor.shape) != 4:
        raise ConfigError(f"Grad-CAM needs a layer with (H, W, C) outputs; "
                          f"{node.layer.name} has {tensor.shape[1:]}.")
    tape, grads, _ = _class_gradient(model, x, class_index, wanted=[tensor])
    maps = tape.values[id(tensor)][0]                              # (h, w, C)
    grad = grads.tensors.get(id(tensor), np.zeros((1, *maps.shape), maps.dtype))
    alpha = grad[0].mean(axis=(0, 1))                              # (C,)
    cam = np.maximum(maps @ alpha, 0)                              # (h, w)
    return _unit_scale(_to_input_grid(cam, x.shape[1:3], receptive_field_centres(node)))


@sees_nested_layers
def saliency(model, image, class_index: int | None = None) -> np.ndarray:
    """Gradient saliency (Simonyan et al., 2013): ``max_c |d logit / d x|``, ``(H, W)`` in [0, 1]."""
    x = as_batch(model, image)
    _, grads, _ = _class_gradient(model, x, class_index)
    return _unit_scale(np.abs(grads.inputs[0][0]).max(axis=-1))


def class_logits(model, images: np.ndarray, class_index: int) -> np.ndarray:
    """One class's logit for each image of a batch ``(N, H, W, C)``: ``(N,)``."""
    outputs, _ = model.run(images.astype(model.dtype), logits=True)
    return outputs[0][:, class_index]


def _predicted_class(model, x, class_index):
    logits = model.run(x, logits=True)[0][0]
    if class_index is None:
        return int(np.argmax(logits))
    if not 0 <= class_index < logits.shape[-1]:
        raise ConfigError(f"class_index must be in [0, {logits.shape[-1]}); received "
                          f"{class_index}.")
    return class_index


@sees_nested_layers
def integrated_gradients(model, image, class_index: int | None = None, baseline=None,
                         steps: int = 32, batch_size: int = 16) -> np.ndarray:
    """Integrated Gradients (Sundararajan et al., 2017): ``(H, W, C)`` attributions

        (x - x') * integral over a in [0, 1] of d f(x' + a (x - x')) / dx  da

    for the class logit ``f``, the integral by the midpoint rule over ``steps`` points. They
    add up to ``f(x) - f(x')`` (completeness), to within the rule's error, which shrinks like
    1 / steps^2 for a smooth path. ``baseline`` defaults to black (zeros)."""
    x = as_batch(model, image)
    base = np.zeros_like(x) if baseline is None else as_batch(model, baseline)
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be a positive integer; received {steps!r}.")
    class_index = _predicted_class(model, x, class_index)
    alphas = (np.arange(steps) + 0.5) / steps                             # midpoints
    total = np.zeros(x.shape[1:], np.float64)
    for start in range(0, steps, batch_size):
        a = alphas[start:start + batch_size].reshape(-1, 1, 1, 1)
        points = (base + a * (x - base)).astype(model.dtype)             # (n, H, W, C)
        outputs, tape = model.run(points, keep_cache=True, logits=True)
        onehot = np.zeros_like(outputs[0])
        onehot[:, class_index] = 1                # samples are independent: one pass for all
        grads = model.backward_from(tape, [onehot] + [None] * (len(outputs) - 1),
                                    want_inputs=True)
        total += grads.inputs[0].sum(axis=0)
    return ((x - base)[0] * total / steps).astype(model.dtype)


@sees_nested_layers
def occlusion(model, image, class_index: int | None = None, patch: int = 4, stride: int = 2,
              fill: float = 0.0, batch_size: int = 64) -> np.ndarray:
    """Occlusion sensitivity (Zeiler & Fergus, 2014): slide a ``patch`` x ``patch`` square of
    ``fill`` over the image every ``stride`` pixels; each pixel gets the mean drop of the class
    logit over the placements that hide it. ``(H, W)``, positive where hiding hurts."""
    x = as_batch(model, image)
    h, w = x.shape[1:3]
    if not (isinstance(patch, int) and 1 <= patch <= min(h, w) and isinstance(stride, int)
            and stride >= 1):
        raise ConfigError(f"patch must be 1 to {min(h, w)} and stride >= 1; received "
                          f"patch={patch!r}, stride={stride!r}.")
    class_index = _predicted_class(model, x, class_index)
    reference = class_logits(model, x, class_index)[0]
    tops = sorted(set(range(0, h - patch + 1, stride)) | {h - patch})     # the edge covered too
    lefts = sorted(set(range(0, w - patch + 1, stride)) | {w - patch})
    places = [(t, left) for t in tops for left in lefts]
    drop, count = np.zeros((h, w)), np.zeros((h, w))
    for start in range(0, len(places), batch_size):
        chunk = places[start:start + batch_size]
        hidden = np.repeat(x, len(chunk), axis=0)
        for k, (t, left) in enumerate(chunk):
            hidden[k, t:t + patch, left:left + patch] = fill
        scores = class_logits(model, hidden, class_index)
        for (t, left), score in zip(chunk, scores):
            drop[t:t + patch, left:left + patch] += reference - score
            count[t:t + patch, left:left + patch] += 1
    return drop / count
