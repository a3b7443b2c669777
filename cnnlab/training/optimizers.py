"""Optimizers: update rules over ``(parameter, gradient)`` pairs; they know nothing about layers.

SGD's and Adam's update rules are PyTorch's ``torch.optim`` (tested against it), RMSprop's is
Keras' published one; default hyper-parameters are Keras'. What every optimizer shares, as in
Keras 3: a learning rate that may be a schedule (``schedules``), ``weight_decay`` decoupled from
the gradient (``p -= lr * weight_decay * p`` before the update, Loshchilov & Hutter's AdamW
rule), and gradient clipping (``clipvalue``, ``clipnorm`` per parameter, ``global_clipnorm``
over all). Parameters are updated in place, so every layer keeps its own arrays; the arithmetic
of each rule, with the decay and clipping inside its one pass, is ``engine.updates``.

>>> import numpy as np
>>> w, g = np.ones(3), np.full(3, 0.5)
>>> SGD(learning_rate=0.1).apply([(w, g)])
>>> w
array([0.95, 0.95, 0.95])
"""

from __future__ import annotations

import difflib
import functools
import math

import numpy as np

from cnnlab.engine import arrays, updates
from cnnlab.errors import ConfigError, ModelFileError, ShapeError
from cnnlab.training import schedules
from cnnlab.training.schedules import LearningRateSchedule

