"""The ``Layer`` contract every cnnlab layer keeps.

A layer is a core op followed by an optional activation. ``Conv2D(activation='relu')`` and a
``ReLU()`` layer both end in the same ``engine.activations`` functions. Keeping the activation
separate from the core op also lets ``Sequential`` fuse a final softmax with the cross-entropy
loss (``forward_logits`` / ``backward_logits``).

Subclasses implement:
- ``build_params(input_shape)``: create parameters (in ``get_weights`` order) from the input shape
  (without the batch axis);
- ``compute_output_shape(input_shape)``;
- ``call(x, training)`` and ``call_backward(grad)``: the core op's forward and backward;
- ``get_config()``: constructor arguments.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import re
from collections import Counter

import numpy as np

from cnnlab import config as _config
from cnnlab import seeding
from cnnlab.engine import initializers
from cnnlab.engine.activations import ACTIVATIONS
from cnnlab.errors import ConfigError, NotBuiltError, ShapeError

LAYER_REGISTRY: dict[str, type] = {}
_name_counts: Counter = Counter()


def _snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower().replace("2_d", "2d")


def layer_class(name) -> type:
    """A layer class by its name, for configurations and model files."""
    if isinstance(name, str) and name in LAYER_REGISTRY:
        return LAYER_REGISTRY[name]
    hint = difflib.get_close_matches(str(name), LAYER_REGISTRY, n=1, cutoff=0.5)
    raise ConfigError(f"Unknown layer class {name!r}"
                      + (f"; did you mean {hint[0]!r}?" if hint else
                         f". Known: {sorted(LAYER_REGISTRY)}."))


def unique_name(base: str) -> str:
    """Keras-style automatic names: ``conv2d``, ``conv2d_1``, ``conv2d_2`` ..."""
    count = _name_counts[base]
    _name_counts[base] += 1
    return base if count == 0 else f"{base}_{count}"


def check_activation(activation, owner: str) -> str:
    """``None`` means linear; otherwise a name from ``engine.activations.ACTIVATIONS``."""
    if activation is None:
        return "linear"
    if isinstance(activation, str) and activation.lower() in ACTIVATIONS:
        return activation.lower()
    hint = difflib.get_close_matches(str(activation).lower(), ACTIVATIONS, n=1)
    raise ConfigError(f"{owner}: unknown activation {activation!r}. Expected one of "
                      f"{sorted(ACTIVATIONS)}" + (f"; did you mean {hint[0]!r}?" if hint else "."))


def check_positive_int(value, name: str, owner: str) -> int:
    """``filters``, ``units`` and the like: a positive int, echoed back when it is not."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ConfigError(f"{owner}: {name} must be a positive int. Received: {name}={value!r}")
    return int(value)


def check_input_shape(input_shape, owner: str) -> tuple[int, ...] | None:
    """Keras' ``input_shape`` argument: a tuple of positive ints, without the batch axis."""
    if input_shape is None:
        return None
    if not isinstance(input_shape, (tuple, list)) or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0
            for d in input_shape):
        raise ConfigError(f"{owner}: input_shape must be a tuple of positive ints, without the "
                          f"batch axis, e.g. (28, 28, 1). Received: input_shape={input_shape!r}")
    return tuple(int(d) for d in input_shape)


