"""``Functional``: a graph of layer calls, from symbolic inputs to symbolic outputs.

A node is a layer plus the tensors it was called on (``layers.symbolic``). The graph keeps its
nodes in topological order, who consumes each tensor, and its layers; running it is
``graph.execute``. A graph is itself a layer (its variables are its layers'), so a model can be
called inside another model.

>>> from cnnlab import Input, layers
>>> from cnnlab.graph.functional import Functional
>>> x = Input((8, 8, 3))
>>> y = layers.Conv2D(4, 3, padding="same")(x)
>>> graph = Functional(x, layers.Add()([y, layers.Conv2D(4, 1)(x)]))
>>> [layer.name.rstrip("_0123456789") for layer in graph.layers]
['input_layer', 'conv2d', 'conv2d', 'add']
"""

from __future__ import annotations

import numpy as np

from cnnlab.errors import ConfigError, ShapeError
from cnnlab.graph import execute, fusion
from cnnlab.layers.base import Layer, Variable, layer_class, registered_name
from cnnlab.layers.core import InputLayer
from cnnlab.layers.symbolic import SymbolicTensor, make_input

MAX_NODES = 10_000


def _flatten_structure(value, what: str) -> tuple[list, list[str] | None]:
    """One tensor, a list, or a dict -> (list of tensors, dict keys or None)."""
    if isinstance(value, dict):
        keys = list(value)
        items = [value[k] for k in keys]
    else:
        keys = None
        items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ConfigError(f"Model {what} are empty; expected symbolic tensors from "
                          f"cnnlab.Input(...) and layer calls.")
    for item in items:
        if not isinstance(item, SymbolicTensor):
            raise ConfigError(f"Model {what} must be symbolic tensors (from cnnlab.Input(...) and "
                              f"layer calls); received {type(item).__name__}"
                              + (" (data): build the model from cnnlab.Input(...), then call it "
                                 "on data" if isinstance(item, np.ndarray) else "") + ".")
    return items, keys


def topological_nodes(inputs: list[SymbolicTensor], outputs: list[SymbolicTensor]) -> list:
    """Every node between ``inputs`` and ``outputs``, each after the nodes it reads from.
    Raises when an output depends on a tensor that is not among the inputs."""
    input_ids = {id(t) for t in inputs}
    order, done, on_path = [], set(), set()
    for output in outputs:
        stack = [(output, False)]
        while stack:
            tensor, expanded = stack.pop()
            node = tensor.node
            if id(tensor) in input_ids or id(node) in done:
                continue
            if expanded:
                on_path.discard(id(node))
                done.add(id(node))
                order.append(node)
                continue
            if not node.inbound:
                raise ConfigError(f"Output {output.name!r} {output.shape} is not connected to the "
                                  f"model's inputs: it depends on {tensor.name!r} {tensor.shape}, "
                                  f"which is not among the inputs "
                                  f"{[t.name for t in inputs]}. Pass it in inputs=[...].")
            if len(done) > MAX_NODES:
                raise ConfigError(f"A model holds at most {MAX_NODES} nodes.")
            on_path.add(id(node))
            stack.append((tensor, True))
            stack.extend((t, False) for t in reversed(node.inbound))
    return order