#: what ``cnnlab.optimizers`` (the public module) exports
__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "schedules", "get", "serialize", "OPTIMIZERS"]


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

    def __init__(self, learning_rate, name: str | None = None, weight_decay: float = 0.0,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, **legacy):
        owner = type(self).__name__
        learning_rate = _legacy_lr(owner, learning_rate, legacy)
        self.learning_rate = learning_rate
        self.weight_decay = _check_number("weight_decay", weight_decay, owner, low=0.0)
        if clipnorm is not None and global_clipnorm is not None:
            raise ConfigError(f"{owner}: clipnorm and global_clipnorm cannot both be set (as in "
                              f"Keras): one clips each gradient, the other all of them together. "
                              f"Received: clipnorm={clipnorm!r}, global_clipnorm="
                              f"{global_clipnorm!r}")
        self.clipnorm, self.clipvalue, self.global_clipnorm = (
            None if v is None else _check_number(name_, v, owner, low=0.0, low_inclusive=False)
            for name_, v in (("clipnorm", clipnorm), ("clipvalue", clipvalue),
                             ("global_clipnorm", global_clipnorm)))
        self.name = name or owner.lower()
        self.iterations = 0
        self._step_lr = 0.0             # the learning rate of the step being applied
        self._slots: dict[str, dict[str, np.ndarray]] = {}

    @property
    def learning_rate(self):
        """The rate as set: a number, or a schedule (``current_learning_rate()`` is its value at
        the next step). Settable between steps; the next step uses it."""
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value) -> None:
        if isinstance(value, dict):
            value = schedules.deserialize(value)
        self._learning_rate = value if isinstance(value, LearningRateSchedule) else _check_number(
            "learning_rate", value, type(self).__name__, low=0.0, low_inclusive=False)

    #: Keras 2's name for ``learning_rate``: the same value, and setting it sets the rate
    lr = learning_rate

    def current_learning_rate(self) -> float:
        """The learning rate the next step uses (a schedule's value at this step count)."""
        if not isinstance(self.learning_rate, LearningRateSchedule):
            return self.learning_rate
        lr = self.learning_rate(self.iterations)
        if not np.isfinite(lr) or lr < 0:
            raise ConfigError(f"{type(self).__name__}: the learning-rate schedule "
                              f"{type(self.learning_rate).__name__} gives {lr!r} at step "
                              f"{self.iterations}; a learning rate must be finite and >= 0.")
        return float(lr)

    def _scales(self, grads: list) -> list[float]:
        """Each gradient's factor from ``clipnorm`` (per gradient) or ``global_clipnorm`` (over
        all), 1.0 where none; the norms are those of the ``clipvalue``-clipped gradients, in
        Keras' order. The update itself clips and scales, in its one pass."""
        if self.clipnorm is None and self.global_clipnorm is None:
            return [1.0] * len(grads)
        if self.clipvalue is not None:
            grads = [np.clip(g, -self.clipvalue, self.clipvalue) for g in grads]
        squares = [float(np.vdot(g, g).real) for g in grads]
        if self.clipnorm is not None:
            return [self.clipnorm / n if n > self.clipnorm else 1.0 for n in np.sqrt(squares)]
        norm = math.sqrt(sum(squares))
        return [self.global_clipnorm / norm if norm > self.global_clipnorm else 1.0] * len(grads)

    def apply(self, params_and_grads, threads: int = 1) -> None:
        """Update each parameter in place from its gradient: ``(param, grad)`` pairs, or
        ``(name, param, grad)`` triples (a model passes its parameters' names). ``threads``:
        how many threads of this process share an elementwise update (row ranges of the large
        parameters, ``training.parallel.split_elementwise``; bit for bit the same result). One
        unless the other cores are idle: training passes its thread shards' count."""
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"{type(self).__name__}.apply: threads must be a positive int. "
                              f"Received: {threads!r}")
        items = [item if len(item) == 3 else (f"#{id(item[0])}", *item)
                 for item in params_and_grads]
        for key, param, grad in items:
            if np.shape(grad) != np.shape(param):
                raise ShapeError(f"{type(self).__name__}: the gradient of "
                                 f"{key if not key.startswith('#') else 'a parameter'} has shape "
                                 f"{np.shape(grad)}; its parameter has {np.shape(param)}.")
        self._step_lr = self.current_learning_rate()
        scales = self._scales([grad for _, _, grad in items])
        self.iterations += 1
        work = []
        for (key, param, grad), scale in zip(items, scales):
            slots = self._slots.get(key)
            if slots is None or any(s.shape != param.shape for s in slots.values()):
                slots = self._slots[key] = self._new_slots(param)
            work.append((param, grad, slots, scale))
        if threads > 1 and self.elementwise and work and arrays.array_module(work[0][0]) is np:
            # the update reads every parameter, gradient and slot once more after the backward
            # pass, memory-bound (the article's 1.2 M Dense weights: 0.5 ms of one core,
            # compiled), and otherwise on one core while the other waits; on a GPU it is the
            # device's work, and more host threads would only queue it
            from cnnlab.training import parallel
            groups = parallel.split_elementwise(work, threads)
            if groups is not None:
                parallel.run_sharded([functools.partial(self._update_all, group)
                                      for group in groups])
                return
        self._update_all(work)

    def _clipping(self) -> dict:
        """Every update's ``decay`` and ``clip`` arguments this step."""
        return {"decay": self._step_lr * self.weight_decay,       # decoupled: g never sees it
                "clip": math.inf if self.clipvalue is None else self.clipvalue}

    def _update_all(self, work) -> None:
        """Each ``(param, grad, slots, scale)`` of ``work`` updated in place."""
        clipping = self._clipping()
        for param, grad, slots, scale in work:
            self._update(param, grad, slots, scale=scale, **clipping)

    def apply_gradients(self, grads_and_vars) -> None:
        """Keras spelling: ``(gradient, variable)`` pairs."""
        self.apply((v, g) for g, v in grads_and_vars)

    def _new_slots(self, param: np.ndarray) -> dict[str, np.ndarray]:
        return {}

    def _update(self, param, grad, slots, **clipping) -> None:
        """One parameter's update, in place (an ``engine.updates`` rule); ``clipping``: its
        ``decay``, ``clip`` and ``scale`` arguments."""
        raise NotImplementedError

    # --- state, for saving and resuming -------------------------------------------------------
    def get_config(self) -> dict:
        lr = self.learning_rate
        config = {"name": self.name, "learning_rate": schedules.serialize(lr)
                  if isinstance(lr, LearningRateSchedule) else float(lr),
                  "weight_decay": self.weight_decay}
        for key in ("clipnorm", "clipvalue", "global_clipnorm"):
            if getattr(self, key) is not None:
                config[key] = getattr(self, key)
        return config

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
                    state[f"{key}/{slot}"] = arrays.to_host(value)
        return state

    def move_slots(self, move) -> None:
        """Every slot replaced by ``move(slot)``: the model moved to another device
        (``training.placement``)."""
        self._slots = {key: {slot: move(value) for slot, value in slots.items()}
                       for key, slots in self._slots.items()}

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
            expected[...] = arrays.on_device(value, arrays.array_module(expected))
        iterations = np.asarray(state.get("iterations", 0))
        if iterations.shape != () or iterations.dtype.kind not in "iu" or iterations < 0:
            raise ModelFileError(f"Optimizer state 'iterations' must be a non-negative integer "
                                 f"scalar; received {iterations.dtype} of shape "
                                 f"{iterations.shape}.")
        self.iterations = int(iterations)
        self._slots = slots


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum and Nesterov momentum.

    Per step, as ``torch.optim.SGD`` (dampening 0), after the decoupled weight decay::

        buf = g                        on the first step, else  momentum * buf + g
        g   = g + momentum * buf       if nesterov, else  buf
        p  -= learning_rate * g

    With a constant learning rate this is the same trajectory as Keras' ``velocity`` form.
    """

    elementwise = True

    def __init__(self, learning_rate=0.01, momentum: float = 0.0, nesterov: bool = False,
                 name: str | None = None, **options):
        super().__init__(learning_rate, name, **options)
        self.momentum = _check_number("momentum", momentum, "SGD", low=0.0, high=1.0,
                                      high_inclusive=False)
        if nesterov and self.momentum == 0:
            raise ConfigError("SGD: nesterov=True needs momentum > 0. Received: momentum=0.")
        self.nesterov = bool(nesterov)

    def _new_slots(self, param):
        return {"momentum_buffer": np.zeros_like(param)} if self.momentum else {}

    def _update_all(self, work) -> None:                   # all at once, not per _update
        updates.sgd_each([(param, grad, slots.get("momentum_buffer"), scale)
                          for param, grad, slots, scale in work], lr=self._step_lr,
                         momentum=self.momentum, nesterov=self.nesterov,
                         first_step=self.iterations == 1, **self._clipping())

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2014) with Keras' defaults and ``torch.optim.Adam``'s update, after the
    decoupled weight decay (so with ``weight_decay`` it is ``torch.optim.AdamW``)::

        m  = beta_1 * m + (1 - beta_1) * g
        v  = beta_2 * v + (1 - beta_2) * g^2
        p -= lr / (1 - beta_1^t) * m / (sqrt(v) / sqrt(1 - beta_2^t) + epsilon)
    """

    elementwise = True

    def __init__(self, learning_rate=0.001, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7, name: str | None = None, **options):
        super().__init__(learning_rate, name, **options)
        self.beta_1 = _check_number("beta_1", beta_1, "Adam", low=0.0, high=1.0,
                                    high_inclusive=False)
        self.beta_2 = _check_number("beta_2", beta_2, "Adam", low=0.0, high=1.0,
                                    high_inclusive=False)
        self.epsilon = _check_number("epsilon", epsilon, "Adam", low=0.0)

    def _new_slots(self, param):
        return {"m": np.zeros_like(param), "v": np.zeros_like(param)}

    def _update(self, param, grad, slots, **clipping):
        updates.adam(param, grad, slots["m"], slots["v"],
                     step_size=self._step_lr / (1 - self.beta_1 ** self.iterations),
                     beta_1=self.beta_1, beta_2=self.beta_2,
                     bias_root=math.sqrt(1 - self.beta_2 ** self.iterations),
                     epsilon=self.epsilon, **clipping)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon}


