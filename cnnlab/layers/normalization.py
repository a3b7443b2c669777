"""``BatchNormalization``, with Keras' arguments and semantics; the math is in
``engine.normalization``.

>>> import numpy as np
>>> from cnnlab import layers
>>> bn = layers.BatchNormalization()
>>> bn(np.ones((2, 4, 4, 3))).shape
(2, 4, 4, 3)
>>> [w.shape for w in bn.get_weights()]       # gamma, beta, moving_mean, moving_variance
[(3,), (3,), (3,), (3,)]
"""

from __future__ import annotations

import warnings

import numpy as np

from cnnlab.engine import arrays
from cnnlab.engine import normalization as ops
from cnnlab.errors import ConfigError
from cnnlab.layers.base import Layer

#: the moving statistics count as settled once their initial values weigh at most this much
SETTLED_SHARE = 0.1


def warn_if_statistics_unsettled(model) -> None:
    """One warning per model (evaluate and save call this) naming the first BatchNormalization
    whose moving statistics have seen too few steps for their momentum."""
    if getattr(model, "_warned_statistics", False):
        return
    for layer in model.leaf_layers():
        message = layer.statistics_warning() if isinstance(layer, BatchNormalization) else None
        if message:
            model._warned_statistics = True
            warnings.warn(message, UserWarning, stacklevel=3)
            return


