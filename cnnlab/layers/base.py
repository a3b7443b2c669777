"""The ``Layer`` contract every cnnlab layer keeps.

A layer holds variables (parameters and state) and nothing about any one call. Its core op is a
pure pair:

    call(inputs, ctx)                        -> (out, cache)
    call_backward(grad, cache, input_grad)   -> (input_grads, param_grads)

``cache`` is whatever backward needs from that call; it is handed back by whoever ran the call
(the graph's tape), so two calls of one layer, in two threads or twice in one graph, never meet.
``param_grads`` line up with :attr:`Layer.params`. ``ctx`` (``layers.context.CallContext``) is
the call's own: training or inference, the random generator, reductions over a sharded batch,
and the scratch buffers the caller keeps.

The activation (``Conv2D(activation='relu')``) is not part of the core op: :meth:`Layer.forward`
applies whichever activation it is asked for after the core op and records it in the cache, so
the graph can move an activation (ReLU after max pooling, softmax into the loss) without the
layer knowing, and backward undoes exactly what forward did.

A layer's dtype policy (``dtype='mixed_bfloat16'``, or ``config.set_dtype_policy``: Keras'
mixed precision) is kept here too: its variables stay float32, and :meth:`Layer.forward` and
:meth:`Layer.backward` round what crosses the layer (inputs, output, gradients) to bfloat16,
while the layer rounds its weights where it reads them (:meth:`Layer.compute_weight`).
Rounding is treated as the identity in backward, as a cast is.

Subclasses implement ``build_params(input_shape)`` (with :meth:`add_weight`),
``compute_output_shape(input_shape)``, ``call``/``call_backward`` and ``get_config``. Shapes
exclude the batch axis; a merge layer gets a list of them.

This module is longer than most (about 540 lines) because it is one contract: the ``Layer``
class, which every layer inherits whole, with the registry and naming that ``get_config`` and
files rely on. Split, a reader would hold two files open to follow one call.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections import Counter

import numpy as np

from cnnlab import config as _config
from cnnlab import seeding
from cnnlab.engine import arrays, initializers
from cnnlab.engine.activations import ACTIVATIONS
from cnnlab.engine.normalization import fold_affine
from cnnlab.engine.precision import round_to_bfloat16
from cnnlab.errors import ConfigError, NotBuiltError, ShapeError
from cnnlab.layers.context import CallContext, Variable, deferred_variables, variables_deferred
from cnnlab.layers.symbolic import SymbolicTensor, record_call

__all__ = ["Layer", "CallContext", "Variable", "deferred_variables", "layer_class"]

LAYER_REGISTRY: dict[str, type] = {}
_name_counts: Counter = Counter()


def _snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower().replace("2_d", "2d")


def _built_in(cls) -> bool:
    return cls.__module__.split(".")[0] == "cnnlab"


def registered_name(layer_or_class) -> str:
    """The name a layer's class is registered and saved under (see ``Layer.__init_subclass__``)."""
    cls = layer_or_class if isinstance(layer_or_class, type) else type(layer_or_class)
    return getattr(cls, "registered_name", cls.__name__)


def layer_class(name) -> type:
    """A layer class by its name, for configurations and model files."""
    if isinstance(name, str) and name in LAYER_REGISTRY:
        return LAYER_REGISTRY[name]
    hint = difflib.get_close_matches(str(name), LAYER_REGISTRY, n=1, cutoff=0.5)
    raise ConfigError(f"Unknown layer class {name!r}"
                      + (f"; did you mean {hint[0]!r}?" if hint else
                         f". Known: {sorted(LAYER_REGISTRY)}."))


def reset_names() -> None:
    """Start automatic names afresh (``cnnlab.utils.clear_session``)."""
    _name_counts.clear()


def unique_name(base: str) -> str:
    """Keras-style automatic names: ``conv2d``, ``conv2d_1``, ``conv2d_2`` ..."""
    count = _name_counts[base]
    _name_counts[base] += 1
    return base if count == 0 else f"{base}_{count}"


