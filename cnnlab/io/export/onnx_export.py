"""A cnnlab model as an ONNX graph (opset 17), built with the ``onnx`` package
(``pip install 'cnnlab[export]'``).

ONNX's Conv and pooling ops are channels-first, cnnlab is channels-last. The graph transposes
the input to NCHW once (unless it is given NCHW, ``input_layout='NCHW'``), keeps NCHW through the
conv and pool nodes, and transposes back to NHWC exactly where cnnlab's order matters: before
Flatten (cnnlab flattens (H, W, C)), before Dense or Softmax on 4-D tensors, and at the output.
'same' padding becomes explicit pads (the odd pixel after, as TensorFlow does); average pooling
excludes padding (``count_include_pad=0``), as cnnlab and Keras do.
"""

from __future__ import annotations

import numpy as np

from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.layers import (
    Activation,
    AveragePooling2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAveragePooling2D,
    MaxPooling2D,
    ReLU,
    Softmax,
)

OPSET = 17
_ACTIVATION_OPS = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "softmax": "Softmax",
                   "log_softmax": "LogSoftmax"}


class _Graph:
    """Nodes and initializers, with a running record of the current tensor's layout."""

    def __init__(self, helper, numpy_helper):
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.initializers = [], []
        self.count = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def constant(self, base: str, array: np.ndarray) -> str:
        name = self.name(base)
        self.initializers.append(self.numpy_helper.from_array(
            np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    def node(self, op: str, inputs, base: str, **attributes) -> str:
        output = self.name(base)
        self.nodes.append(self.helper.make_node(op, list(inputs), [output], name=output,
                                                **attributes))
        return output


def _pads(layer) -> list[int]:
    (top, bottom), (left, right) = layer.pads_for(layer.input_shape[:2])
    return [top, left, bottom, right]


def to_onnx(model, path=None, input_layout: str = "NHWC"):
    """Build (and, given ``path``, save atomically) the ONNX model; returns the ModelProto."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise CnnlabError("ONNX export needs the onnx package: pip install 'cnnlab[export]'") \
            from None
    if input_layout not in ("NHWC", "NCHW"):
        raise ConfigError(f"input_layout must be 'NHWC' or 'NCHW'. Received: {input_layout!r}")
    model._require_built()
    if any(layer.dtype != np.float32 for layer in model.layers):
        raise ConfigError("ONNX export writes float32 models; this model has float64 layers.")
    graph = _Graph(helper, numpy_helper)
    shape = tuple(model.input_shape)
    image_input = len(shape) == 3
    if image_input and input_layout == "NCHW":
        input_dims, current, layout = ["N", shape[2], shape[0], shape[1]], "input", "NCHW"
    else:
        input_dims, current, layout = ["N", *shape], "input", "NHWC" if image_input else "flat"

    def channels_first(tensor, layout):
        return (graph.node("Transpose", [tensor], "to_nchw", perm=[0, 3, 1, 2]), "NCHW") \
            if layout == "NHWC" else (tensor, layout)

    def channels_last(tensor, layout):
        return (graph.node("Transpose", [tensor], "to_nhwc", perm=[0, 2, 3, 1]), "NHWC") \
            if layout == "NCHW" else (tensor, layout)

    for layer in model.layers:
        kind = type(layer)
        if kind is Conv2D:
            current, layout = channels_first(current, layout)
            inputs = [current, graph.constant(f"{layer.name}_kernel",
                                              layer.weights[0].transpose(3, 2, 0, 1))]
            if layer.use_bias:
                inputs.append(graph.constant(f"{layer.name}_bias", layer.weights[1]))
            current = graph.node("Conv", inputs, layer.name,
                                 kernel_shape=list(layer.kernel_size), strides=list(layer.strides),
                                 dilations=list(layer.dilation_rate), pads=_pads(layer))
        elif kind in (MaxPooling2D, AveragePooling2D):
            current, layout = channels_first(current, layout)
            extra = {"count_include_pad": 0} if kind is AveragePooling2D else {}
            current = graph.node("MaxPool" if kind is MaxPooling2D else "AveragePool", [current],
                                 layer.name, kernel_shape=list(layer.pool_size),
                                 strides=list(layer.strides), pads=_pads(layer), **extra)
        elif kind is GlobalAveragePooling2D:
            current, layout = channels_first(current, layout)
            pooled = graph.node("GlobalAveragePool", [current], layer.name)
            current, layout = graph.node("Flatten", [pooled], f"{layer.name}_flat", axis=1), "flat"
        elif kind is Flatten:
            current, layout = channels_last(current, layout)         # cnnlab order: (H, W, C)
            current, layout = graph.node("Flatten", [current], layer.name, axis=1), "flat"
        elif kind is Dense:
            current, layout = channels_last(current, layout)
            weights = graph.constant(f"{layer.name}_kernel", layer.weights[0])
            if layout == "flat":
                inputs = [current, weights] + ([graph.constant(f"{layer.name}_bias",
                                                               layer.weights[1])]
                                               if layer.use_bias else [])
                current = graph.node("Gemm", inputs, layer.name)
            else:                                                     # Dense on the last axis
                current = graph.node("MatMul", [current, weights], layer.name)
                if layer.use_bias:
                    current = graph.node("Add", [current, graph.constant(
                        f"{layer.name}_bias", layer.weights[1])], f"{layer.name}_bias_add")
        elif kind is Dropout:
            continue                                                  # identity at inference
        elif kind not in (Activation, ReLU, Softmax):
            raise ConfigError(f"ONNX export does not support layer {layer.name!r} of type "
                              f"{kind.__name__}; supported: Conv2D, MaxPooling2D, "
                              f"AveragePooling2D, GlobalAveragePooling2D, Flatten, Dense, "
                              f"Dropout, Activation, ReLU, Softmax.")
        if layer.activation != "linear":
            if layer.activation in ("softmax", "log_softmax"):
                current, layout = channels_last(current, layout)      # over channels
                current = graph.node(_ACTIVATION_OPS[layer.activation], [current],
                                     f"{layer.name}_{layer.activation}", axis=-1)
            else:
                current = graph.node(_ACTIVATION_OPS[layer.activation], [current],
                                     f"{layer.name}_{layer.activation}")
    if layout == "NCHW" and input_layout == "NHWC":
        current, layout = channels_last(current, layout)
    graph.nodes.append(helper.make_node("Identity", [current], ["output"], name="output"))
    out_shape = list(model.output_shape)
    if layout == "NCHW":                                   # a fully convolutional model, NCHW in
        out_shape = [out_shape[2], out_shape[0], out_shape[1]]
    onnx_graph = helper.make_graph(
        graph.nodes, model.name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_dims)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", *out_shape])],
        graph.initializers)
    proto = helper.make_model(onnx_graph, producer_name="cnnlab",
                              opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = 8                                 # readable by onnxruntime >= 1.10
    onnx.checker.check_model(proto)
    if path is not None:
        from cnnlab.io.files import atomic_write
        with atomic_write(path) as handle:
            handle.write(proto.SerializeToString())
    return proto