class BatchNormalization(Layer):
    """Normalise each channel (the last axis) to zero mean and unit variance, then scale by
    ``gamma`` and shift by ``beta``.

    In training it uses the batch's mean and biased variance, and updates the moving statistics
    as ``moving = momentum * moving + (1 - momentum) * batch`` (Keras' rule; torch's momentum is
    ``1 - momentum``). In inference, and whenever ``trainable`` is False (Keras' rule since TF2:
    a frozen BatchNormalization keeps its statistics), it uses the moving statistics.

    Under ``fit`` the batch statistics are those of the whole batch even when it is split over
    threads, and over MPI ranks unless ``fit(distributed=True, sync_batch_norm=False)``.

    Args:
        axis: -1 (channels last; the only axis cnnlab normalises over).
        momentum, epsilon: as above; ``epsilon`` is added to the variance.
        center, scale: whether to learn ``beta`` and ``gamma``.
        beta_initializer, gamma_initializer, moving_mean_initializer,
        moving_variance_initializer: initializer names.

    Input and output: any shape ``(N, ..., C)``. Variables: ``gamma (C,)`` and ``beta (C,)``
    (parameters, when scale and center), ``moving_mean (C,)`` and ``moving_variance (C,)`` (state).
    """

    fresh_output = True                      # y is written into a buffer of its own
    writes_into_grad = True                  # dx, elementwise, into dy's array when it may
    computes_in_variable_dtype = True        # float32 under mixed_bfloat16, as Keras' does

    def __init__(self, axis: int = -1, momentum: float = 0.99, epsilon: float = 1e-3,
                 center: bool = True, scale: bool = True, beta_initializer="zeros",
                 gamma_initializer="ones", moving_mean_initializer="zeros",
                 moving_variance_initializer="ones", input_shape=None, name=None, dtype=None,
                 trainable=True):
        super().__init__(name=name, dtype=dtype, trainable=trainable, input_shape=input_shape)
        owner = self._describe()
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ConfigError(f"{owner}: axis must be an int. Received: axis={axis!r}")
        self.axis = axis
        for label, value, low, high in (("momentum", momentum, 0.0, 1.0),
                                        ("epsilon", epsilon, 0.0, float("inf"))):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not low <= value < high or (label == "epsilon" and value <= 0):
                raise ConfigError(f"{owner}: {label} must be a number in "
                                  f"{'[0, 1)' if label == 'momentum' else '(0, inf)'}. Received: "
                                  f"{label}={value!r}")
        self.momentum, self.epsilon = float(momentum), float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self.initializers = {"beta": beta_initializer, "gamma": gamma_initializer,
                             "moving_mean": moving_mean_initializer,
                             "moving_variance": moving_variance_initializer}

    def _check_shapes(self, input_shape):
        super()._check_shapes(input_shape)
        if self.axis not in (-1, len(input_shape)):
            raise ConfigError(f"{self._describe()}: cnnlab normalises over the last axis (axis=-1"
                              f" or {len(input_shape)} here). Received: axis={self.axis}")

    def build_params(self, input_shape):
        channels = (input_shape[-1],)
        if self.scale:
            self.add_weight("gamma", channels, self.initializers["gamma"])
        if self.center:
            self.add_weight("beta", channels, self.initializers["beta"])
        self.add_weight("moving_mean", channels, self.initializers["moving_mean"], kind="state")
        self.add_weight("moving_variance", channels, self.initializers["moving_variance"],
                        kind="state")

    def _affine(self, channels, dtype):
        """``gamma`` and ``beta``, ones and zeros where the layer does not learn them."""
        xp = arrays.array_module(self.variable("moving_mean"))     # where the model runs
        gamma = self.variable("gamma") if self.scale else xp.ones(channels, dtype)
        beta = self.variable("beta") if self.center else xp.zeros(channels, dtype)
        return gamma, beta

    def inference_affine(self, channels: int, dtype):
        """``(scale, shift)``: inference mode as the per-channel map ``x * scale + shift``,
        what a convolution before it can fold into its weights (``graph.fusion``)."""
        gamma, beta = self._affine(channels, dtype)
        scale, shift, _ = ops.inference_affine(gamma, beta, self.variable("moving_mean"),
                                               self.variable("moving_variance"), self.epsilon)
        return scale, shift

    def fuses(self, activation, ctx):
        """A ReLU after it runs inside training's normalising pass (``graph.fusion``)."""
        return activation == "relu" and ctx.training and self.trainable

    def call(self, x, ctx, activation="linear"):
        rows = x.reshape(-1, x.shape[-1])                              # (M, C)
        gamma, beta = self._affine(x.shape[-1], x.dtype)
        if ctx.training and self.trainable:
            y, (mean, var), cache = ops.batch_norm_train_forward(rows, gamma, beta, self.epsilon,
                                                                 ctx.sum_over_batch,
                                                                 relu=activation == "relu",
                                                                 free=ctx.free_list)
            for name, batch in (("moving_mean", mean), ("moving_variance", var)):
                moving = self._state(name)
                ctx.state_updates.append((moving, ops.moving_average(moving.value, batch,
                                                                     self.momentum)))
            return y.reshape(x.shape), (ops.batch_norm_train_backward, cache, x.shape)
        y, cache = ops.batch_norm_infer_forward(rows, gamma, beta, self.variable("moving_mean"),
                                                self.variable("moving_variance"), self.epsilon)
        return y.reshape(x.shape), (ops.batch_norm_infer_backward, cache, x.shape)

    def statistics_warning(self) -> str | None:
        """What to say when the moving statistics still hold much of their initial values
        (mean 0, variance 1): after k updates that share is ``momentum ** k``, so at Keras'
        0.99 a run of a few hundred steps leaves inference far from the data, with no sign of it
        but a validation accuracy near chance. None when they are settled, or never updated here
        (loaded from elsewhere: unknown)."""
        steps = self._state("moving_mean").updates if self.built else 0
        share = self.momentum ** steps
        if steps == 0 or share <= SETTLED_SHARE:
            return None
        needed = int(np.ceil(np.log(SETTLED_SHARE) / np.log(self.momentum)))
        return (f"BatchNormalization {self.name!r}: its moving statistics have seen {steps} "
                f"training step{'s' * (steps != 1)}, and at momentum {self.momentum:g} they are still "
                f"{share:.0%} their initial values (mean 0, variance 1), so evaluation and "
                f"predictions normalise with statistics far from the data's. Train at least "
                f"{needed} steps, or use BatchNormalization(momentum=0.9).")

    def _state(self, name):
        return next(v for v in self.variables if v.name == name)

    def call_backward(self, grad, cache, input_grad, grad_owned=False):
        backward, cache, shape = cache            # the backward of the forward that ran
        dx, dgamma, dbeta = backward(grad.reshape(-1, shape[-1]), cache, input_grad,
                                     into_grad=grad_owned)
        grads = ([dgamma] if self.scale else []) + ([dbeta] if self.center else [])
        return (None if dx is None else dx.reshape(shape)), grads

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "momentum": self.momentum,
                "epsilon": self.epsilon, "center": self.center, "scale": self.scale,
                **{f"{k}_initializer": v for k, v in self.initializers.items()}}
