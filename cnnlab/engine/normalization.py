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
gradient are those of the whole batch. The variance is computed in two passes (around the mean),
not as ``E[x^2] - E[x]^2``, which cancels catastrophically in float32 when ``|mean| >> std``.

Inference uses the moving statistics: ``y = (x - moving_mean) / sqrt(moving_var + eps) * gamma +
beta``, a per-channel affine map, and its backward is ``dx = dy * gamma / sqrt(moving_var + eps)``.
"""

from __future__ import annotations

import numpy as np

from cnnlab.engine.conv import column_sums


def _identity(partial: np.ndarray) -> np.ndarray:
    return partial


def batch_norm_train_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, epsilon: float,
                             batch_sum=_identity):
    """Returns ``(y (M, C), (mean (C,), var (C,)), cache)``: the batch statistics are returned
    for the moving averages."""
    count = batch_sum(np.array([x.shape[0]], dtype=np.float64))[0]   # M over every part
    mean = batch_sum(column_sums(x)) / count                          # (C,)
    centred = x - mean                                                # (M, C)
    var = batch_sum(column_sums(centred * centred)) / count           # (C,)
    inv_std = 1.0 / np.sqrt(var + epsilon)                            # (C,)
    xhat = centred * inv_std                                          # (M, C)
    y = xhat * gamma + beta                                           # (M, C)
    return y, (mean, var), (xhat, inv_std, gamma, count, batch_sum)


def batch_norm_train_backward(grad_y: np.ndarray, cache, need_input_grad: bool = True):
    """Returns ``(dx (M, C) or None, dgamma (C,), dbeta (C,))``; the parameter gradients are this
    part's own (the trainer adds the parts up), the input gradient uses the whole batch's sums."""
    xhat, inv_std, gamma, count, batch_sum = cache
    dbeta = column_sums(grad_y)                                       # (C,)
    dgamma = column_sums(grad_y * xhat)                               # (C,)
    if not need_input_grad:
        return None, dgamma, dbeta
    totals = batch_sum(np.stack([dbeta, dgamma]))                     # (2, C), whole batch
    dx = (grad_y - totals[0] / count - xhat * (totals[1] / count)) * (gamma * inv_std)  # (M, C)
    return dx, dgamma, dbeta


def inference_affine(gamma, beta, moving_mean, moving_var, epsilon: float):
    """Inference-mode batch normalization as the per-channel map ``y = x * scale + shift``:
    ``scale = gamma / sqrt(moving_var + eps)``, ``shift = beta - moving_mean * scale``."""
    inv_std = 1.0 / np.sqrt(moving_var + epsilon)                     # (C,)
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


def batch_norm_infer_backward(grad_y: np.ndarray, cache, need_input_grad: bool = True):
    """Returns ``(dx or None, dgamma, dbeta)`` of the inference-mode map."""
    x, moving_mean, inv_std, scale = cache
    dbeta = column_sums(grad_y)                                       # (C,)
    dgamma = column_sums(grad_y * ((x - moving_mean) * inv_std))      # (C,)
    return (grad_y * scale if need_input_grad else None), dgamma, dbeta


def moving_average(moving: np.ndarray, batch: np.ndarray, momentum: float) -> np.ndarray:
    """Keras' rule: ``moving * momentum + batch * (1 - momentum)`` (torch's momentum is
    ``1 - momentum``)."""
    return moving * momentum + batch.astype(moving.dtype) * (1 - momentum)
