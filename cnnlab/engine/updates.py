"""Optimizer updates: one parameter, in place. The arithmetic of ``training.optimizers``, which
keeps the step count, the learning-rate schedule and the slots and calls these.

Shapes: ``param``, ``grad`` and every slot have one shape (any); the scalars are Python floats,
used in the parameter's dtype (a float32 parameter is updated in float32 throughout, as
``torch.optim`` does).

Every update first takes, per element::

    p -= decay * p                            decoupled weight decay (decay = lr * weight_decay)
    g  = clip(grad, -clip, clip) * scale      clipvalue (clip = inf: none); scale from clipnorm
                                              or global_clipnorm (1: none)

and then::

    SGD      b = g on the first step, else momentum * b + g       (momentum > 0)
             g = g + momentum * b if nesterov, else b
             p -= lr * g
    Adam     m = beta_1 * m + (1 - beta_1) * g
             v = beta_2 * v + (1 - beta_2) * g^2
             p -= step_size * (m / (sqrt(v) / bias_root + epsilon))
    RMSprop  v = rho * v + (1 - rho) * g^2
             a = rho * a + (1 - rho) * g                          (centered)
             d = lr * g / sqrt(v - a^2 + epsilon)                 (a = 0 unless centered)
             p -= d, or with momentum  b = momentum * b + d;  p -= b

A slot (b, m, v, a) that would be subnormal (below the dtype's smallest normal number, 1.2e-38
in float32) is stored as +0 (:func:`flush_subnormal`). A slot whose gradients have stopped (a
converged sample, a dead unit) decays geometrically through the subnormals, ~150 steps at
momentum 0.9 and ~16,000 at Adam's beta_2 = 0.999, and x86 does arithmetic on subnormals
~10-100x slower: the article's network at batch 1, trained on one repeated sample, went from
3.5 to 10.5 ms a step once its loss reached 0 and half its momentum slots were subnormal.
PyTorch keeps them; the difference to a parameter is below 1e-38 times the learning rate.

An update has no backward. The NumPy code here makes one pass over the parameter's size per
term: SGD with momentum 4 after the clipping, Adam 13. The compiled kernels
(``update_kernels``) read each element of the parameter, gradient and slots once and write the
parameter and slots once, with the same operations in the same order, so the two paths agree
bit for bit (tested). On the article's network at batch 1, SGD's update of its 1.2 M weights
took 1.5 ms of a 4.4 ms step on the reference.
"""

from __future__ import annotations

import math

import numpy as np

from cnnlab.engine import compiled
from cnnlab.engine.arrays import array_module


def sgd(param, grad, buffer, *, lr, momentum=0.0, nesterov=False, first_step=False,
        decay=0.0, clip=math.inf, scale=1.0) -> None:
    """``buffer``: the momentum buffer, or None without momentum."""
    sgd_each([(param, grad, buffer, scale)], lr=lr, momentum=momentum, nesterov=nesterov,
             first_step=first_step, decay=decay, clip=clip)


def sgd_each(work, *, lr, momentum=0.0, nesterov=False, first_step=False, decay=0.0,
             clip=math.inf) -> None:
    """:func:`sgd` on each ``(param, grad, buffer, scale)`` of ``work`` (what ``optimizers.SGD``
    runs): the compiled kernel's scalars are typed once per dtype, not once per parameter.
    ResNet-20's 65 parameters, one apply: 0.597 -> 0.369-0.472 ms against a call of its own
    for each (best of 7 x 300 calls, two processes each)."""
    typed: dict = {}
    for param, grad, buffer, scale in work:
        kernels = _kernels(param, buffer)
        if kernels is not None:
            scalars = typed.get(param.dtype)
            if scalars is None:
                scalars = typed[param.dtype] = (*_typed(param, lr, momentum, decay, clip),
                                                _smallest_normal(param))
            kernels.sgd(*_flat(param, grad, buffer), *scalars, param.dtype.type(scale),
                        bool(nesterov), bool(first_step))
            continue
        g = _decayed_and_clipped(param, grad, decay, clip, scale)
        t = param.dtype.type
        if momentum:
            if first_step:
                buffer[...] = g
            else:
                buffer *= t(momentum)
                buffer += g
            flush_subnormal(buffer)
            g = g + t(momentum) * buffer if nesterov else buffer
        param -= t(lr) * g


