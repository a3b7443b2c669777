"""Optimizers: update rules over ``(parameter, gradient)`` pairs; they know nothing about layers.

Update rules are PyTorch's ``torch.optim`` (tested against it); default hyper-parameters are
Keras'. Parameters are updated in place, so every layer keeps its own arrays.

>>> import numpy as np
>>> w, g = np.ones(3), np.full(3, 0.5)
>>> SGD(learning_rate=0.1).apply([(w, g)])
>>> w
array([0.95, 0.95, 0.95])
"""

from __future__ import annotations

import difflib
import functools

import numpy as np

from cnnlab.errors import ConfigError, ModelFileError


class Optimizer:
    """Base class: holds the learning rate, the step count and per-parameter state (slots).

    Slots are keyed by the parameter's name (``'conv2d/kernel'``; a plain array gets a key from
    its identity), so freezing or unfreezing a layer, or saving and loading, never shifts one
    parameter's momentum onto another.
    """

    #: True when ``_update`` treats every element on its own, so a large parameter may be
    #: updated in pieces, one per core (``training.parallel.split_elementwise``). A subclass whose
    #: update mixes elements (a norm, say) leaves it False.
    elementwise = False

    def __init__(self, learning_rate: float, name: str | None = None, **legacy):
        learning_rate = _legacy_lr(type(self).__name__, learning_rate, legacy)
        self.learning_rate = _check_number("learning_rate", learning_rate, type(self).__name__,
                                           low=0.0, low_inclusive=False)
        self.name = name or type(self).__name__.lower()
        self.iterations = 0
        self._slots: dict[str, dict[str, np.ndarray]] = {}

    def apply(self, params_and_grads) -> None:
        """Update each parameter in place from its gradient: ``(param, grad)`` pairs, or
        ``(name, param, grad)`` triples (a model passes its parameters' names)."""
        self.iterations += 1
        work = []
        for item in params_and_grads:
            key, param, grad = item if len(item) == 3 else (f"#{id(item[0])}", *item)
            slots = self._slots.get(key)
            if slots is None or any(s.shape != param.shape for s in slots.values()):
                slots = self._slots[key] = self._new_slots(param)
            work.append((param, grad, slots))
        if self.elementwise:
            # the update reads and writes every parameter, gradient and slot once more after
            # the backward pass: ~1.8 ms of a 23 ms step of the article's network, memory-bound,
            # and otherwise on one core while the other waits
            from cnnlab.training import parallel
            groups = parallel.split_elementwise(work)
            if groups is not None:
                parallel.run_sharded([functools.partial(self._update_all, group)
                                      for group in groups])
                return
        self._update_all(work)

    def _update_all(self, work) -> None:
        for param, grad, slots in work:
            self._update(param, grad, slots)

    def apply_gradients(self, grads_and_vars) -> None:
        """Keras spelling: ``(gradient, variable)`` pairs."""
        self.apply((v, g) for g, v in grads_and_vars)

    def _new_slots(self, param: np.ndarray) -> dict[str, np.ndarray]:
        return {}

    def _update(self, param, grad, slots) -> None:
        raise NotImplementedError

    # --- state, for saving and resuming -------------------------------------------------------
    def get_config(self) -> dict:
        return {"name": self.name, "learning_rate": float(self.learning_rate)}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Everything needed to resume: the step count and each named parameter's slots, as
        ``'conv2d/kernel/m'``."""
        state = {"iterations": np.array(self.iterations, dtype=np.int64)}
        for key, slots in self._slots.items():
            if not key.startswith("#"):
                for slot, value in slots.items():
                    state[f"{key}/{slot}"] = value
        return state

    def load_state_arrays(self, state: dict[str, np.ndarray], params: dict[str, np.ndarray]) -> None:
        """Restore :meth:`state_arrays`; ``params`` maps each parameter's name to its array, and
        every slot is checked against it."""
        slots: dict[str, dict[str, np.ndarray]] = {}
        for key, value in state.items():
            if key == "iterations":
                continue
            name, _, slot = key.rpartition("/")
            if name not in params or slot not in self._new_slots(params[name]):
                raise ModelFileError(f"Optimizer state has an unexpected entry {key!r} for "
                                     f"{type(self).__name__}; the model's parameters are "
                                     f"{sorted(params)[:8]}{' ...' if len(params) > 8 else ''}.")
            expected = slots.setdefault(name, self._new_slots(params[name]))[slot]
            if value.shape != expected.shape:
                raise ModelFileError(f"Optimizer state {key!r} has shape {value.shape}; the "
                                     f"parameter needs {expected.shape}.")
            expected[...] = value
        iterations = np.asarray(state.get("iterations", 0))
        if iterations.shape != () or iterations.dtype.kind not in "iu" or iterations < 0:
            raise ModelFileError(f"Optimizer state 'iterations' must be a non-negative integer "
                                 f"scalar; received {iterations.dtype} of shape "
                                 f"{iterations.shape}.")
        self.iterations = int(iterations)
        self._slots = slots


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and weight decay.

    Per step, as ``torch.optim.SGD`` (dampening 0)::

        g   = grad + weight_decay * p
        buf = g                        on the first step, else  momentum * buf + g
        g   = g + momentum * buf       if nesterov, else  buf
        p  -= learning_rate * g

    With a constant learning rate this is the same trajectory as Keras' ``velocity`` form.
    """

    elementwise = True

    def __init__(self, learning_rate: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, name: str | None = None, **legacy):
        super().__init__(learning_rate, name, **legacy)
        self.momentum = _check_number("momentum", momentum, "SGD", low=0.0, high=1.0,
                                      high_inclusive=False)
        self.weight_decay = _check_number("weight_decay", weight_decay, "SGD", low=0.0)
        if nesterov and self.momentum == 0:
            raise ConfigError("SGD: nesterov=True needs momentum > 0. Received: momentum=0.")
        self.nesterov = bool(nesterov)

    def _new_slots(self, param):
        return {"momentum_buffer": np.zeros_like(param)} if self.momentum else {}

    def _update(self, param, grad, slots):
        if self.weight_decay:
            grad = grad + self.weight_decay * param
        if self.momentum:
            buf = slots["momentum_buffer"]
            if self.iterations == 1:
                buf[...] = grad
            else:
                buf *= self.momentum
                buf += grad
            grad = grad + self.momentum * buf if self.nesterov else buf
        param -= self.learning_rate * grad

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2014) with Keras' defaults and ``torch.optim.Adam``'s update::

        g  = grad + weight_decay * p
        m  = beta_1 * m + (1 - beta_1) * g
        v  = beta_2 * v + (1 - beta_2) * g^2
        p -= lr / (1 - beta_1^t) * m / (sqrt(v) / sqrt(1 - beta_2^t) + epsilon)
    """

    elementwise = True

    def __init__(self, learning_rate: float = 0.001, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7, weight_decay: float = 0.0, name: str | None = None,
                 **legacy):
        super().__init__(learning_rate, name, **legacy)
        self.beta_1 = _check_number("beta_1", beta_1, "Adam", low=0.0, high=1.0,
                                    high_inclusive=False)
        self.beta_2 = _check_number("beta_2", beta_2, "Adam", low=0.0, high=1.0,
                                    high_inclusive=False)
        self.epsilon = _check_number("epsilon", epsilon, "Adam", low=0.0)
        self.weight_decay = _check_number("weight_decay", weight_decay, "Adam", low=0.0)

    def _new_slots(self, param):
        return {"m": np.zeros_like(param), "v": np.zeros_like(param)}

    def _update(self, param, grad, slots):
        if self.weight_decay:
            grad = grad + self.weight_decay * param
        m, v = slots["m"], slots["v"]
        m *= self.beta_1
        m += (1 - self.beta_1) * grad
        v *= self.beta_2
        v += (1 - self.beta_2) * (grad * grad)
        step_size = self.learning_rate / (1 - self.beta_1 ** self.iterations)
        denom = np.sqrt(v) / np.sqrt(1 - self.beta_2 ** self.iterations) + self.epsilon
        param -= step_size * (m / denom)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon, "weight_decay": self.weight_decay}


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def get(identifier) -> Optimizer:
    """``'sgd'``, ``'adam'`` (Keras defaults) or an :class:`Optimizer` instance."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in OPTIMIZERS:
        return OPTIMIZERS[identifier.lower()]()
    if isinstance(identifier, dict) and identifier.get("class_name", "").lower() in OPTIMIZERS:
        return OPTIMIZERS[identifier["class_name"].lower()].from_config(identifier["config"])
    hint = difflib.get_close_matches(str(identifier).lower(), OPTIMIZERS, n=1)
    raise ConfigError(f"Unknown optimizer {identifier!r}. Expected one of {sorted(OPTIMIZERS)} "
                      f"or an Optimizer instance" + (f"; did you mean {hint[0]!r}?" if hint else "."))