class Layer:
    """Base class. See the module docstring for what subclasses provide."""

    #: input rank (batch included) this layer accepts, or None for any rank >= 2
    input_rank: int | None = None
    #: keep what backward needs even at inference (set while Grad-CAM or saliency run)
    keep_backward_cache: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):      # private helpers are not loadable layers
            LAYER_REGISTRY[cls.__name__] = cls

    def __init__(self, name: str | None = None, dtype=None, trainable: bool = True,
                 input_shape=None, activation=None):
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigError(f"{type(self).__name__}: name must be a non-empty string. "
                              f"Received: name={name!r}")
        self.name = name or unique_name(_snake_case(type(self).__name__))
        self.dtype = _config.resolve_dtype(dtype)
        self.trainable = bool(trainable)
        self.activation = check_activation(activation, self._describe())
        self._declared_input_shape = check_input_shape(input_shape, self._describe())
        self.built = False
        self.input_shape: tuple[int, ...] | None = None    # without the batch axis
        self.output_shape: tuple[int, ...] | None = None   # without the batch axis
        self.weights: list[np.ndarray] = []
        self.weight_names: list[str] = []
        self.grads: list[np.ndarray | None] = []
        #: False for a model's first layer: its input gradient would be thrown away
        self.need_input_grad = True
        self._activation_cache = None
        self._recording = None

    def _describe(self) -> str:
        return f"{type(self).__name__} {getattr(self, 'name', '')!r}".strip()

    # --- building ------------------------------------------------------------------------------
    def build(self, input_shape) -> None:
        """Create parameters for inputs of ``input_shape`` (batch axis excluded)."""
        input_shape = tuple(int(d) for d in input_shape)
        self._check_rank(len(input_shape) + 1, input_shape)
        self.weights, self.weight_names = [], []
        self.build_params(input_shape)
        self.grads = [None] * len(self.weights)
        self.input_shape = input_shape
        self.output_shape = tuple(self.compute_output_shape(input_shape))
        self.built = True

    def build_params(self, input_shape) -> None:
        """Create parameters with :meth:`add_weight`. Layers without parameters skip this."""

    def add_weight(self, name: str, shape: tuple[int, ...], initializer) -> np.ndarray | None:
        """Create one parameter. While :meth:`weight_shapes` records, only the shape is noted."""
        shape = tuple(int(d) for d in shape)
        if self._recording is not None:
            self._recording.append((name, shape))
            return None
        value = initializers.get(initializer)(shape, seeding.global_generator(), self.dtype)
        array = np.ascontiguousarray(value, dtype=self.dtype)
        self.weights.append(array)
        self.weight_names.append(name)
        return array

    def weight_shapes(self, input_shape) -> list[tuple[str, tuple[int, ...]]]:
        """``(name, shape)`` of every parameter for this input shape, allocating nothing: a model
        file's claims are checked against these before any array is read."""
        self._recording = []
        try:
            self.build_params(tuple(input_shape))
            return self._recording
        finally:
            self._recording = None

    def compute_output_shape(self, input_shape) -> tuple[int, ...]:
        return tuple(input_shape)

    # --- forward and backward -------------------------------------------------------------------
    def __call__(self, x, training: bool = False) -> np.ndarray:
        """Build on first use, then run :meth:`forward`: ``layers.Conv2D(8, 3)(x)`` just works."""
        x = self._as_input(x)
        if not self.built:
            self.build(x.shape[1:])
        return self.forward(x, training=training)

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        out = self.forward_logits(x, training)
        if self.activation == "linear":
            return out
        out, self._activation_cache = ACTIVATIONS[self.activation][0](out)
        return out

    def backward(self, grad_out: np.ndarray) -> np.ndarray | None:
        """Gradient w.r.t. the input; parameter gradients land in ``self.grads``."""
        if self.activation != "linear":
            grad_out = ACTIVATIONS[self.activation][1](grad_out, self._activation_cache)
        return self.backward_logits(grad_out)

    def forward_logits(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """The core op alone, without the activation (the logits, for a softmax layer)."""
        if not self.built:
            raise NotBuiltError(f"{self._describe()} is not built: call it on data, or give the "
                                f"model an input shape, first.")
        x = self._as_input(x)
        self._check_input(x)
        return self.call(x, training)

    def backward_logits(self, grad_logits: np.ndarray) -> np.ndarray | None:
        return self.call_backward(grad_logits)

    def call(self, x: np.ndarray, training: bool) -> np.ndarray:
        return x

    def call_backward(self, grad_out: np.ndarray) -> np.ndarray | None:
        return grad_out

    # --- input checks ---------------------------------------------------------------------------
    def _as_input(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype != self.dtype:
            if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
                raise ShapeError(f"{self._describe()}: expected a numeric array. Received dtype "
                                 f"{x.dtype}.")
            x = x.astype(self.dtype)
        return x

    def _check_rank(self, rank: int, shape_without_batch) -> None:
        if (self.input_rank is not None and rank != self.input_rank) or rank < 2:
            want = ("(N, H, W, C)" if self.input_rank == 4 else
                    f"rank {self.input_rank}" if self.input_rank else "rank >= 2 (N, ...)")
            raise ShapeError(f"{self._describe()}: expected input of shape {want}, with the batch "
                             f"axis first. Received input of rank {rank} (shape without batch "
                             f"{tuple(shape_without_batch)}).")

    def _check_input(self, x: np.ndarray) -> None:
        self._check_rank(x.ndim, x.shape[1:])
        if self.input_shape is not None and x.shape[-1] != self.input_shape[-1]:
            raise ShapeError(f"{self._describe()}: was built for inputs of shape "
                             f"(N, {', '.join(map(str, self.input_shape))}); received "
                             f"{x.shape}: the last axis is {x.shape[-1]}, expected "
                             f"{self.input_shape[-1]}.")

    def _set_weight_options(self, use_bias, kernel_initializer, bias_initializer) -> None:
        """Shared by layers with a kernel and a bias: check the initializer names now, not at
        build time, so a typo is reported where it was written."""
        initializers.get(kernel_initializer)
        initializers.get(bias_initializer)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer

    def replica(self) -> Layer:
        """A twin that shares this layer's parameter arrays but has its own caches and gradients,
        so two threads can each run a shard of a batch through the same weights."""
        twin = copy.copy(self)
        twin.grads = [None] * len(self.weights)
        twin._activation_cache = None
        if hasattr(twin, "_cache"):
            twin._cache = None
        if hasattr(self, "rng"):      # Dropout, augmentation: a stream of its own, drawn from
            twin.rng = np.random.default_rng(int(self.rng.integers(2**63)))   # ours: repeatable
        return twin

    # --- parameters -----------------------------------------------------------------------------
    def get_weights(self) -> list[np.ndarray]:
        return [w.copy() for w in self.weights]

    def set_weights(self, weights) -> None:
        """Copy values into the existing parameter arrays (optimizer state stays attached)."""
        weights = list(weights)
        if len(weights) != len(self.weights):
            raise ShapeError(f"{self._describe()}: set_weights expects {len(self.weights)} "
                             f"arrays {[w.shape for w in self.weights]}; received {len(weights)}.")
        for target, name, value in zip(self.weights, self.weight_names, weights):
            value = np.asarray(value)
            if value.shape != target.shape:
                raise ShapeError(f"{self._describe()}: weight {name!r} has shape {target.shape}; "
                                 f"received {value.shape}.")
            target[...] = value

    def params_and_grads(self):
        """The one parameter interface optimizers see: ``(param, grad)`` pairs."""
        if not self.trainable:
            return []
        return [(w, g) for w, g in zip(self.weights, self.grads) if g is not None]

    def count_params(self) -> int:
        return int(sum(w.size for w in self.weights))

    # --- serialisation --------------------------------------------------------------------------
    def get_config(self) -> dict:
        config = {"name": self.name, "dtype": self.dtype.name, "trainable": self.trainable}
        if self._declared_input_shape is not None:
            config["input_shape"] = list(self._declared_input_shape)
        return config

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        if "input_shape" in config:
            config["input_shape"] = tuple(config["input_shape"])
        return cls(**config)

    def __repr__(self) -> str:
        """Shows only the arguments that differ from the constructor's defaults, as PyTorch does."""
        signature = inspect.signature(type(self).__init__).parameters
        shown = []
        for key, value in self.get_config().items():
            if key in ("name", "dtype", "trainable", "input_shape") or (
                    key == "activation" and value == "linear"):
                continue
            default = signature[key].default if key in signature else inspect.Parameter.empty
            if _normalise(value) != _normalise(default):
                shown.append(f"{key}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"


def _normalise(value):
    """Compare ``(2, 2)`` and ``[2, 2]`` and ``2`` as equal pair arguments."""
    if isinstance(value, (list, tuple)):
        return tuple(_normalise(v) for v in value)
    return value