def adam(param, grad, m, v, *, step_size, beta_1, beta_2, bias_root, epsilon, decay=0.0,
         clip=math.inf, scale=1.0) -> None:
    """``step_size = lr / (1 - beta_1^t)``, ``bias_root = sqrt(1 - beta_2^t)`` at step t."""
    kernels = _kernels(param, m, v)
    if kernels is not None:
        kernels.adam(*_flat(param, grad, m, v),
                     *_typed(param, step_size, beta_1, 1 - beta_1, beta_2, 1 - beta_2,
                             bias_root, epsilon, decay, clip, scale), _smallest_normal(param))
        return
    g = _decayed_and_clipped(param, grad, decay, clip, scale)
    t = param.dtype.type
    m *= t(beta_1)
    m += t(1 - beta_1) * g
    v *= t(beta_2)
    v += t(1 - beta_2) * (g * g)
    flush_subnormal(m)
    flush_subnormal(v)
    denominator = array_module(v).sqrt(v)
    denominator /= t(bias_root)
    denominator += t(epsilon)
    param -= t(step_size) * (m / denominator)


def rmsprop(param, grad, velocity, average, buffer, *, lr, rho, momentum, epsilon, decay=0.0,
            clip=math.inf, scale=1.0) -> None:
    """``average``: the mean gradient (centered), ``buffer``: the momentum; each None when off."""
    kernels = _kernels(param, velocity, average, buffer)
    if kernels is not None:
        kernels.rmsprop(*_flat(param, grad, velocity, average, buffer),
                        *_typed(param, lr, rho, 1 - rho, momentum, epsilon, decay, clip, scale),
                        _smallest_normal(param))
        return
    g = _decayed_and_clipped(param, grad, decay, clip, scale)
    t = param.dtype.type
    velocity *= t(rho)
    velocity += t(1 - rho) * (g * g)
    flush_subnormal(velocity)
    denominator = velocity
    if average is not None:
        average *= t(rho)
        average += t(1 - rho) * g
        flush_subnormal(average)
        denominator = velocity - average * average
    increment = t(lr) * g / array_module(velocity).sqrt(denominator + t(epsilon))
    if buffer is not None:
        buffer *= t(momentum)
        buffer += increment
        flush_subnormal(buffer)
        increment = buffer
    param -= increment


def flush_subnormal(slot) -> None:
    """Set the subnormal values of ``slot`` (in place) to +0; NaN and infinities stay (module
    docstring: why)."""
    xp = array_module(slot)
    xp.copyto(slot, 0, where=xp.abs(slot) < _smallest_normal(slot))


#: each float dtype's smallest normal number, in that dtype (looked up once: every update asks)
_SMALLEST_NORMAL = {np.dtype(t): t(np.finfo(t).tiny) for t in (np.float16, np.float32, np.float64)}


def _smallest_normal(array):
    """The smallest normal number of ``array``'s dtype, as a scalar of that dtype (0 for a
    dtype without subnormals to flush)."""
    smallest = _SMALLEST_NORMAL.get(array.dtype)
    return array.dtype.type(0) if smallest is None else smallest


def _decayed_and_clipped(param, grad, decay, clip, scale):
    """The reference's first two lines of every update: ``p -= decay * p`` in place, and the
    gradient, in the parameter's dtype, clipped and scaled (a new array only when it changes)."""
    t, xp = param.dtype.type, array_module(param)
    if decay:
        param -= t(decay) * param
    g = xp.asarray(grad, param.dtype)
    if clip != math.inf:
        g = xp.clip(g, -t(clip), t(clip))
    return g * t(scale) if scale != 1.0 else g


def _kernels(param, *slots):
    """The compiled kernels when they are on, the parameter is float32 or float64 (what layers
    hold; ``Optimizer.apply`` takes any array, and Numba has no float16 arithmetic), every
    array they write is one C-contiguous block (a parameter and its slots always are; a strided
    view passed in by hand is not), and all are NumPy's (CuPy's run the reference on CuPy).
    Loops, not comprehensions: every parameter asks, every step (with ``_flat`` and ``_typed``
    written the same way, ResNet-20's 65 updates went from 0.35-0.38 to 0.28-0.30 ms)."""
    if param.dtype not in compiled.KERNEL_DTYPES or not param.flags.c_contiguous:
        return None
    for slot in slots:
        if slot is not None and (type(slot) is not np.ndarray or not slot.flags.c_contiguous):
            return None
    return compiled.module("update_kernels", param)


def _flat(param, grad, *slots):
    """1-D views for the kernels; the gradient in the parameter's dtype (a copy only if not);
    an absent slot as an empty array of that dtype."""
    flat = param.reshape(-1)
    if type(grad) is not np.ndarray or grad.dtype != param.dtype or not grad.flags.c_contiguous:
        grad = np.ascontiguousarray(grad, param.dtype)
    return (flat, grad.reshape(-1), *[flat[:0] if s is None else s.reshape(-1) for s in slots])


def _typed(param, *scalars):
    t = param.dtype.type
    return [t(s) for s in scalars]
