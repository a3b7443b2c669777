"""Symbolic tensors and nodes: how the functional API records a graph.

``cnnlab.Input((28, 28, 1))`` returns a :class:`SymbolicTensor`: a shape and a dtype, no data.
Calling a layer on one records a :class:`Node` (the layer plus the tensors it was called on) and
returns the node's output tensor, with its shape computed by the layer. ``cnnlab.Model(inputs,
outputs)`` then walks from the outputs back to the inputs through these nodes.

>>> from cnnlab import Input, layers
>>> x = Input((28, 28, 1))
>>> y = layers.Conv2D(8, 3)(x)
>>> y.shape, y.node.layer.name == y.node.layer.name
((None, 26, 26, 8), True)
"""

from __future__ import annotations

import numpy as np

from cnnlab.errors import ShapeError


class SymbolicTensor:
    """A placeholder for data: ``shape`` (batch axis ``None`` first) and ``dtype``. It remembers
    the node that produces it, which is all a model needs to find its layers."""

    def __init__(self, shape: tuple, dtype, node: Node, index: int = 0):
        self.shape = (None, *shape)
        self.dtype = np.dtype(dtype)
        self.node = node
        self.index = index

    @property
    def name(self) -> str:
        layer = self.node.layer
        return layer.name if len(self.node.outputs) <= 1 else f"{layer.name}:{self.index}"

    def __array__(self, *args, **kwargs):
        raise ShapeError(f"The symbolic tensor {self.name!r} {self.shape} holds no data: it "
                         f"describes a model's input or an intermediate result. Build a model "
                         f"with cnnlab.Model(inputs, outputs) and call it on arrays, or call the "
                         f"layer on an array.")

    def __repr__(self) -> str:
        return f"<SymbolicTensor shape={self.shape} dtype={self.dtype.name} name={self.name!r}>"


class Node:
    """One call of ``layer`` on the ``inbound`` tensors, producing ``outputs``. ``training``:
    None (the call runs in the model's mode), or the mode it always runs in."""

    def __init__(self, layer, inbound: list[SymbolicTensor], output_shapes: list[tuple],
                 training: bool | None = None):
        self.layer = layer
        self.inbound = list(inbound)
        self.training = None if training is None else bool(training)
        self.outputs = [SymbolicTensor(shape, layer.dtype, self, i)
                        for i, shape in enumerate(output_shapes)]

    def __repr__(self) -> str:
        return (f"<Node {self.layer.name} <- "
                f"{[t.name for t in self.inbound] or 'input'}>")


def _shape_text(shapes) -> str:
    return ", ".join(str((None, *s)) for s in shapes)


def record_call(layer, inputs, training: bool | None = None):
    """``layer(symbolic)``: build the layer for these shapes (or check they fit what it was built
    for), record the node, and return its output tensor(s)."""
    inbound = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    shapes = [tuple(t.shape[1:]) for t in inbound]
    if layer.input_count == 1 and len(shapes) != 1:
        raise ShapeError(f"{layer._describe()} takes one input; it was called on "
                         f"{len(shapes)} tensors: {_shape_text(shapes)}.")
    argument = shapes[0] if layer.input_count == 1 else shapes
    if not layer.built:
        layer.build(argument)
    else:
        layer._check_shapes(argument)
        if layer.input_count == 1 and not _fits(layer.input_shape, argument):
            built = layer.input_shape if isinstance(layer.input_shape, list) \
                else [layer.input_shape]
            raise ShapeError(f"{layer._describe()} was built for inputs {_shape_text(built)}; "
                             f"it was called on {_shape_text(shapes)}. A layer called twice "
                             f"shares its weights, so both calls need the same shapes.")
    out = layer.compute_output_shape(argument)
    output_shapes = out if isinstance(out, list) else [out]
    node = Node(layer, inbound, [tuple(s) for s in output_shapes], training)
    layer._inbound_nodes.append(node)
    return node.outputs[0] if len(node.outputs) == 1 else list(node.outputs)


def _fits(built, given) -> bool:
    """Whether inputs of shape ``given`` can run through weights built for ``built`` (only the
    rank and the channel axis must match, as with arrays; merges and models check their own)."""
    return len(built) == len(given) and built[-1] == given[-1]


def make_input(input_layer) -> SymbolicTensor:
    """The symbolic tensor an ``InputLayer`` stands for (its node has no inbound tensors)."""
    node = Node(input_layer, [], [input_layer.shape])
    input_layer._inbound_nodes.append(node)
    return node.outputs[0]
