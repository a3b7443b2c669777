"""A path out and in: ONNX export, PyTorch in both directions, Keras ``.weights.h5`` import.

Each converter imports its framework only when called: cnnlab itself never needs them.
"""

from cnnlab.io.export.onnx_export import to_onnx


def to_torch(model, input_layout: str = "NCHW"):
    from cnnlab.io.export.torch_bridge import to_torch as convert
    return convert(model, input_layout)


def from_torch(module, input_shape):
    from cnnlab.io.export.torch_import import from_torch as convert
    return convert(module, input_shape)


def load_keras_weights(model, path):
    from cnnlab.io.export.keras_h5 import load_keras_weights as load
    return load(model, path)


__all__ = ["to_onnx", "to_torch", "from_torch", "load_keras_weights"]
