"""What a filter looks for: feature visualisation, gradient ascent on the input (Erhan et al.,
2009), regularised as in Olah et al., "Feature Visualization" (Distill, 2017).

    images = visualise(model, "conv2", filters=range(16))   # (16, H, W, C), one per filter
    image = visualise(model, class_index=3)[0]               # what raises class 3's logit
    values = objective(model, "conv2", images, range(16))    # the objective each one reaches

The objective is the mean over positions of one filter's map, as the layer outputs it (after
its activation), or its centre cell alone (``where='centre'``), or one class's logit. Each step:

1. **Transformation robustness:** every image is seen jittered (up to ``jitter`` pixels),
   rotated (up to ``rotate`` degrees) and scaled (within ``scale``) at random, seeded; the
   gradient comes back through the exact adjoint of that warp (``engine.augment``). An image
   that only works at one exact position and scale is noise to the network's other units;
   one that survives small transformations shows the pattern itself.
2. **Decorrelated step:** the gradient's spectrum is scaled by ``1 / f`` (``f`` the spatial
   frequency) before the step, so steps are made of broad strokes rather than pixel-level
   noise: the 1/f amplitude spectrum of natural images that Olah et al. build in by
   optimising a Fourier parameterisation scaled the same way. For RGB, each pixel's colour
   step goes through ``S S^T``, ``S`` the square root of natural photos' colour covariance:
   gradient steps in their decorrelated colour basis (Olah et al. again).
3. A step of ``learning_rate`` times the gradient's root-mean-square, then the pixels are
   clipped to ``value_range`` (the range the model was trained on).

All of it runs the engine's own forward and backward passes; the filters of one layer are
optimised together, one image each, in one batch.
"""

from __future__ import annotations

import numpy as np

from cnnlab.engine.augment import (
    affine_sample_backward,
    affine_sample_forward,
    rotation_matrices,
    translation_matrices,
    zoom_matrices,
)
from cnnlab.errors import ConfigError
from cnnlab.viz.attribution import receptive_field, sees_nested_layers, target_node

#: the start: grey with strong noise (in units of the value range), so that filters deep in
#: a ReLU network see something on the first step (a flat grey leaves many of them silent)
START_MEAN, START_SPREAD = 0.5, 0.25
#: 'mean': the filter's mean over its whole map (what it looks for anywhere); 'centre': its
#: centre cell only (what one unit looks for inside its receptive field: for a first layer,
#: whose mean is nearly linear in the pixels, the mean's best image is a flat white or black)
WHERE = ("mean", "centre")
DEFAULT_JITTER = 2
#: the square root of natural photos' RGB covariance (ImageNet's, as Olah et al.'s Lucid
#: measured it), columns scaled to at most unit norm: colour steps go along it, so pictures
#: change mostly in brightness and in the colour contrasts photos have, not in pure hues
COLOUR_SQRT = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOUR_SQRT = COLOUR_SQRT / np.linalg.norm(COLOUR_SQRT, axis=0).max()


def _extractor(model, layer):
    """``(graph, node)``: a model from the input to ``layer``'s output (its last call), or the
    whole model (read as logits) when ``layer`` is None."""
    from cnnlab.models.model import Model
    if layer is None:
        return model, None
    node = target_node(model, layer)
    if len(node.outputs[0].shape) != 4:
        raise ConfigError(f"Feature visualisation of filters needs a layer with (H, W, C) "
                          f"outputs; {node.layer.name} has {node.outputs[0].shape[1:]}. For a "
                          f"class, pass class_index instead of a layer.")
    return Model(model.inputs, node.outputs[0], name=f"{model.name}_to_{node.layer.name}"), node


def _targets(graph, node, filters, class_index) -> list[int]:
    units = graph.outputs[0].shape[-1]
    chosen = [class_index] if node is None else list(filters)
    what = "class_index" if node is None else "filters"
    if node is None and class_index is None:
        raise ConfigError("Pass a layer (and its filters) or a class_index to visualise.")
    if not chosen or any(not 0 <= int(k) < units for k in chosen):
        raise ConfigError(f"{what} must be in [0, {units}); received {chosen!r}.")
    return [int(k) for k in chosen]


