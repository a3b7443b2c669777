"""Learning-rate schedules (public as ``cnnlab.optimizers.schedules``): a schedule maps the
optimizer's step count (0 for the first update) to a learning rate. Pass one as
``learning_rate=``; it is saved with the optimizer, and the step count is, so a resumed run
follows the same curve.

>>> schedule = CosineDecay(0.1, decay_steps=100, warmup_target=0.5, warmup_steps=10)
>>> [round(schedule(step), 4) for step in (0, 5, 10, 60, 110)]
[0.1, 0.3, 0.5, 0.25, 0.0]
"""

from __future__ import annotations

import difflib
import math

from cnnlab.errors import ConfigError


def _positive(value, name, owner, allow_zero=False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{owner}: {name} must be a {'non-negative' if allow_zero else 'positive'}"
                          f" number. Received: {name}={value!r}")
    return float(value)


class LearningRateSchedule:
    """Base class: ``__call__(step) -> learning rate``; ``get_config`` / ``from_config``."""

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def get_config(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)


class ExponentialDecay(LearningRateSchedule):
    """``initial_learning_rate * decay_rate ** (step / decay_steps)``; with ``staircase`` the
    exponent is floored, so the rate drops in steps every ``decay_steps``."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False):
        owner = "ExponentialDecay"
        self.initial_learning_rate = _positive(initial_learning_rate, "initial_learning_rate",
                                               owner)
        self.decay_steps = _positive(decay_steps, "decay_steps", owner)
        self.decay_rate = _positive(decay_rate, "decay_rate", owner)
        self.staircase = bool(staircase)

    def __call__(self, step):
        exponent = step / self.decay_steps
        if self.staircase:
            exponent = math.floor(exponent)
        return self.initial_learning_rate * self.decay_rate ** exponent

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "staircase": self.staircase}


class PiecewiseConstantDecay(LearningRateSchedule):
    """``values[0]`` up to step ``boundaries[0]`` (included), ``values[1]`` up to
    ``boundaries[1]``, ..., ``values[-1]`` after the last boundary (Keras' rule)."""

    def __init__(self, boundaries, values):
        if not isinstance(boundaries, (list, tuple)) or not isinstance(values, (list, tuple)) \
                or len(values) != len(boundaries) + 1:
            raise ConfigError(f"PiecewiseConstantDecay: needs one more value than boundaries. "
                              f"Received: boundaries={boundaries!r}, values={values!r}")
        if list(boundaries) != sorted(boundaries):
            raise ConfigError(f"PiecewiseConstantDecay: boundaries must increase. Received: "
                              f"boundaries={boundaries!r}")
        self.boundaries = [int(b) for b in boundaries]
        self.values = [_positive(v, "values", "PiecewiseConstantDecay", allow_zero=True)
                       for v in values]

    def __call__(self, step):
        for boundary, value in zip(self.boundaries, self.values):
            if step <= boundary:
                return value
        return self.values[-1]

    def get_config(self):
        return {"boundaries": self.boundaries, "values": self.values}


class CosineDecay(LearningRateSchedule):
    """Keras 3's cosine decay with optional linear warmup: from ``initial_learning_rate`` up to
    ``warmup_target`` over ``warmup_steps``, then half a cosine from the peak down to
    ``alpha * peak`` over ``decay_steps``, and flat after (Loshchilov & Hutter, 2017)."""

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, warmup_target=None,
                 warmup_steps=0):
        owner = "CosineDecay"
        self.initial_learning_rate = _positive(initial_learning_rate, "initial_learning_rate",
                                               owner, allow_zero=True)
        self.decay_steps = _positive(decay_steps, "decay_steps", owner)
        self.alpha = _positive(alpha, "alpha", owner, allow_zero=True)
        self.warmup_target = None if warmup_target is None else _positive(
            warmup_target, "warmup_target", owner)
        self.warmup_steps = int(_positive(warmup_steps, "warmup_steps", owner, allow_zero=True))

    def __call__(self, step):
        peak = self.initial_learning_rate if self.warmup_target is None else self.warmup_target
        if step < self.warmup_steps:
            return self.initial_learning_rate + (peak - self.initial_learning_rate) * (
                step / self.warmup_steps)
        done = min(step - self.warmup_steps, self.decay_steps) / self.decay_steps
        return peak * ((1 - self.alpha) * 0.5 * (1 + math.cos(math.pi * done)) + self.alpha)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "alpha": self.alpha,
                "warmup_target": self.warmup_target, "warmup_steps": self.warmup_steps}


class OneCycle(LearningRateSchedule):
    """Smith & Topin's one-cycle policy, as ``torch.optim.lr_scheduler.OneCycleLR`` computes the
    learning rate (Keras has no such schedule; the name and arguments are PyTorch's): from
    ``max_learning_rate / div_factor`` up to ``max_learning_rate`` over the first
    ``pct_start`` of ``total_steps`` along half a cosine, then down to
    ``initial / final_div_factor`` by the last step. (Momentum is not cycled.)"""

    def __init__(self, max_learning_rate, total_steps, pct_start=0.3, div_factor=25.0,
                 final_div_factor=1e4):
        owner = "OneCycle"
        self.max_learning_rate = _positive(max_learning_rate, "max_learning_rate", owner)
        self.total_steps = int(_positive(total_steps, "total_steps", owner))
        if not 0 < pct_start < 1:
            raise ConfigError(f"{owner}: pct_start must be in (0, 1). Received: "
                              f"pct_start={pct_start!r}")
        self.pct_start = float(pct_start)
        self.div_factor = _positive(div_factor, "div_factor", owner)
        self.final_div_factor = _positive(final_div_factor, "final_div_factor", owner)

    def __call__(self, step):
        initial = self.max_learning_rate / self.div_factor
        final = initial / self.final_div_factor
        peak_step = float(self.pct_start * self.total_steps) - 1
        last_step = self.total_steps - 1

        def anneal(start, end, fraction):
            return end + (start - end) / 2.0 * (math.cos(math.pi * fraction) + 1)

        if step <= peak_step:
            return anneal(initial, self.max_learning_rate, step / peak_step)
        return anneal(self.max_learning_rate, final,
                      (step - peak_step) / (last_step - peak_step))

    def get_config(self):
        return {"max_learning_rate": self.max_learning_rate, "total_steps": self.total_steps,
                "pct_start": self.pct_start, "div_factor": self.div_factor,
                "final_div_factor": self.final_div_factor}


SCHEDULES = {cls.__name__: cls for cls in (ExponentialDecay, PiecewiseConstantDecay,
                                           CosineDecay, OneCycle)}


def serialize(schedule: LearningRateSchedule) -> dict:
    return {"class_name": type(schedule).__name__, "config": schedule.get_config()}


def deserialize(config) -> LearningRateSchedule:
    name = config.get("class_name") if isinstance(config, dict) else None
    if name not in SCHEDULES or not isinstance(config.get("config"), dict):
        hint = difflib.get_close_matches(str(name), SCHEDULES, n=1)
        raise ConfigError(f"Unknown learning-rate schedule {name!r}; expected one of "
                          f"{sorted(SCHEDULES)}" + (f" (did you mean {hint[0]!r}?)" if hint
                                                    else "") + ".")
    return SCHEDULES[name].from_config(config["config"])
