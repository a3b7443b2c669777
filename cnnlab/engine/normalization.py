"""Batch normalization (Ioffe & Szegedy, 2015) over the channel axis, the last one.

Shapes: ``x (M, C)`` where M counts every position of every sample (``N*H*W`` for images: the
layer reshapes ``(N, H, W, C)`` to ``(N*H*W, C)``, a view); ``gamma, beta, mean, var (C,)``.

Training normalises with the batch's own statistics::

    mean = sum(x) / M                 var = sum((x - mean)^2) / M      (biased, as Keras and torch)
    xhat = (x - mean) / sqrt(var + eps)                   y = gamma * xhat + beta

Backward, with ``g = dy * gamma`` (the standard simplification of the chain through mean and var)::

    dbeta  = sum(dy)                  dgamma = sum(dy * xhat)
    dx     = (g - sum(g) / M - xhat * sum(g * xhat) / M) / sqrt(var + eps)

Every ``sum`` over M goes through ``batch_sum``: when a batch is split over threads or MPI ranks,
each part passes its partial sums and gets the whole batch's back, so the statistics and the
gradient are those of the whole batch. The sums of x and x^2 are taken in one pass, and the
variance as ``E[x^2] - mean^2`` where that is exact enough (``ONE_PASS_MAX_RATIO``); where a
channel's mean dwarfs its spread that cancels catastrophically, and the variance is computed
around the mean in a second pass instead.

Compiled kernels (``normalization_kernels``, Numba) do the training passes in 4 sweeps instead
of the reference's 8 when ``config.kernels()`` is 'numba', with a following ReLU inside them;
the NumPy code here is the reference they are tested equal to, and what runs with
``CNNLAB_KERNELS=numpy`` and on CuPy's arrays (it takes its array module from its input,
``engine.arrays``).

Inference uses the moving statistics: ``y = (x - moving_mean) / sqrt(moving_var + eps) * gamma +
beta``, a per-channel affine map, and its backward is ``dx = dy * gamma / sqrt(moving_var + eps)``.
"""

from __future__ import annotations

import numpy as np

from cnnlab.engine import compiled
from cnnlab.engine.activations import relu_backward
from cnnlab.engine.arrays import FreeList, array_module, empty
from cnnlab.engine.windows import column_sums


def _identity(partial: np.ndarray) -> np.ndarray:
    return partial


#: Statistics in one pass (the sums of x and x^2 together, one BatchSums exchange) while
#: ``mean^2 <= ONE_PASS_MAX_RATIO * var``. ``E[x^2] - mean^2`` loses to cancellation about
#: ``eps * (var + mean^2)``, so within the bound the variance's relative error is at most
#: ``(1 + ratio)`` times the sums' (taken in float64 from blocked float32 sums, ~1e-8): measured
#: <= 3e-7 in float32 on 65,536 rows at ratio 14, 5e-8 at ratio 0.25, and 6e-8 for the two-pass
#: formula (the stored float32 values' own rounding is 6e-8); tests compare
#: with torch at 1e-10 in float64 and with float64 truth on offset data. Beyond it, for a channel
#: whose mean dwarfs its spread, the two-pass formula runs instead.
ONE_PASS_MAX_RATIO = 15.0


