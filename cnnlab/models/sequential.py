"""``Sequential``: a builder of a graph in which each layer feeds the next. Everything it can do
it inherits from ``Model``; it only keeps the list of layers and rebuilds the chain when the list
changes.

>>> import numpy as np
>>> from cnnlab import Sequential, layers
>>> model = Sequential([layers.Input((28, 28, 1)), layers.Conv2D(8, 3), layers.Flatten(),
...                     layers.Dense(10, activation='softmax')])
>>> model.predict(np.zeros((2, 28, 28, 1)), verbose=0).shape
(2, 10)
"""

from __future__ import annotations

from cnnlab.errors import ConfigError, NotBuiltError, ShapeError
from cnnlab.layers.base import Layer, layer_class, registered_name, unique_name
from cnnlab.layers.core import InputLayer
from cnnlab.layers.symbolic import SymbolicTensor, make_input
from cnnlab.models.model import Model


class Sequential(Model):
    """Layers applied in order. The input shape comes from an ``Input``, the first layer's
    ``input_shape=``, or the first data the model sees."""

    def __init__(self, layers=None, name: str | None = None, trainable: bool = True):
        super().__init__(None, None, name=name or unique_name("sequential"), trainable=trainable)
        self._layers: list[Layer] = []
        self._input_tensor: SymbolicTensor | None = None
        for layer in layers or []:
            self.add(layer)

    # --- structure ------------------------------------------------------------------------------
    @property
    def layers(self) -> list[Layer]:
        """The layers in order (the input is not one of them, as in Keras)."""
        return list(self._layers)

    def add(self, layer) -> None:
        """Append a layer; with a known input shape it is built at once, so a shape error
        names the layer you just added."""
        if isinstance(layer, SymbolicTensor) and isinstance(layer.node.layer, InputLayer):
            layer = layer.node.layer
        if not isinstance(layer, Layer):
            raise ConfigError(f"Sequential.add expects a cnnlab layer; received "
                              f"{type(layer).__name__}.")
        if isinstance(layer, InputLayer):
            if self._layers or self._input_tensor is not None:
                raise ConfigError("Input must be the first thing added to a Sequential model.")
            self._input_tensor = (layer._inbound_nodes[0].outputs[0] if layer._inbound_nodes
                                  else make_input(layer))
            return
        if any(existing.name == layer.name for existing in self._layers):
            raise ConfigError(f"A layer named {layer.name!r} is already in model {self.name!r}; "
                              f"layer names must be unique.")
        if not self._layers and self._input_tensor is None \
                and layer._declared_input_shape is not None:
            self._input_tensor = make_input(InputLayer(layer._declared_input_shape,
                                                       dtype=layer.dtype))
        self._layers.append(layer)
        if self._input_tensor is not None:
            try:
                self._chain()
            except Exception:
                self._layers.pop()
                self._chain()
                raise

    def pop(self) -> Layer:
        layer = self._layers.pop()
        self._chain()
        return layer

    def build(self, input_shape=None) -> None:
        """Build every layer for inputs of ``input_shape`` (batch axis excluded)."""
        if isinstance(input_shape, list) and input_shape and isinstance(input_shape[0], tuple):
            input_shape = input_shape[0]                 # called as a layer: a list of one shape
        if input_shape is not None:
            input_shape = tuple(int(d) for d in input_shape)
            if self._input_tensor is not None and self._input_tensor.shape[1:] != input_shape:
                raise ShapeError(f"Model {self.name!r} was built for inputs (N, "
                                 f"{', '.join(map(str, self._input_tensor.shape[1:]))}); cannot "
                                 f"rebuild for {input_shape}.")
            if self._input_tensor is None:
                dtype = self._layers[0].dtype if self._layers else None
                self._input_tensor = make_input(InputLayer(input_shape, dtype=dtype))
        if self._input_tensor is None:
            raise NotBuiltError(f"Model {self.name!r} has no input shape: start it with "
                                f"layers.Input(shape=...), give its first layer input_shape=..., "
                                f"or call it on data.")
        self._chain()

    def _chain(self) -> None:
        """Rebuild the graph: the input, then every layer called on the previous output."""
        _detach(self.nodes)                              # forget the previous chain's calls
        self.nodes = []
        if self._input_tensor is None:
            return
        x, made = self._input_tensor, []
        try:
            for layer in self._layers:
                x = layer(x)
                made.append(x.node)
        except Exception:
            _detach(made)
            raise
        self.dtype = self._input_tensor.dtype
        self._set_graph([self._input_tensor], [x])
        self._graph_layers = list(self._layers)

    # --- configuration and files ----------------------------------------------------------------
    def get_config(self) -> dict:
        shape = self._input_tensor.shape[1:] if self._input_tensor is not None else None
        return {"name": self.name, "trainable": self.trainable,
                "input_shape": list(shape) if shape else None,
                "layers": [{"class_name": registered_name(layer), "config": layer.get_config()}
                           for layer in self._layers]}

    @classmethod
    def from_config(cls, config: dict) -> Sequential:
        model = cls(name=config.get("name"))
        if config.get("input_shape"):
            model.add(InputLayer(tuple(config["input_shape"])))
        for index, entry in enumerate(config.get("layers", [])):
            if not isinstance(entry, dict) or not isinstance(entry.get("config", {}), dict):
                raise ConfigError(f"A Sequential config's layers are {{class_name, config}} "
                                  f"entries; layer {index} is {entry!r}.")
            cls = layer_class(entry.get("class_name"))
            try:
                layer = cls.from_config(entry.get("config", {}))
            except TypeError as exc:
                raise ConfigError(f"layer {index} ({cls.__name__}) has an invalid "
                                  f"configuration: {exc}") from None
            model.add(layer)
        if config.get("trainable") is False:
            model.trainable = False
        return model

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(layer) for layer in self._layers)
        return f"Sequential(name={self.name!r}, layers=[\n  {inner}\n])"


def _detach(nodes) -> None:
    for node in nodes:
        if node in node.layer._inbound_nodes:
            node.layer._inbound_nodes.remove(node)