def linear_weights(layer, affine=None):
    """A linear op's (Conv2D, Dense: ``folds_output_affine``) kernel, output channel last, and
    bias or None: the layer's own, or with ``affine``, a ``(scale, shift)`` per output channel
    (a call's ``ctx.output_affine``), folded in."""
    kernel = layer.compute_weight(layer.variables[0].value)
    bias = layer.compute_weight(layer.variables[1].value) if layer.use_bias else None
    if affine is None:
        return kernel, bias
    return fold_affine(kernel, bias, *affine)


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


def symbolic_inputs(inputs) -> bool:
    """True for a symbolic tensor, or a list of them (the functional API)."""
    items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    found = [isinstance(item, SymbolicTensor) for item in items]
    if any(found) and not all(found):
        raise ShapeError("A layer was called on a mix of symbolic tensors and data; pass all "
                         "symbolic tensors (to build a model) or all arrays (to compute).")
    return bool(items) and all(found)


class Layer:
    """Base class. See the module docstring for what subclasses provide."""

    #: input rank (batch included) this layer accepts, or None for any rank >= 2
    input_rank: int | None = None
    #: folds ``ctx.output_affine`` into its weights (a linear op: conv, dense)
    folds_output_affine = False
    #: adds ``ctx.output_residual`` to its output in its own last pass, before its activation
    #: (``graph.fusion``'s residual join: Conv2D)
    folds_output_residual = False
    #: takes ``ctx.output_pool``, the max pooling after it, into its own call, and returns the
    #: pooled map (``graph.fusion``'s pooled convolution: Conv2D)
    folds_output_pool = False
    #: the core op's output is a fresh array nothing else holds (not its input, not its cache),
    #: so a ReLU after it may overwrite it in place (``graph.fusion``'s BatchNorm + ReLU)
    fresh_output = False
    #: its ``call_backward`` takes ``grad_owned`` and, when True, may write the input gradient
    #: into the upstream gradient's array (an elementwise backward of the same shape)
    writes_into_grad = False
    #: how many inputs the layer takes: 1, or None for a list of two or more (merge layers)
    input_count: int | None = 1
    #: under a mixed policy, whether the layer still computes in its variables' dtype, with
    #: its weights and their gradients unrounded: Keras' BatchNormalization normalises in
    #: float32 (its statistics need the bits), and so does cnnlab's; what crosses it (output,
    #: input gradient) is rounded as any layer's
    computes_in_variable_dtype = False
    #: whether a mixed policy rounds what crosses this layer; a graph's layers do that for it
    rounds_what_crosses = True

    def __init_subclass__(cls, replace: bool = False, **kwargs):
        """Register ``cls`` under its name for configurations and model files. A class of
        yours named as a built-in one (``class Dense(Layer)``) never silently replaces it:
        it is registered as ``'<module>>Dense'`` (Keras' package prefix) and files record that
        name, unless it asks to replace the built-in: ``class Dense(Layer, replace=True)``."""
        super().__init_subclass__(**kwargs)
        if cls.__name__.startswith("_"):          # private helpers are not loadable layers
            return
        key, taken = cls.__name__, LAYER_REGISTRY.get(cls.__name__)
        if taken is not None and not replace and _built_in(taken) and not _built_in(cls):
            key = f"{cls.__module__}>{cls.__name__}"
        cls.registered_name = key
        LAYER_REGISTRY[key] = cls

    def __init__(self, name: str | None = None, dtype=None, trainable: bool = True,
                 input_shape=None, activation=None):
        if name is not None and (not isinstance(name, str) or not name or "/" in name):
            raise ConfigError(f"{type(self).__name__}: name must be a non-empty string without "
                              f"'/'. Received: name={name!r}")
        self.name = name or unique_name(_snake_case(type(self).__name__))
        self._dtype_policy = _config.resolve_policy(dtype)
        self.dtype = np.dtype(self._dtype_policy.variable_dtype)     # its arrays' dtype
        self._rounds = self._dtype_policy.rounds and self.rounds_what_crosses
        self._trainable = bool(trainable)
        self.activation = check_activation(activation, self._describe())
        self._declared_input_shape = check_input_shape(input_shape, self._describe())
        self.built = False
        self.input_shape = None      # without the batch axis (a list of shapes for merges)
        self._output_shape: tuple[int, ...] | None = None   # without the batch axis
        self.variables: list[Variable] = []
        self._inbound_nodes: list = []    # graph structure: the symbolic calls of this layer

    @property
    def output_shape(self):
        """Keras' output shape: the batch axis first, as None (``(None, 10)``); a list of them
        for several outputs; None before the layer is built. ``input_shape`` leaves the batch
        axis out."""
        shape = self._output_shape
        if shape is None:
            return None
        if isinstance(shape, list):
            return [(None, *s) for s in shape]
        return (None, *shape)

    def _describe(self) -> str:
        return f"{type(self).__name__} {getattr(self, 'name', '')!r}".strip()

    @property
    def dtype_policy(self):
        """Keras' ``DTypePolicy``: ``float32``, ``float64`` or ``mixed_bfloat16``."""
        return self._dtype_policy

    @property
    def compute_dtype(self) -> str:
        """The dtype this layer computes in (``'bfloat16'`` under ``mixed_bfloat16``)."""
        return self._dtype_policy.compute_dtype

    @property
    def variable_dtype(self) -> str:
        """The dtype of this layer's variables (``dtype``, as a string)."""
        return self._dtype_policy.variable_dtype

    def compute_weight(self, value):
        """A variable's value as this call computes with it: rounded to bfloat16 under a mixed
        policy (a new array; the variable keeps its float32 bits), else the value itself."""
        return round_to_bfloat16(value) if self._rounds else value

    def _rounded(self, values):
        """Under a mixed policy, an array (or a list of them, None kept) rounded to bfloat16."""
        if isinstance(values, list):
            return [self._rounded(a) for a in values]
        if values is None:
            return None
        if values.dtype != np.float32:
            raise ConfigError(f"{self._describe()}: its dtype policy {self._dtype_policy.name!r}"
                              f" computes from float32 arrays; received {values.dtype}. Give "
                              f"the layers around it the same policy.")
        return round_to_bfloat16(values)

    @property
    def trainable(self) -> bool:
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        self._trainable = bool(value)

    # --- building ------------------------------------------------------------------------------
    def build(self, input_shape) -> None:
        """Create parameters for inputs of ``input_shape`` (batch axis excluded)."""
        input_shape = self._normalise_shape(input_shape)
        self._check_shapes(input_shape)
        self.variables = []
        self.build_params(input_shape)
        self.input_shape = input_shape
        self._output_shape = tuple(self.compute_output_shape(input_shape))
        self.built = True

    @staticmethod
    def _normalise_shape(shape):
        if shape and isinstance(shape[0], (tuple, list)):
            return [tuple(int(d) for d in s) for s in shape]
        return tuple(int(d) for d in shape)

    def build_params(self, input_shape) -> None:
        """Create variables with :meth:`add_weight`. Layers without any skip this."""

    def add_weight(self, name: str, shape: tuple[int, ...], initializer,
                   kind: str = "param") -> np.ndarray | None:
        """Create one variable (under ``deferred_variables``: its shape only, no array)."""
        shape = tuple(int(d) for d in shape)
        if variables_deferred():
            self.variables.append(Variable(name, None, kind, pending=(shape, self.dtype)))
            return None
        value = initializers.get(initializer)(shape, seeding.global_generator(), self.dtype)
        array = np.ascontiguousarray(value, dtype=self.dtype)
        self.variables.append(Variable(name, array, kind))
        return array

    def compute_output_shape(self, input_shape) -> tuple[int, ...]:
        return tuple(input_shape)

    # --- calling: on data it computes, on symbolic tensors it records a node --------------------
    def __call__(self, inputs, training: bool | None = None):
        """``layers.Conv2D(8, 3)(x)``: on an array, build on first use and compute; on a symbolic
        tensor (``cnnlab.Input``), record the call in the graph and return a symbolic tensor.
        ``training`` on a symbolic call fixes the mode of that call whatever the model runs in:
        ``backbone(x, training=False)`` keeps its BatchNormalization in inference mode while the
        model around it trains (Keras' transfer-learning idiom)."""
        if symbolic_inputs(inputs):
            return record_call(self, inputs, training)
        inputs = self._as_inputs(inputs)
        variables = self.variables
        module = arrays.array_module(variables[0].value) if variables else np
        if module is not np:                                 # GPU weights: the inputs go there
            inputs = ([arrays.on_device(x, module) for x in inputs] if isinstance(inputs, list)
                      else arrays.on_device(inputs, module))
        if not self.built:
            self.build([x.shape[1:] for x in inputs] if isinstance(inputs, list)
                       else inputs.shape[1:])
        self._check_input(inputs)
        ctx = CallContext(bool(training))
        out, _ = self.forward(inputs, ctx)
        for variable, value in ctx.state_updates:       # eager: statistics update at once
            variable.apply_update(value)
        return out

    def forward(self, inputs, ctx: CallContext, activation: str | None = None):
        """The core op, then ``activation`` (the layer's own unless the caller names another).
        Returns ``(out, cache)``; :meth:`backward` takes the cache back. The inputs are checked
        by the caller (``__call__`` on data; a graph checks its own inputs, and its symbolic
        shapes vouch for every node inside)."""
        if not self.built:
            raise NotBuiltError(f"{self._describe()} is not built: call it on data, or give the "
                                f"model an input shape, first.")
        if self._rounds:                 # bfloat16 in, bfloat16 out (module docstring)
            inputs = self._rounded(inputs)
        activation = self.activation if activation is None else activation
        if activation != "linear" and self.fuses(activation, ctx):   # the op's own pass runs it
            out, core = self.call(inputs, ctx, activation)
            activation = None
        else:
            out, core = self.call(inputs, ctx)
        if activation in (None, "linear"):
            cache = (core, None, None)
        elif activation == "relu" and self.fresh_output:    # no second map-sized array
            np.maximum(out, 0, out=out)
            cache = (core, activation, out)
        else:
            out, act = ACTIVATIONS[activation][0](out)
            cache = (core, activation, act)
        return (self._rounded(out) if self._rounds else out), cache

    def backward(self, grad, cache, input_grad: bool = True, grad_owned: bool = False):
        """``(input_grads, param_grads)`` for the upstream gradient ``grad`` of :meth:`forward`'s
        output; ``input_grad=False`` when nobody needs the input's gradient (it is then None).
        ``grad_owned``: nothing else holds ``grad``, so a layer that ``writes_into_grad`` may
        write its input gradient into it (the graph's backward pass says so)."""
        core, activation, act = cache
        if activation is not None:
            grad = ACTIVATIONS[activation][1](grad, act)
        if self.writes_into_grad and activation is None:
            input_grads, param_grads = self.call_backward(grad, core, input_grad, grad_owned)
        else:
            input_grads, param_grads = self.call_backward(grad, core, input_grad)
        if self._rounds:                 # a bfloat16 op's gradients are bfloat16 too
            input_grads = self._rounded(input_grads)
            if not self.computes_in_variable_dtype:
                param_grads = self._rounded(list(param_grads))
        return input_grads, param_grads

    def call(self, inputs, ctx: CallContext):
        """The core op: ``(out, cache)``. The base layer is the identity."""
        return inputs, None

    def fuses(self, activation: str, ctx: CallContext) -> bool:
        """Whether :meth:`call` can apply ``activation`` itself in this call, as
        ``call(inputs, ctx, activation)``, in the same pass as the op (its backward then takes
        the activation's gradient too). No layer does by default."""
        return False

    def call_backward(self, grad, cache, input_grad: bool):
        """The core op's backward: ``(input_grads, param_grads)``."""
        return grad, []

    # --- input checks ---------------------------------------------------------------------------
    def _as_inputs(self, inputs):
        if isinstance(inputs, (list, tuple)) and self.input_count != 1:
            return [self._as_input(x) for x in inputs]
        return self._as_input(inputs)

    def _as_input(self, x) -> np.ndarray:
        if arrays.array_module(x) is not np:                  # a GPU array: checked there
            return x if x.dtype == self.dtype else x.astype(self.dtype)
        x = np.asarray(x)
        if x.dtype != self.dtype:
            if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
                raise ShapeError(f"{self._describe()}: expected a numeric array. Received dtype "
                                 f"{x.dtype}.")
            x = x.astype(self.dtype)
        return x

    def _check_shapes(self, input_shape) -> None:
        """Checks an input shape (batch axis excluded) at build time and on symbolic calls."""
        if self.input_count == 1 and isinstance(input_shape, list):
            raise ShapeError(f"{self._describe()} takes one input; received {len(input_shape)}.")
        if self.input_count is None:
            return
        self._check_rank(len(input_shape) + 1, input_shape)

    def _check_rank(self, rank: int, shape_without_batch) -> None:
        if (self.input_rank is not None and rank != self.input_rank) or rank < 2:
            want = ("(N, H, W, C)" if self.input_rank == 4 else
                    f"rank {self.input_rank}" if self.input_rank else "rank >= 2 (N, ...)")
            raise ShapeError(f"{self._describe()}: expected input of shape {want}, with the batch "
                             f"axis first. Received input of rank {rank} (shape without batch "
                             f"{tuple(shape_without_batch)}).")

    def _check_input(self, x) -> None:
        if isinstance(x, list):
            return
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

    def variable(self, name: str) -> np.ndarray:
        """A variable's array by its name: ``conv.variable('kernel')``."""
        for v in self.variables:
            if v.name == name:
                return v.value
        raise ConfigError(f"{self._describe()} has no variable {name!r}; it has "
                          f"{[v.name for v in self.variables]}.")

    # --- the graph: where this layer was called -------------------------------------------------
    def _only_node(self, what: str):
        if not self._inbound_nodes:
            raise ConfigError(f"{self._describe()} has no {what}: it has not been called on a "
                              f"symbolic tensor (cnnlab.Input) or added to a model.")
        if len(self._inbound_nodes) > 1:
            raise ConfigError(f"{self._describe()} was called {len(self._inbound_nodes)} times, "
                              f"so its {what} is ambiguous; keep the tensor each call returned.")
        return self._inbound_nodes[0]

    @property
    def input(self):
        """The symbolic tensor (or list) this layer was called on."""
        node = self._only_node("input")
        return node.inbound[0] if len(node.inbound) == 1 else list(node.inbound)

    @property
    def output(self):
        """The symbolic tensor this layer's call returned: ``Model(model.input, layer.output)``."""
        node = self._only_node("output")
        return node.outputs[0] if len(node.outputs) == 1 else list(node.outputs)

    # --- parameters -----------------------------------------------------------------------------
    @property
    def params(self) -> list[Variable]:
        """The trainable-kind variables, in the order ``call_backward`` returns their gradients."""
        return [v for v in self.variables if v.kind == "param"]

    @property
    def trainable_params(self) -> list[Variable]:
        """The variables an optimizer updates now: none while ``trainable`` is False."""
        return self.params if self.trainable else []

    def named_variables(self) -> list[tuple[str, Variable]]:
        """``(name, variable)``; names are unique within the layer (a model prefixes its layers')."""
        return [(v.name, v) for v in self.variables]

    @property
    def weights(self) -> list[np.ndarray]:
        return [v.value for v in self.variables]

    @property
    def weight_names(self) -> list[str]:
        return [name for name, _ in self.named_variables()]

    @property
    def trainable_weights(self) -> list[np.ndarray]:
        return [v.value for v in self.trainable_params]

    @property
    def non_trainable_weights(self) -> list[np.ndarray]:
        trained = {id(w) for w in self.trainable_weights}
        return [w for w in self.weights if id(w) not in trained]

    def get_weights(self) -> list[np.ndarray]:
        """Copies of the variables' values, as NumPy arrays wherever the model runs (Keras')."""
        return [v.numpy(copy=True) for v in self.variables]

    def set_weights(self, weights) -> None:
        """Copy values into the existing arrays (optimizer state stays attached)."""
        weights = list(weights)
        targets = self.named_variables()
        if len(weights) != len(targets):
            raise ShapeError(f"{self._describe()}: set_weights expects {len(targets)} arrays "
                             f"{[v.value.shape for _, v in targets]}; received {len(weights)}.")
        for (name, target), value in zip(targets, weights):
            value = np.asarray(value)
            if value.shape != target.value.shape:
                raise ShapeError(f"{self._describe()}: weight {name!r} has shape "
                                 f"{target.value.shape}; received {value.shape}.")
        for (_, target), value in zip(targets, weights):
            target.assign(value)

    def count_params(self) -> int:
        return int(sum(w.size for w in self.weights))

    # --- serialisation --------------------------------------------------------------------------
    def get_config(self) -> dict:
        config = {"name": self.name, "dtype": self._dtype_policy.name, "trainable": self.trainable}
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