class Functional(Layer):
    """The graph from ``inputs`` to ``outputs`` (each one tensor, a list, or a dict)."""

    input_count = None
    rounds_what_crosses = False          # under a mixed policy its layers round, not the graph

    def __init__(self, inputs, outputs, name: str | None = None, trainable: bool = True):
        """``inputs`` and ``outputs`` None: a graph whose ends come later (``Sequential``'s,
        which has them once it knows its input shape); it is not built until ``_set_graph``."""
        if inputs is None and outputs is None:
            self._input_keys = self._output_keys = None
            super().__init__(name=name, trainable=trainable)
            self.inputs, self.outputs, self.nodes, self._graph_layers = [], [], [], []
            return
        input_list, self._input_keys = _flatten_structure(inputs, "inputs")
        output_list, self._output_keys = _flatten_structure(outputs, "outputs")
        super().__init__(name=name, dtype=input_list[0].dtype, trainable=True)
        self._set_graph(input_list, output_list)
        if not trainable:
            self.trainable = False

    # --- structure ------------------------------------------------------------------------------
    def _set_graph(self, inputs: list[SymbolicTensor], outputs: list[SymbolicTensor]) -> None:
        for tensor in inputs:
            if tensor.node.inbound:
                raise ConfigError(f"Model inputs must come from cnnlab.Input(...); "
                                  f"{tensor.name!r} is the output of a layer.")
        self.inputs, self.outputs = list(inputs), list(outputs)
        self.nodes = topological_nodes(self.inputs, self.outputs)
        self.consumers: dict[int, list] = {}
        for node in self.nodes:
            for tensor in node.inbound:
                self.consumers.setdefault(id(tensor), []).append(node)
        self.steps = execute.plan_steps(self.nodes, self.outputs)
        layers = [t.node.layer for t in self.inputs]
        for node in self.nodes:
            if all(node.layer is not known for known in layers):
                layers.append(node.layer)
        names = [layer.name for layer in layers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"Model {self.name!r}: layer names must be unique; "
                              f"{duplicates} are used by more than one layer. Pass name=... to "
                              f"tell them apart.")
        self._graph_layers = layers
        self.input_shapes = [tuple(t.shape[1:]) for t in self.inputs]
        self.output_shapes = [tuple(t.shape[1:]) for t in self.outputs]
        # one input or output: its shape (batch axis excluded); several: the list, as in Keras
        self.input_shape = self.input_shapes[0] if len(inputs) == 1 else self.input_shapes
        self._output_shape = (self.output_shapes[0] if len(outputs) == 1
                              else self.output_shapes)
        self.built = True

    @property
    def layers(self) -> list[Layer]:
        """Every layer, inputs first, then in topological order (each once)."""
        return list(self._graph_layers)

    @property
    def input(self):
        return self.inputs[0] if len(self.inputs) == 1 else list(self.inputs)

    @property
    def output(self):
        return self.outputs[0] if len(self.outputs) == 1 else list(self.outputs)

    @property
    def input_names(self) -> list[str]:
        return self._input_keys or [t.node.layer.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return self._output_keys or [t.node.layer.name for t in self.outputs]

    def get_layer(self, name: str | None = None, index: int | None = None) -> Layer:
        if index is not None:
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ConfigError(f"No layer named {name!r} in model {self.name!r}; layers are "
                          f"{[layer.name for layer in self.layers]}.")

    @Layer.trainable.setter
    def trainable(self, value: bool) -> None:
        """Freezing a model freezes every layer in it, as in Keras."""
        self._trainable = bool(value)
        for layer in getattr(self, "_graph_layers", []):
            layer.trainable = value

    def leaf_layers(self) -> list:
        """Every layer that is not itself a model, nested models' layers included, in order,
        each once: what viz, detection and the checks over a whole network look through."""
        found = []
        for layer in self.layers:
            inner = layer.leaf_layers() if isinstance(layer, Functional) else [layer]
            found += [leaf for leaf in inner if leaf not in found]
        return found

    # --- as a layer: variables are its layers' ----------------------------------------------------
    def named_variables(self) -> list[tuple[str, Variable]]:
        seen, named = set(), []
        for layer in self.layers:
            for name, variable in layer.named_variables():
                if id(variable) not in seen:
                    seen.add(id(variable))
                    named.append((f"{layer.name}/{name}", variable))
        return named

    @property
    def variables(self) -> list[Variable]:
        return [v for _, v in self.named_variables()]

    def named_trainable_params(self) -> list[tuple[str, Variable]]:
        """``(name, variable)`` of every parameter the optimizer updates now: what training
        and the file format key gradients and optimizer slots by."""
        trainable = {id(v) for v in self.trainable_params}
        return [(name, v) for name, v in self.named_variables() if id(v) in trainable]

    @variables.setter
    def variables(self, _value) -> None:
        """(Layer.__init__ sets an empty list; a graph's variables are always its layers'.)"""

    @property
    def params(self) -> list[Variable]:
        return [v for v in self.variables if v.kind == "param"]

    @property
    def trainable_params(self) -> list[Variable]:
        seen, params = set(), []
        for layer in self.layers:
            for variable in layer.trainable_params:
                if id(variable) not in seen:
                    seen.add(id(variable))
                    params.append(variable)
        return params

    def compute_output_shape(self, input_shape):
        shapes = [tuple(t.shape[1:]) for t in self.outputs]
        return shapes[0] if len(shapes) == 1 else shapes

    def _check_shapes(self, input_shape):
        shapes = input_shape if isinstance(input_shape, list) else [input_shape]
        expected = [tuple(t.shape[1:]) for t in self.inputs]
        if [tuple(s) for s in shapes] != expected:
            raise ShapeError(f"Model {self.name!r} expects inputs "
                             f"{[(None, *s) for s in expected]}; received "
                             f"{[(None, *s) for s in shapes]}.")

    def _check_input(self, inputs) -> None:
        arrays = inputs if isinstance(inputs, list) else [inputs]
        self._check_shapes([x.shape[1:] for x in arrays])

    def call(self, inputs, ctx):
        """Run the graph as one layer of an enclosing graph; the cache is the inner tape."""
        activations, _ = fusion.plan(self)
        outputs, tape = execute.forward(self, inputs if isinstance(inputs, list) else [inputs],
                                        ctx.child(), activations)
        return (outputs[0] if len(outputs) == 1 else outputs), tape

    def call_backward(self, grad, tape, input_grad):
        grads = execute.backward(self, tape, grad if isinstance(grad, list) else [grad],
                                 want_inputs=input_grad)
        # a graph takes a list of inputs (``input_count`` None), so it returns a list of their
        # gradients, one input or several
        return (grads.inputs if input_grad else None), [grads.params.get(v) for v in self.params]

    # --- configuration: layers and their inbound connections ---------------------------------
    def _node_refs(self) -> dict[int, tuple[str, int]]:
        """Each node of this graph -> (layer name, index among that layer's nodes here)."""
        refs, counts = {}, {}
        for tensor in self.inputs:
            refs[id(tensor.node)] = (tensor.node.layer.name, 0)
            counts[tensor.node.layer.name] = 1
        for node in self.nodes:
            name = node.layer.name
            refs[id(node)] = (name, counts.get(name, 0))
            counts[name] = counts.get(name, 0) + 1
        return refs

    def get_config(self) -> dict:
        refs = self._node_refs()

        def ref(tensor):
            return [*refs[id(tensor.node)], tensor.index]

        entries = {}
        for layer in self.layers:
            entries[layer.name] = {"class_name": registered_name(layer), "name": layer.name,
                                   "config": layer.get_config(), "inbound_nodes": []}
        for node in self.nodes:
            entry = entries[node.layer.name]
            entry["inbound_nodes"].append([ref(t) for t in node.inbound])
            if node.training is not None:       # {node index: the mode that call always runs in}
                entry.setdefault("call_training", {})[
                    str(len(entry["inbound_nodes"]) - 1)] = node.training
        config = {"name": self.name, "trainable": self.trainable,
                  "layers": list(entries.values()),
                  "input_layers": [ref(t) for t in self.inputs],
                  "output_layers": [ref(t) for t in self.outputs]}
        if self._input_keys:
            config["input_keys"] = self._input_keys
        if self._output_keys:
            config["output_keys"] = self._output_keys
        return config

    @classmethod
    def from_config(cls, config: dict):
        inputs, outputs, keys = graph_from_config(config)
        return cls(dict(zip(keys[0], inputs)) if keys[0] else inputs,
                   dict(zip(keys[1], outputs)) if keys[1] else outputs,
                   name=config.get("name"), trainable=config.get("trainable", True))


def graph_from_config(config: dict, max_layers: int = 1000):
    """Rebuild the layers a config describes and replay their calls, in dependency order.
    Returns ``(inputs, outputs, (input keys, output keys))``; every reference to a layer, node or
    tensor that does not exist is a ConfigError naming it."""
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        raise ConfigError("A model config needs a list of layers.")
    if not 0 < len(config["layers"]) <= max_layers:
        raise ConfigError(f"A model config holds 1 to {max_layers} layers; this one has "
                          f"{len(config['layers'])}.")
    layers, calls = {}, []
    for index, entry in enumerate(config["layers"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
            raise ConfigError(f"layer {index} is not a {{class_name, config}} entry.")
        cls = layer_class(entry.get("class_name"))
        try:
            layer = cls.from_config(entry["config"])
        except TypeError as exc:
            raise ConfigError(f"layer {index} ({entry.get('class_name')}) has an invalid "
                              f"configuration: {exc}") from None
        if layer.name in layers:
            raise ConfigError(f"Two layers are named {layer.name!r}; names must be unique.")
        layers[layer.name] = layer
        nodes = entry.get("inbound_nodes", [])
        if not isinstance(nodes, list):
            raise ConfigError(f"layer {layer.name!r}: inbound_nodes must be a list.")
        modes = entry.get("call_training", {})
        if not isinstance(modes, dict) or not all(
                isinstance(v, bool) and str(k).isdigit() for k, v in modes.items()):
            raise ConfigError(f"layer {layer.name!r}: call_training must map node indices to "
                              f"true or false; received {modes!r}.")
        calls += [(layer, refs, modes.get(str(i))) for i, refs in enumerate(nodes)]
    made: dict[tuple[str, int], list[SymbolicTensor]] = {}
    for layer in layers.values():
        if isinstance(layer, InputLayer):
            made[(layer.name, 0)] = [make_input(layer)]

    def lookup(ref):
        if not isinstance(ref, list) or len(ref) != 3 or not isinstance(ref[0], str) \
                or not all(isinstance(i, int) and not isinstance(i, bool) for i in ref[1:]):
            raise ConfigError(f"Invalid tensor reference {ref!r}; expected [layer, node, "
                              f"tensor].")
        if ref[0] not in layers:
            raise ConfigError(f"The graph refers to a layer {ref[0]!r} that is not in the model "
                              f"(layers: {sorted(layers)}).")
        tensors = made.get((ref[0], ref[1]))
        if tensors is None:
            return None
        if not 0 <= ref[2] < len(tensors):
            raise ConfigError(f"The graph refers to output {ref[2]} of layer {ref[0]!r}, which "
                              f"has {len(tensors)}.")
        return tensors[ref[2]]

    pending, counts = list(calls), {}
    while pending:
        progress, waiting = False, []
        for layer, refs, training in pending:
            if not isinstance(refs, list) or not refs:
                raise ConfigError(f"layer {layer.name!r}: an inbound node must list its input "
                                  f"tensors.")
            tensors = [lookup(r) for r in refs]
            if any(t is None for t in tensors):
                waiting.append((layer, refs, training))
                continue
            out = layer(tensors[0] if len(tensors) == 1 and layer.input_count == 1 else tensors,
                        training=training)
            index = counts.get(layer.name, 1 if isinstance(layer, InputLayer) else 0)
            made[(layer.name, index)] = out if isinstance(out, list) else [out]
            counts[layer.name] = index + 1
            progress = True
        if not progress:
            missing = sorted({r[0] for _, refs, _ in waiting for r in refs
                              if lookup(r) is None})
            raise ConfigError(f"The graph cannot be rebuilt: calls wait on nodes that never "
                              f"come (of {missing}); the file's inbound_nodes are inconsistent.")
        pending = waiting
    ends = []
    for key in ("input_layers", "output_layers"):
        refs = config.get(key)
        if not isinstance(refs, list) or not refs:
            raise ConfigError(f"A model config needs {key}.")
        tensors = [lookup(r) for r in refs]
        if any(t is None for t in tensors):
            raise ConfigError(f"{key} refer to a node that the graph does not make: {refs!r}.")
        ends.append(tensors)
    keys = tuple(config.get(k) if isinstance(config.get(k), list) else None
                 for k in ("input_keys", "output_keys"))
    return ends[0], ends[1], keys