def _objective_and_gradient(graph, node, x, targets, want_gradient=True, where="mean"):
    """The objective of image ``i`` (its target filter's mean activation, or its centre cell's
    with ``where='centre'``, or its class's logit) and its gradient with respect to the
    images.

    A filter behind a ReLU that is negative everywhere on an image has no gradient there: it
    would never wake up. For such an image the step follows the filter's largest input to
    the ReLU instead (its most promising cell) until it turns positive."""
    relu = node is not None and getattr(node.layer, "activation", None) == "relu"
    outputs, tape = graph.run(x, keep_cache=want_gradient, logits=node is None,
                              before_activation=relu)
    out = outputs[0]
    rows = np.arange(len(x))
    if out.ndim == 2:
        values = out[rows, targets]
        seed = np.zeros_like(out)
        seed[rows, targets] = 1.0
    else:
        maps = out[rows, :, :, targets]                                     # (N, h, w)
        if where == "centre":
            maps = maps[:, maps.shape[1] // 2:maps.shape[1] // 2 + 1,
                        maps.shape[2] // 2:maps.shape[2] // 2 + 1]
        active = np.maximum(maps, 0) if relu else maps
        values = active.mean(axis=(1, 2))
        cells = maps.shape[1] * maps.shape[2]
        grad_maps = (maps > 0) / cells if relu else np.full_like(maps, 1.0 / cells)
        for i in np.flatnonzero(relu & ~(maps > 0).any(axis=(1, 2))):    # asleep: wake it
            grad_maps[i].flat[np.argmax(maps[i])] = 1.0
        seed = np.zeros_like(out)
        if where == "centre":
            seed[rows, out.shape[1] // 2, out.shape[2] // 2, targets] = grad_maps[:, 0, 0]
        else:
            seed[rows, :, :, targets] = grad_maps
    if not want_gradient:
        return values, None
    grads = graph.backward_from(tape, [seed], want_inputs=True)
    return values, grads.inputs[0]


@sees_nested_layers
def objective(model, layer=None, images=None, filters=(0,), class_index=None,
              where: str = "mean") -> np.ndarray:
    """What :func:`visualise` maximises, for each of ``images`` ``(N, H, W, C)`` (image ``i``
    scored for ``filters[i]``, or for ``class_index``): ``(N,)``."""
    graph, node = _extractor(model, layer)
    targets = _targets(graph, node, filters, class_index)
    images = np.asarray(images, dtype=model.dtype)
    if len(targets) == 1:
        targets = targets * len(images)
    return _objective_and_gradient(graph, node, images, targets, False, _where(where))[0]


def _where(where: str) -> str:
    if where not in WHERE:
        raise ConfigError(f"where must be one of {WHERE}; received {where!r}.")
    return where


def _random_warps(rng, count, h, w, jitter, rotate, scale) -> np.ndarray:
    """``(count, 2, 3)`` matrices: a random zoom, then rotation, then shift per image."""
    def as3(m):
        return np.concatenate([m, np.tile([[[0.0, 0.0, 1.0]]], (len(m), 1, 1))], axis=1)
    zoom = rng.uniform(*scale, size=count)
    angles = np.deg2rad(rng.uniform(-rotate, rotate, size=count))
    shifts = rng.integers(-jitter, jitter + 1, size=(2, count)).astype(np.float64)
    # an output pixel reads the input at A_shift A_rotate A_zoom p
    m = as3(translation_matrices(*shifts)) @ as3(rotation_matrices(angles, h, w)) \
        @ as3(zoom_matrices(zoom, zoom, h, w))
    return m[:, :2]


def _one_over_f(h: int, w: int) -> np.ndarray:
    """``(h, w // 2 + 1)`` weights ``1 / max(f, 1 / max(h, w))`` over ``rfft2``'s frequencies,
    scaled so their root-mean-square is 1."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    weights = 1.0 / np.maximum(np.sqrt(fy ** 2 + fx ** 2), 1.0 / max(h, w))
    return weights / np.sqrt(np.mean(weights ** 2))


@sees_nested_layers
def visualise(model, layer=None, filters=(0,), class_index: int | None = None,
              steps: int = 128, learning_rate: float = 0.05, jitter: int | None = None,
              rotate: float = 5.0, scale=(0.95, 1.05), decorrelate: bool = True,
              value_range=(0.0, 1.0), seed: int = 0, where: str = "mean") -> np.ndarray:
    """Images ``(len(filters), H, W, C)`` that maximise each of ``layer``'s ``filters`` (a
    layer name or index), or one image ``(1, H, W, C)`` that maximises ``class_index``'s
    logit (``layer`` None). See the module's docstring for each step; ``jitter=0, rotate=0,
    scale=(1, 1), decorrelate=False`` is plain gradient ascent. ``jitter`` defaults to 2
    pixels, or for one cell (``where='centre'``) to an eighth of what the cell sees: shifting
    a 5x5 first-layer field by 2 pixels would blur its pattern away."""
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be a positive integer; received {steps!r}.")
    low, high = (float(v) for v in value_range)
    if not high > low:
        raise ConfigError(f"value_range must be (low, high) with high > low; received "
                          f"{value_range!r}.")
    where = _where(where)
    graph, node = _extractor(model, layer)
    targets = _targets(graph, node, filters, class_index)
    model._require_built()
    h, w, c = model.input_shapes[0]
    if jitter is None:
        jitter = DEFAULT_JITTER
        if where == "centre" and node is not None:
            jitter = min(jitter, min(size for _, _, size in receptive_field(node)) // 8)
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((len(targets), h, w, c))
    if decorrelate and c == 3:                 # the start's colours correlated as photos' are
        noise = noise @ COLOUR_SQRT.T
    start = START_MEAN + START_SPREAD * noise
    x = low + (high - low) * np.clip(start, 0, 1)
    weights = _one_over_f(h, w)[None, :, :, None] if decorrelate else None
    for _ in range(steps):
        matrices = _random_warps(rng, len(x), h, w, jitter, rotate, scale)
        seen, cache = affine_sample_forward(x, matrices, fill_mode="reflect")
        _, grad = _objective_and_gradient(graph, node, seen.astype(model.dtype), targets,
                                          where=where)
        grad = affine_sample_backward(grad.astype(np.float64), cache)
        if weights is not None:
            grad = np.fft.irfft2(np.fft.rfft2(grad, axes=(1, 2)) * weights, s=(h, w),
                                 axes=(1, 2))
            if c == 3:
                grad = grad @ (COLOUR_SQRT @ COLOUR_SQRT.T)
        rms = np.sqrt(np.mean(grad ** 2, axis=(1, 2, 3), keepdims=True))
        x = np.clip(x + learning_rate * (high - low) * grad / np.maximum(rms, 1e-12), low, high)
    return x.astype(model.dtype)