class AdamW(Adam):
    """Adam with decoupled weight decay on by default (Keras 3's ``AdamW``, default 0.004;
    ``torch.optim.AdamW``'s rule)."""

    def __init__(self, learning_rate=0.001, weight_decay: float = 0.004, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-7, name: str | None = None,
                 **options):
        super().__init__(learning_rate, beta_1, beta_2, epsilon, name,
                         weight_decay=weight_decay, **options)


class RMSprop(Optimizer):
    """RMSprop (Hinton's lecture notes), Keras' rule, used by Keras' ``cifar10_cnn`` example::

        v  = rho * v + (1 - rho) * g^2
        a  = rho * a + (1 - rho) * g                      (centered only)
        d  = lr * g / sqrt(v - a^2 + epsilon)             (a = 0 unless centered)
        p -= d, or with momentum:  m = momentum * m + d;  p -= m

    (torch's RMSprop puts epsilon outside the square root; Keras' inside is kept here.)
    """

    elementwise = True

    def __init__(self, learning_rate=0.001, rho: float = 0.9, momentum: float = 0.0,
                 epsilon: float = 1e-7, centered: bool = False, name: str | None = None,
                 **options):
        super().__init__(learning_rate, name, **options)
        self.rho = _check_number("rho", rho, "RMSprop", low=0.0, high=1.0, high_inclusive=False)
        self.momentum = _check_number("momentum", momentum, "RMSprop", low=0.0, high=1.0,
                                      high_inclusive=False)
        self.epsilon = _check_number("epsilon", epsilon, "RMSprop", low=0.0)
        self.centered = bool(centered)

    def _new_slots(self, param):
        slots = {"velocity": np.zeros_like(param)}
        if self.momentum:
            slots["momentum"] = np.zeros_like(param)
        if self.centered:
            slots["average_gradient"] = np.zeros_like(param)
        return slots

    def _update(self, param, grad, slots, **clipping):
        updates.rmsprop(param, grad, slots["velocity"], slots.get("average_gradient"),
                        slots.get("momentum"), lr=self._step_lr, rho=self.rho,
                        momentum=self.momentum, epsilon=self.epsilon, **clipping)

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "momentum": self.momentum,
                "epsilon": self.epsilon, "centered": self.centered}


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


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
