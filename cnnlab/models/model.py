"""``Model``: a graph (``graph.Functional``) that trains (``training.Trainer``), with Keras'
conveniences for the summary, files and export.

>>> import numpy as np
>>> from cnnlab import Input, Model, layers
>>> inputs = Input((8, 8, 3))
>>> x = layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
>>> x = layers.Add()([x, layers.Conv2D(4, 1)(inputs)])
>>> outputs = layers.Dense(2, activation="softmax")(layers.Flatten()(x))
>>> model = Model(inputs, outputs)
>>> model.predict(np.zeros((3, 8, 8, 3)), verbose=0).shape
(3, 2)
"""

from __future__ import annotations

import numpy as np

from cnnlab.errors import ConfigError
from cnnlab.graph import execute, fusion
from cnnlab.graph.functional import Functional
from cnnlab.graph.summary import summary_text
from cnnlab.io import saving
from cnnlab.io.export import to_onnx
from cnnlab.layers.base import CallContext, unique_name
from cnnlab.layers.normalization import warn_if_statistics_unsettled
from cnnlab.layers.symbolic import Node
from cnnlab.training import placement
from cnnlab.training.trainer import Trainer


class Model(Trainer, Functional):
    """``Model(inputs, outputs, name=None)``: inputs and outputs are symbolic tensors (one, a list,
    or a dict by name) from ``cnnlab.Input`` and layer calls."""

    def __init__(self, inputs, outputs, name: str | None = None, trainable: bool = True):
        Functional.__init__(self, inputs, outputs, name=name or unique_name("functional"),
                            trainable=trainable)
        self._init_training()

    def _require_built(self):
        if not self.built:
            self.build()

    # --- looking inside ----------------------------------------------------------------------
    def flattened(self) -> Model:
        """The same network with each nested model's layers in its place: one graph of the very
        same layer objects (weights shared, nothing copied), for what looks at layers one by one
        (filters, Grad-CAM, detection's sliding rewrite). A nested model called with
        ``training=False`` passes that to its layers. A model with nothing nested is returned
        as it is."""
        if not any(isinstance(node.layer, Functional) for node in self.nodes):
            return self
        if getattr(self, "_flat", None) is not None:      # a graph never changes once built
            return self._flat

        def inline(graph, inputs, training):
            value = {id(t): v for t, v in zip(graph.inputs, inputs)}
            for node in graph.nodes:
                inbound = [value[id(t)] for t in node.inbound]
                mode = node.training if node.training is not None else training
                if isinstance(node.layer, Functional):
                    outputs = inline(node.layer, inbound, mode)
                else:                    # a node of its own, not registered on the layer
                    outputs = Node(node.layer, inbound, [t.shape[1:] for t in node.outputs],
                                   mode).outputs
                value.update((id(t), v) for t, v in zip(node.outputs, outputs))
            return [value[id(t)] for t in graph.outputs]

        flat = Model(self.inputs, inline(self, self.inputs, None), name=self.name)
        flat.metadata = self.metadata
        self._flat = flat
        return flat

    def run(self, x, training: bool = False, keep_cache: bool = False, fused: bool = False,
            logits: bool = False, before_activation: bool = False):
        """One forward pass keeping every tensor's value: ``(outputs, tape)``. ``tape.values``
        maps ``id(tensor)`` to its value; ``backward_from`` walks the tape. Unfused by default,
        so each layer's output is exactly that layer's (what feature maps show); ``logits``
        leaves the outputs' softmax out (attribution reads the logits), ``before_activation``
        any activation of the output layers (feature visualisation reads a filter's input to
        its ReLU)."""
        self._require_built()
        # the tools that read a tape (feature maps, attribution, visualisation) compute on the
        # host with NumPy, so the model comes back to the CPU for them (``training.placement``)
        placement.place(self, "cpu")
        xs = x if isinstance(x, list) else [x]
        xs = [np.asarray(a, dtype=self.dtype) for a in xs]
        ctx = CallContext(training, keep_cache=keep_cache or training)
        ctx.workspaces = self.workspaces
        activations = fusion.plan(self)[0] if fused else {}
        if logits or before_activation:
            activations.update({t.node: "linear" for t in self.outputs if before_activation
                                or t.node.layer.activation in ("softmax", "log_softmax")})
        return execute.forward(self, xs, ctx, activations, keep_values=True)

    def backward_from(self, tape, output_grads, want_inputs=False, wanted=()):
        """Gradients of ``sum(output * grad)`` over the tape of :meth:`run` (``keep_cache=True``)."""
        grads = output_grads if isinstance(output_grads, list) else [output_grads]
        return execute.backward(self, tape, grads, want_inputs, wanted)

    def node_outputs(self, x) -> list[tuple[object, np.ndarray]]:
        """``(layer, output)`` for every node in topological order, for one forward pass on
        ``x``: what feature-map views show (merges included)."""
        _, tape = self.run(x)
        return [(node.layer, tape.values[id(node.outputs[0])]) for node in self.nodes]

    def forward_all(self, x) -> list[np.ndarray]:
        """Every node's output for ``x``, in topological order (unfused)."""
        return [out for _, out in self.node_outputs(x)]

    # --- Keras conveniences: summary and files -------------------------------------------------
    def summary(self, print_fn=print, line_length: int = 110) -> None:
        print_fn(summary_text(self, line_length))

    def save(self, filepath, include_optimizer: bool = True) -> None:
        """One ``.cnnlab`` file: the graph (JSON), weights and optimizer state by name; no pickle."""
        if self.fit_position is None:          # a checkpoint mid-fit is not a finished model
            warn_if_statistics_unsettled(self)
        saving.save_model(self, filepath, include_optimizer=include_optimizer)

    def save_weights(self, filepath) -> None:
        saving.save_weights(self, filepath)

    def load_weights(self, filepath) -> None:
        saving.load_weights(self, filepath)

    def export(self, filepath, format: str = "onnx", input_layout: str = "NHWC") -> None:
        """Write the model for other runtimes: ``format='onnx'`` (needs ``cnnlab[export]``)."""
        if format != "onnx":
            raise ConfigError(f"export supports format='onnx'; for PyTorch use "
                              f"cnnlab.export.to_torch(model). Received: format={format!r}")
        to_onnx(self, filepath, input_layout)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, layers={len(self.layers)})"