def batch_norm_train_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, epsilon: float,
                             batch_sum=_identity, relu: bool = False, free: FreeList | None = None):
    """Returns ``(y (M, C), (mean (C,), var (C,)), cache)``: the batch statistics are returned
    for the moving averages. ``y = x * scale + shift`` with ``scale = gamma / sqrt(var + eps)``
    and ``shift = beta - mean * scale``: two passes over x besides the sums. ``relu``: ``y`` is
    ``max(y, 0)``, in the same pass on the compiled path (``graph.fusion`` asks for it when a
    ReLU is the BN's sole consumer), and backward takes the ReLU's gradient too.

    Compiled: the sums in one pass, the (C,) arithmetic in one call (``kernels.statistics``:
    at 1024 x 16, one image of ResNet-20's first stage, a forward call went from 32.2 to 20.6
    us when it replaced a dozen NumPy calls, best of 5 x 2,000), the normalising pass in one
    more. Where the one-pass variance would cancel, the reference's two passes run instead.
    ``free``: the free list (``arrays.FreeList``) the compiled pass takes its output from; None:
    a new array."""
    xp = array_module(x)
    kernels = compiled.module("normalization_kernels", x)
    if kernels is not None:
        squares = None                                                # one pass, no x*x array
        sums = kernels.channel_sums(x, x)                             # (2, C) in float64
    else:
        squares = xp.multiply(x, x)                                   # (M, C)
        sums = xp.stack([column_sums(x, xp.float64),                  # (2, C), in float64
                         column_sums(squares, xp.float64)])           # until the end
    # one exchange for the row count and both sums: M and (2, C) over every part
    totals = batch_sum(xp.concatenate([xp.full(1, x.shape[0], sums.dtype), sums.ravel()]))
    if kernels is not None:
        gamma, beta = gamma.astype(x.dtype, copy=False), beta.astype(x.dtype, copy=False)
        stats = np.empty((5, x.shape[1]), x.dtype)       # mean, var, inv_std, scale, shift
        if kernels.statistics(totals, gamma, beta, x.dtype.type(epsilon), ONE_PASS_MAX_RATIO,
                              stats):
            mean, var, inv_std, scale, shift = stats
            y = kernels.scale_shift(x, scale, shift, relu,
                                    empty(x.shape, x.dtype, free))
            return y, (mean, var), (x, None, mean, inv_std, gamma, totals[0], batch_sum, kernels,
                                    (scale, shift) if relu else None)
    count, sums = totals[0], totals[1:].reshape(sums.shape)
    mean64 = sums[0] / count
    var64 = xp.maximum(sums[1] / count - mean64 * mean64, 0)
    mean, var = mean64.astype(x.dtype), var64.astype(x.dtype)         # (C,)
    centred = None
    if xp.any(mean64 * mean64 > ONE_PASS_MAX_RATIO * var64):          # cancellation: two passes
        centred = xp.subtract(x, mean, out=squares)                   # (M, C), new if None
        var = (batch_sum(column_sums(centred * centred)) / count).astype(x.dtype)
    inv_std = 1.0 / xp.sqrt(var + epsilon)                            # (C,)
    scale = gamma * inv_std                                           # (C,)
    if centred is None:
        y = xp.multiply(x, scale, out=squares)                        # (M, C), reusing the buffer
        y += beta - mean * scale
    else:
        y = centred * scale
        y += beta
    if relu:
        xp.maximum(y, 0, out=y)
    return y, (mean, var), (x, centred, mean, inv_std, gamma, count, batch_sum, None,
                            y if relu else None)                      # the mask is y > 0


def batch_norm_train_backward(grad_y: np.ndarray, cache, need_input_grad: bool = True,
                              into_grad: bool = False):
    """Returns ``(dx (M, C) or None, dgamma (C,), dbeta (C,))``; the parameter gradients are this
    part's own (the trainer adds the parts up), the input gradient uses the whole batch's sums.
    With ``xhat = (x - mean) * inv_std``, ``dgamma = sum(dy * xhat)`` is computed as
    ``inv_std * (sum(dy * x) - mean * sum(dy))``, and ``dx`` as ``dy * a + x * b + c`` per channel
    (the module docstring's formula expanded), unless the forward pass centred x itself. When
    the forward ran a ReLU, ``grad_y`` is its output's gradient; the path is the forward's.
    ``into_grad``: nothing else holds ``grad_y``, and the compiled pass writes dx into it, after
    every read of it: no new map-sized array, whose pages glibc may have handed back, and the
    one written is still in cache. mobilenet_small's training at batch 128: 212-214 -> 193-198
    ms a step (3 interleaved pairs; 64 images on one core: 8,129 page faults a step -> 0, the
    backward of its BatchNormalizations 48.8 -> 39.4 ms). ResNet-20's is unchanged: the
    gradients reaching its BatchNormalizations are convolutions' input gradients, which the
    free list they came from holds."""
    x, centred, mean, inv_std, gamma, count, batch_sum, kernels, cut = cache
    if kernels is not None:            # grad_y itself, or a copy of it in x's dtype: ours
        return _compiled_backward(kernels, grad_y.astype(x.dtype, copy=False), cache,
                                  need_input_grad, into_grad=into_grad)
    xp = array_module(grad_y)
    if cut is not None:
        grad_y = relu_backward(grad_y, cut)                           # (M, C)
    dbeta = column_sums(grad_y)                                       # (C,)
    product = xp.multiply(grad_y, x if centred is None else centred)  # (M, C)
    dot = column_sums(product)                                        # (C,)
    dgamma = inv_std * (dot - mean * dbeta if centred is None else dot)
    if not need_input_grad:
        return None, dgamma, dbeta
    totals = batch_sum(xp.stack([dbeta, dgamma]))                     # (2, C), whole batch
    scale = gamma * inv_std
    slope = -scale * inv_std * totals[1] / count                      # times (x - mean)
    dx = xp.multiply(grad_y, scale, out=product)                      # (M, C)
    if centred is None:
        dx += x * slope
        dx += -scale * totals[0] / count - slope * mean
    else:
        dx += centred * slope
        dx -= scale * totals[0] / count
    return dx, dgamma, dbeta


