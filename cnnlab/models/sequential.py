"""``Sequential``: a stack of layers, each feeding the next. Thin on purpose: structure here,
training in ``models.training``, the summary table in ``models.summary``, files in ``models.saving``.

>>> import numpy as np
>>> from cnnlab import Sequential, layers
>>> model = Sequential([layers.Input((28, 28, 1)), layers.Conv2D(8, 3), layers.Flatten(),
...                     layers.Dense(10, activation='softmax')])
>>> model.predict(np.zeros((2, 28, 28, 1)), verbose=0).shape
(2, 10)
"""

from __future__ import annotations

import numpy as np

from cnnlab.engine.activations import relu_backward, relu_forward
from cnnlab.errors import ConfigError, NotBuiltError, ShapeError
from cnnlab.layers.base import Layer, layer_class, unique_name
from cnnlab.layers.core import InputLayer
from cnnlab.layers.pooling import MaxPooling2D
from cnnlab.models.training import Trainer


class Sequential(Trainer):
    """Layers applied in order. The input shape comes from an ``Input`` layer, the first layer's
    ``input_shape=``, or the first data the model sees."""

    def __init__(self, layers=None, name: str | None = None):
        super().__init__()
        self.name = name or unique_name("sequential")
        self._layers: list[Layer] = []
        self.input_shape: tuple[int, ...] | None = None    # without the batch axis
        self._modes = None
        self._relu_outputs: dict[int, np.ndarray] = {}   # fused ReLUs' outputs, by pool index
        for layer in layers or []:
            self.add(layer)

    # --- structure ------------------------------------------------------------------------------
    @property
    def layers(self) -> list[Layer]:
        return list(self._layers)

    def add(self, layer: Layer) -> None:
        """Append a layer; with a known input shape it is built at once, so a shape error
        names the layer you just added."""
        if not isinstance(layer, Layer):
            raise ConfigError(f"Sequential.add expects a cnnlab layer; received "
                              f"{type(layer).__name__}.")
        if isinstance(layer, InputLayer):
            if self._layers or self.input_shape is not None:
                raise ConfigError("Input must be the first thing added to a Sequential model.")
            self.input_shape = layer.shape
            return
        if any(existing.name == layer.name for existing in self._layers):
            raise ConfigError(f"A layer named {layer.name!r} is already in model {self.name!r}; "
                              f"layer names must be unique.")
        if not self._layers and self.input_shape is None:
            self.input_shape = layer._declared_input_shape
        self._layers.append(layer)
        if self.input_shape is not None:
            shape = self.input_shape if len(self._layers) == 1 else self._layers[-2].output_shape
            try:
                layer.build(shape)
            except Exception:
                self._layers.pop()
                raise
            self._mark_input_grads()
        self._on_structure_change()

    def pop(self) -> Layer:
        layer = self._layers.pop()
        self._on_structure_change()
        return layer

    def build(self, input_shape=None) -> None:
        """Build every layer for inputs of ``input_shape`` (batch axis excluded)."""
        if input_shape is not None:
            input_shape = tuple(int(d) for d in input_shape)
            if len(input_shape) >= 1 and self._layers and self._layers[0].built \
                    and self.input_shape not in (None, input_shape):
                raise ShapeError(f"Model {self.name!r} was built for inputs (N, "
                                 f"{', '.join(map(str, self.input_shape))}); cannot rebuild for "
                                 f"{input_shape}.")
            self.input_shape = input_shape
        if self.input_shape is None:
            raise NotBuiltError(f"Model {self.name!r} has no input shape: start it with "
                                f"layers.Input(shape=...), give its first layer input_shape=..., "
                                f"or call it on data.")
        shape = self.input_shape
        for layer in self._layers:
            if not layer.built:
                layer.build(shape)
            shape = layer.output_shape
        self._mark_input_grads()
        self._on_structure_change()

    @property
    def built(self) -> bool:
        return self.input_shape is not None and all(layer.built for layer in self._layers)

    @property
    def output_shape(self) -> tuple[int, ...]:
        self._require_built()
        return self._layers[-1].output_shape if self._layers else self.input_shape

    def _require_built(self):
        if not self.built:
            self.build()

    def _mark_input_grads(self):
        # A layer only needs its input gradient if some earlier layer has parameters to train.
        has_params_before = False
        for layer in self._layers:
            layer.need_input_grad = has_params_before
            has_params_before = has_params_before or (layer.trainable and bool(layer.weights))

    def get_layer(self, name: str | None = None, index: int | None = None) -> Layer:
        if index is not None:
            return self._layers[index]
        for layer in self._layers:
            if layer.name == name:
                return layer
        raise ConfigError(f"No layer named {name!r} in model {self.name!r}; layers are "
                          f"{[layer.name for layer in self._layers]}.")

    # --- forward and backward -------------------------------------------------------------------
    def __call__(self, x, training: bool = False) -> np.ndarray:
        x = np.asarray(x)
        if not self.built:
            self.build(x.shape[1:])
        return self.forward(x, training)

    # ReLU followed by max pooling is run as pooling followed by ReLU: ReLU is monotone, so
    # relu(max(z)) == max(relu(z)) and the gradients agree too (where the max is <= 0 both are
    # zero). After pooling there is 1/4 of the data for the article's 2x2 pools: this saves two
    # full passes over the largest activations of the network in every step.
    def _execution_modes(self) -> list[str]:
        """Per layer: 'plain', 'defer' (its ReLU runs after the next layer), or 'pool_relu'."""
        if self._modes is None:
            modes = ["plain"] * len(self._layers)
            for i in range(len(self._layers) - 1):
                if (self._layers[i].activation == "relu" and modes[i] == "plain"
                        and type(self._layers[i + 1]) is MaxPooling2D):
                    modes[i], modes[i + 1] = "defer", "pool_relu"
            self._modes = modes
        return self._modes

    def forward(self, x: np.ndarray, training: bool = False, stop: int | None = None) -> np.ndarray:
        """Run layers ``[0, stop)`` (all by default), with ReLU-pool fusion."""
        modes = self._execution_modes()
        for index in range(len(self._layers) if stop is None else stop):
            layer, mode = self._layers[index], modes[index]
            if mode == "defer" and index + 1 < (len(self._layers) if stop is None else stop):
                x = layer.forward_logits(x, training)
            elif mode == "pool_relu" and modes[index - 1] == "defer":
                x, self._relu_outputs[index] = relu_forward(layer.forward(x, training))
            else:
                x = layer.forward(x, training)
                self._relu_outputs.pop(index + 1, None)
        return x

    def forward_all(self, x: np.ndarray, training: bool = False) -> list[np.ndarray]:
        """Every layer's output for ``x``, in order: what the feature-map views show. Runs layer by
        layer (no fusion), so each output is exactly that layer's; ``backward`` may follow."""
        self._relu_outputs = {}
        outputs = []
        for layer in self._layers:
            x = layer.forward(x, training)
            outputs.append(x)
        return outputs

    def backward(self, grad: np.ndarray, start: int | None = None,
                 until: int = -1) -> np.ndarray | None:
        """Backpropagate from the output (or from layer ``start``'s output) down to the input, or
        only down to the output of layer ``until`` (Grad-CAM needs the gradient there)."""
        stop = len(self._layers) if start is None else start + 1
        modes = self._execution_modes()
        for index in reversed(range(until + 1, stop)):
            layer = self._layers[index]
            if modes[index] == "pool_relu" and index in self._relu_outputs:
                grad = layer.backward(relu_backward(grad, self._relu_outputs[index]))
            elif modes[index] == "defer" and index + 1 in self._relu_outputs:
                grad = layer.backward_logits(grad)
            else:
                grad = layer.backward(grad)
            if grad is None:        # nothing earlier needs a gradient
                return None
        return grad

    def _on_structure_change(self):
        super()._on_structure_change()
        self._modes = None
        self._relu_outputs = {}

    def _replica(self):
        twin = super()._replica()
        twin._relu_outputs = {}
        return twin

    # --- parameters -----------------------------------------------------------------------------
    def params_and_grads(self):
        return [pair for layer in self._layers for pair in layer.params_and_grads()]

    @property
    def weights(self) -> list[np.ndarray]:
        return [w for layer in self._layers for w in layer.weights]

    def get_weights(self) -> list[np.ndarray]:
        return [w.copy() for w in self.weights]

    def set_weights(self, weights) -> None:
        self._require_built()
        weights = list(weights)
        expected = sum(len(layer.weights) for layer in self._layers)
        if len(weights) != expected:
            raise ShapeError(f"Model {self.name!r}: set_weights expects {expected} arrays; "
                             f"received {len(weights)}.")
        for layer in self._layers:
            count = len(layer.weights)
            layer.set_weights(weights[:count])
            weights = weights[count:]

    def count_params(self) -> int:
        self._require_built()
        return sum(layer.count_params() for layer in self._layers)

    def summary(self, print_fn=print, line_length: int = 110) -> None:
        from cnnlab.models.summary import summary_text
        print_fn(summary_text(self, line_length))

    # --- configuration and files ----------------------------------------------------------------
    def get_config(self) -> dict:
        return {"name": self.name,
                "input_shape": list(self.input_shape) if self.input_shape else None,
                "layers": [{"class_name": type(layer).__name__, "config": layer.get_config()}
                           for layer in self._layers]}

    @classmethod
    def from_config(cls, config: dict) -> Sequential:
        model = cls(name=config.get("name"))
        if config.get("input_shape"):
            model.input_shape = tuple(config["input_shape"])
        for entry in config.get("layers", []):
            model.add(layer_class(entry.get("class_name")).from_config(entry.get("config", {})))
        return model

    def save(self, filepath, include_optimizer: bool = True) -> None:
        """One ``.cnnlab`` file: architecture (JSON), weights and optimizer state; no pickle."""
        from cnnlab.models.saving import save_model
        save_model(self, filepath, include_optimizer=include_optimizer)

    def export(self, filepath, format: str = "onnx", input_layout: str = "NHWC") -> None:
        """Write the model for other runtimes: ``format='onnx'`` (needs ``cnnlab[export]``)."""
        if format != "onnx":
            raise ConfigError(f"export supports format='onnx'; for PyTorch use "
                              f"cnnlab.export.to_torch(model). Received: format={format!r}")
        from cnnlab.export import to_onnx
        to_onnx(self, filepath, input_layout)

    def save_weights(self, filepath) -> None:
        from cnnlab.models.saving import save_weights
        save_weights(self, filepath)

    def load_weights(self, filepath) -> None:
        from cnnlab.models.saving import load_weights
        load_weights(self, filepath)

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(layer) for layer in self._layers)
        return f"Sequential(name={self.name!r}, layers=[\n  {inner}\n])"