def serialize(optimizer: Optimizer) -> dict:
    return {"class_name": type(optimizer).__name__, "config": optimizer.get_config()}


def _legacy_lr(owner: str, learning_rate, legacy: dict):
    """Keras 2 spelled it ``lr=``; many tutorials still do, so accept it with a warning."""
    unknown = set(legacy) - {"lr"}
    if unknown:
        raise ConfigError(f"{owner}: unexpected argument(s) {sorted(unknown)}.")
    if "lr" in legacy:
        import warnings
        warnings.warn(f"{owner}(lr=...) is the Keras 2 spelling; use learning_rate=...",
                      DeprecationWarning, stacklevel=4)
        return legacy["lr"]
    return learning_rate


def _check_number(name, value, owner, low=None, high=None, low_inclusive=True,
                  high_inclusive=True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not np.isfinite(value):
        raise ConfigError(f"{owner}: {name} must be a finite number. Received: {name}={value!r}")
    too_low = low is not None and (value < low or (value == low and not low_inclusive))
    too_high = high is not None and (value > high or (value == high and not high_inclusive))
    if too_low or too_high:
        lo = "" if low is None else f"{low} {'<=' if low_inclusive else '<'} "
        hi = "" if high is None else f" {'<=' if high_inclusive else '<'} {high}"
        raise ConfigError(f"{owner}: expected {lo}{name}{hi}. Received: {name}={value!r}")
    return float(value)