def _compiled_backward(kernels, grad_y, cache, need_input_grad, into_grad=False):
    """The compiled path: the sums of dy and dy * x in one pass (dy masked by the ReLU's cut,
    recomputed from x), the (C,) arithmetic in two calls (``parameter_grads``,
    ``input_grad_terms``: at 1024 x 16 a backward call went from 27.5 to 21.8 us when they
    replaced ~15 NumPy calls, best of 5 x 2,000), dx in one more pass."""
    x, _, mean, inv_std, gamma, count, batch_sum, _, cut = cache
    sums = (kernels.channel_sums(grad_y, x) if cut is None            # (2, C) in float64
            else kernels.masked_sums(grad_y, x, *cut))
    grads = np.empty((2, x.shape[1]), x.dtype)                        # dbeta, dgamma
    kernels.parameter_grads(sums, mean, inv_std, grads)
    dbeta, dgamma = grads
    if not need_input_grad:
        return None, dgamma, dbeta
    # a copy goes to the exchange: other shards read it while this one's caller may add into
    # dgamma and dbeta in place
    totals = batch_sum(grads.copy())                                  # (2, C), whole batch
    terms = np.empty((3, x.shape[1]), x.dtype)                        # dx = dy * a + x * b + k
    kernels.input_grad_terms(totals, gamma, inv_std, mean, count, terms)
    out = grad_y if into_grad else np.empty_like(grad_y)
    if cut is None:
        kernels.input_grad(grad_y, x, *terms, into_grad, out)
    else:
        kernels.masked_input_grad(grad_y, x, *cut, *terms, into_grad, out)
    return out, dgamma, dbeta


def inference_affine(gamma, beta, moving_mean, moving_var, epsilon: float):
    """Inference-mode batch normalization as the per-channel map ``y = x * scale + shift``:
    ``scale = gamma / sqrt(moving_var + eps)``, ``shift = beta - moving_mean * scale``."""
    inv_std = 1.0 / array_module(moving_var).sqrt(moving_var + epsilon)           # (C,)
    scale = gamma * inv_std                                           # (C,)
    return scale, beta - moving_mean * scale, inv_std


def batch_norm_infer_forward(x: np.ndarray, gamma, beta, moving_mean, moving_var,
                             epsilon: float):
    """``y = x * scale + shift`` with the moving statistics folded in. Returns ``(y, cache)``."""
    scale, shift, inv_std = inference_affine(gamma, beta, moving_mean, moving_var, epsilon)
    y = x * scale + shift                                             # (M, C)
    return y, (x, moving_mean, inv_std, scale)


def fold_affine(kernel: np.ndarray, bias, scale: np.ndarray, shift: np.ndarray):
    """A linear op followed by a per-output-channel map ``y * scale + shift`` is the linear op
    with ``kernel[..., f] * scale[f]`` and ``bias * scale + shift``: the map costs nothing at
    run time. ``kernel``'s last axis is the output channel (Conv2D (KH, KW, C, F), Dense
    (D, F)); returns ``(kernel, bias)``, new arrays."""
    folded_bias = shift if bias is None else bias * scale + shift
    return kernel * scale.astype(kernel.dtype), folded_bias.astype(kernel.dtype)


def batch_norm_infer_backward(grad_y: np.ndarray, cache, need_input_grad: bool = True,
                              into_grad: bool = False):
    """Returns ``(dx or None, dgamma, dbeta)`` of the inference-mode map. ``into_grad``: dx
    goes into ``grad_y``, which nothing else holds, after the sums have read it."""
    x, moving_mean, inv_std, scale = cache
    dbeta = column_sums(grad_y)                                       # (C,)
    dgamma = column_sums(grad_y * ((x - moving_mean) * inv_std))      # (C,)
    if not need_input_grad:
        return None, dgamma, dbeta
    return array_module(grad_y).multiply(grad_y, scale, out=grad_y if into_grad else None), \
        dgamma, dbeta


def moving_average(moving: np.ndarray, batch: np.ndarray, momentum: float) -> np.ndarray:
    """Keras' rule: ``moving * momentum + batch * (1 - momentum)`` (torch's momentum is
    ``1 - momentum``)."""
    return moving * momentum + batch.astype(moving.dtype) * (1 - momentum)
