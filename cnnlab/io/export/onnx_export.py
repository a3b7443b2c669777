"""A cnnlab model (any graph) as an ONNX graph (opset 17), built with the ``onnx`` package
(``pip install 'cnnlab[export]'``).

ONNX's Conv, pooling and BatchNormalization are channels-first, cnnlab is channels-last. Each
tensor carries its layout (``NHWC``, ``NCHW`` or ``flat``); a converter asks for the layout it
needs and a Transpose is inserted only where the layout changes: image tensors stay NCHW through
conv, pool, BN and merges, and go back to NHWC exactly where cnnlab's order matters (before
Flatten, which flattens (H, W, C); before Dense on 4-D tensors; at the outputs). 'same' padding
becomes explicit pads (the odd pixel after, as TensorFlow does); average pooling excludes padding
(``count_include_pad=0``), as cnnlab and Keras do.

One small converter per layer type, in ``CONVERTERS``: ``convert(emit, layer, inputs) -> tensor``,
where a tensor is ``(name, layout)``.
"""

from __future__ import annotations

import numpy as np

from cnnlab.engine import arrays
from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.graph.functional import Functional
from cnnlab.layers import (
    ELU,
    Activation,
    Add,
    Average,
    AveragePooling2D,
    BatchNormalization,
    Concatenate,
    Conv2D,
    Cropping2D,
    Dense,
    DepthwiseConv2D,
    Dropout,
    Flatten,
    GlobalAveragePooling2D,
    GlobalMaxPooling2D,
    InputLayer,
    LeakyReLU,
    Maximum,
    MaxPooling2D,
    Multiply,
    RandomBrightness,
    RandomContrast,
    RandomCrop,
    RandomFlip,
    RandomRotation,
    RandomTranslation,
    RandomZoom,
    ReLU,
    Rescaling,
    SeparableConv2D,
    Softmax,
    Subtract,
    UpSampling2D,
    ZeroPadding2D,
)

OPSET = 17
_ACTIVATION_OPS = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "softmax": "Softmax",
                   "log_softmax": "LogSoftmax", "elu": "Elu", "leaky_relu": "LeakyRelu",
                   "hard_sigmoid": "HardSigmoid"}
# ONNX's defaults differ from cnnlab's for these two: say the values
_ACTIVATION_ATTRIBUTES = {"leaky_relu": {"alpha": 0.2},
                          "hard_sigmoid": {"alpha": 1 / 6, "beta": 0.5}}


class _Emitter:
    """Nodes and initializers of the ONNX graph being built, and layout changes on demand."""

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
            np.ascontiguousarray(arrays.to_host(array), dtype=np.float32), name))
        return name

    def node(self, op: str, inputs, base: str, **attributes) -> str:
        output = self.name(base)
        self.nodes.append(self.helper.make_node(op, list(inputs), [output], name=output,
                                                **attributes))
        return output

    def as_layout(self, tensor, layout: str):
        """``tensor`` in ``layout`` (only image tensors change: NHWC <-> NCHW)."""
        name, current = tensor
        if current == layout or current == "flat" or layout == "flat":
            return tensor
        perm = [0, 3, 1, 2] if layout == "NCHW" else [0, 2, 3, 1]
        return self.node("Transpose", [name], f"to_{layout.lower()}", perm=perm), layout


def _pads(layer, input_hw) -> list[int]:
    (top, bottom), (left, right) = layer.pads_for(input_hw)
    return [top, left, bottom, right]


# --- one converter per layer type ----------------------------------------------------------------
def _conv(emit, node, inputs):
    layer = node.layer
    x, _ = emit.as_layout(inputs[0], "NCHW")
    args = [x, emit.constant(f"{layer.name}_kernel", layer.weights[0].transpose(3, 2, 0, 1))]
    if layer.use_bias:
        args.append(emit.constant(f"{layer.name}_bias", layer.weights[1]))
    return emit.node("Conv", args, layer.name, kernel_shape=list(layer.kernel_size),
                     strides=list(layer.strides), dilations=list(layer.dilation_rate),
                     pads=_pads(layer, node.inbound[0].shape[1:3])), "NCHW"


def _depthwise(emit, node, inputs, kernel=None, bias=True, base=None):
    """A grouped Conv, one group per input channel; kernel (KH, KW, C, M) -> (C*M, 1, KH, KW)."""
    layer = node.layer
    x, _ = emit.as_layout(inputs[0], "NCHW")
    kernel = layer.variable("kernel") if kernel is None else kernel
    kh, kw, c, m = kernel.shape
    args = [x, emit.constant(f"{layer.name}_depthwise",
                             kernel.reshape(kh, kw, c * m).transpose(2, 0, 1)[:, None])]
    if bias and layer.use_bias:
        args.append(emit.constant(f"{layer.name}_bias", layer.variable("bias")))
    return emit.node("Conv", args, base or layer.name, group=c, kernel_shape=[kh, kw],
                     strides=list(layer.strides), dilations=list(layer.dilation_rate),
                     pads=_pads(layer, node.inbound[0].shape[1:3])), "NCHW"


def _separable(emit, node, inputs):
    layer = node.layer
    mid = _depthwise(emit, node, inputs, layer.variable("depthwise_kernel"), bias=False,
                     base=f"{layer.name}_depthwise")
    args = [mid[0], emit.constant(f"{layer.name}_pointwise",
                                  layer.variable("pointwise_kernel").transpose(3, 2, 0, 1))]
    if layer.use_bias:
        args.append(emit.constant(f"{layer.name}_bias", layer.variable("bias")))
    return emit.node("Conv", args, layer.name, kernel_shape=[1, 1]), "NCHW"


def _global_max(emit, node, inputs):
    x, _ = emit.as_layout(inputs[0], "NCHW")
    pooled = emit.node("GlobalMaxPool", [x], node.layer.name)
    return emit.node("Flatten", [pooled], f"{node.layer.name}_flat", axis=1), "flat"


def _int64(emit, base, values):
    name = emit.name(base)
    emit.initializers.append(emit.numpy_helper.from_array(np.asarray(values, np.int64), name))
    return name


def _zero_pad(emit, node, inputs):
    x, _ = emit.as_layout(inputs[0], "NCHW")
    (t, b), (left, r) = node.layer.padding
    pads = _int64(emit, f"{node.layer.name}_pads", [0, 0, t, left, 0, 0, b, r])
    return emit.node("Pad", [x, pads], node.layer.name), "NCHW"


def _crop(emit, node, inputs):
    x, _ = emit.as_layout(inputs[0], "NCHW")
    h, w = node.inbound[0].shape[1:3]
    layer = node.layer
    (t, b), (left, r) = layer.cropping if isinstance(layer, Cropping2D) \
        else layer.centre_crop(h, w)                          # RandomCrop at inference
    args = [x, _int64(emit, "starts", [t, left]), _int64(emit, "ends", [h - b, w - r]),
            _int64(emit, "axes", [2, 3])]
    return emit.node("Slice", args, node.layer.name), "NCHW"


def _upsample(emit, node, inputs):
    x, _ = emit.as_layout(inputs[0], "NCHW")
    sh, sw = node.layer.size
    scales = emit.constant(f"{node.layer.name}_scales", np.array([1, 1, sh, sw]))
    return emit.node("Resize", [x, "", scales], node.layer.name, mode="nearest",
                     coordinate_transformation_mode="asymmetric", nearest_mode="floor"), "NCHW"


def _activation_layer(activation: str, parameter: str):
    """``LeakyReLU(negative_slope)`` / ``ELU(alpha)``: the op with the layer's own value."""
    def convert(emit, node, inputs):
        name, layout = inputs[0]
        op = _ACTIVATION_OPS[activation]
        return emit.node(op, [name], node.layer.name,
                         alpha=float(getattr(node.layer, parameter))), layout
    return convert


def _pool(emit, node, inputs):
    layer = node.layer
    x, _ = emit.as_layout(inputs[0], "NCHW")
    average = isinstance(layer, AveragePooling2D)
    return emit.node("AveragePool" if average else "MaxPool", [x], layer.name,
                     kernel_shape=list(layer.pool_size), strides=list(layer.strides),
                     pads=_pads(layer, node.inbound[0].shape[1:3]),
                     **({"count_include_pad": 0} if average else {})), "NCHW"


def _global_average(emit, node, inputs):
    layer = node.layer
    x, _ = emit.as_layout(inputs[0], "NCHW")
    pooled = emit.node("GlobalAveragePool", [x], layer.name)
    return emit.node("Flatten", [pooled], f"{layer.name}_flat", axis=1), "flat"


def _flatten(emit, node, inputs):
    layer = node.layer
    x, _ = emit.as_layout(inputs[0], "NHWC")                     # cnnlab order: (H, W, C)
    return emit.node("Flatten", [x], layer.name, axis=1), "flat"


def _dense(emit, node, inputs):
    layer = node.layer
    x, layout = emit.as_layout(inputs[0], "NHWC")
    kernel = emit.constant(f"{layer.name}_kernel", layer.weights[0])
    bias = [emit.constant(f"{layer.name}_bias", layer.weights[1])] if layer.use_bias else []
    if layout == "flat":
        return emit.node("Gemm", [x, kernel, *bias], layer.name), "flat"
    out = emit.node("MatMul", [x, kernel], layer.name)            # Dense on the last axis
    return (emit.node("Add", [out, *bias], f"{layer.name}_bias_add") if bias else out), layout


def _batch_norm(emit, node, inputs):
    layer = node.layer
    x, layout = emit.as_layout(inputs[0], "NCHW")
    channels = layer.input_shape[-1]
    gamma = layer.variable("gamma") if layer.scale else np.ones(channels)
    beta = layer.variable("beta") if layer.center else np.zeros(channels)
    args = [x] + [emit.constant(f"{layer.name}_{k}", v) for k, v in (
        ("gamma", gamma), ("beta", beta), ("mean", layer.variable("moving_mean")),
        ("variance", layer.variable("moving_variance")))]
    return emit.node("BatchNormalization", args, layer.name, epsilon=layer.epsilon), layout


def _same_layout(emit, inputs):
    layout = "NCHW" if any(lay in ("NCHW", "NHWC") for _, lay in inputs) else "flat"
    return [emit.as_layout(t, layout)[0] for t in inputs], layout


def _merge(op):
    def convert(emit, node, inputs):
        names, layout = _same_layout(emit, inputs)
        return emit.node(op, names, node.layer.name), layout
    return convert


def _subtract(emit, node, inputs):
    layer = node.layer
    names, layout = _same_layout(emit, inputs)
    return emit.node("Sub", names, layer.name), layout


def _concatenate(emit, node, inputs):
    layer = node.layer
    names, layout = _same_layout(emit, inputs)
    rank = len(layer.output_shape)
    axis = layer.axis % rank
    if layout == "NCHW":                                        # NHWC axis -> NCHW axis
        axis = {1: 2, 2: 3, 3: 1}[axis]
    return emit.node("Concat", names, layer.name, axis=axis), layout


def _rescaling(emit, node, inputs):
    layer = node.layer
    scaled = emit.node("Mul", [inputs[0][0], emit.constant(f"{layer.name}_scale",
                                                           np.array(layer.scale))], layer.name)
    return emit.node("Add", [scaled, emit.constant(f"{layer.name}_offset",
                                                   np.array(layer.offset))],
                     f"{layer.name}_offset"), inputs[0][1]


def _identity(emit, node, inputs):
    """Layers that do nothing at inference: dropout, augmentation, activation-only layers."""
    return inputs[0]


def _nested(emit, node, inputs):
    layer = node.layer
    outputs = _emit_graph(emit, layer, inputs)
    if len(outputs) != 1:
        raise ConfigError(f"ONNX export of model {layer.name!r}: a nested model with several "
                          f"outputs is not supported.")
    return outputs[0]


CONVERTERS = {
    Conv2D: _conv, MaxPooling2D: _pool, AveragePooling2D: _pool,
    GlobalAveragePooling2D: _global_average, Flatten: _flatten, Dense: _dense,
    BatchNormalization: _batch_norm, Add: _merge("Sum"), Subtract: _subtract,
    Multiply: _merge("Mul"), Average: _merge("Mean"), Maximum: _merge("Max"),
    Concatenate: _concatenate, Rescaling: _rescaling,
    DepthwiseConv2D: _depthwise, SeparableConv2D: _separable, GlobalMaxPooling2D: _global_max,
    ZeroPadding2D: _zero_pad, Cropping2D: _crop, RandomCrop: _crop, UpSampling2D: _upsample,
    LeakyReLU: _activation_layer("leaky_relu", "negative_slope"), ELU: _activation_layer("elu", "alpha"),
    **{kind: _identity for kind in (Dropout, Activation, ReLU, Softmax, InputLayer, RandomFlip,
                                    RandomTranslation, RandomRotation, RandomZoom,
                                    RandomContrast, RandomBrightness)},
}


def _converter(layer):
    if isinstance(layer, Functional):
        return _nested
    for kind in type(layer).__mro__:
        if kind in CONVERTERS:
            return CONVERTERS[kind]
    supported = sorted(k.__name__ for k in CONVERTERS)
    raise ConfigError(f"ONNX export does not support layer {layer.name!r} of type "
                      f"{type(layer).__name__}; supported: {', '.join(supported)}, and nested "
                      f"models.")


def _activation(emit, layer, tensor):
    name, layout = tensor
    if layer.activation == "linear":
        return tensor
    if layer.activation in ("silu", "swish"):                      # x * sigmoid(x)
        gate = emit.node("Sigmoid", [name], f"{layer.name}_gate")
        return emit.node("Mul", [name, gate], f"{layer.name}_silu"), layout
    if layer.activation in ("gelu", "gelu_tanh"):                   # opset 17 has no Gelu
        return _gelu(emit, layer, name, layer.activation == "gelu_tanh"), layout
    extra = {"axis": 1 if layout == "NCHW" else -1} if layer.activation in (
        "softmax", "log_softmax") else _ACTIVATION_ATTRIBUTES.get(layer.activation, {})
    return emit.node(_ACTIVATION_OPS[layer.activation], [name],
                     f"{layer.name}_{layer.activation}", **extra), layout


def _gelu(emit, layer, name, tanh: bool) -> str:
    """``x/2 (1 + erf(x / sqrt 2))``, or the tanh form, from ONNX's element-wise ops."""
    const = lambda base, value: emit.constant(f"{layer.name}_{base}", np.array(value))  # noqa: E731
    if tanh:
        cube = emit.node("Mul", [name, emit.node("Mul", [name, name], "sq")], "cube")
        inner = emit.node("Add", [name, emit.node("Mul", [cube, const("k", 0.044715)], "kx3")],
                          "inner")
        core = emit.node("Tanh", [emit.node("Mul", [inner, const("c", np.sqrt(2 / np.pi))],
                                            "scaled")], "tanh")
    else:
        core = emit.node("Erf", [emit.node("Mul", [name, const("r", 1 / np.sqrt(2))], "z")],
                         "erf")
    half = emit.node("Mul", [name, const("half", 0.5)], "half_x")
    return emit.node("Mul", [half, emit.node("Add", [core, const("one", 1.0)], "one_plus")],
                     f"{layer.name}_gelu")


def _emit_graph(emit, graph, inputs):
    """Every node of ``graph`` in topological order; returns its output tensors."""
    values = {id(t): value for t, value in zip(graph.inputs, inputs)}
    for node in graph.nodes:
        layer = node.layer
        out = _converter(layer)(emit, node, [values[id(t)] for t in node.inbound])
        values[id(node.outputs[0])] = _activation(emit, layer, out)
    return [values[id(t)] for t in graph.outputs]


def to_onnx(model, path=None, input_layout: str = "NHWC"):
    """Build (and, given ``path``, save atomically) the ONNX model; returns the ModelProto.
    A model with one input and one output names them ``input`` and ``output``; otherwise they
    take the model's input and output names."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise CnnlabError("ONNX export needs the onnx package: pip install 'cnnlab[export]'") \
            from None
    if input_layout not in ("NHWC", "NCHW"):
        raise ConfigError(f"input_layout must be 'NHWC' or 'NCHW'. Received: {input_layout!r}")
    model._require_built()
    if any(v.value.dtype != np.float32 for v in model.variables) or model.dtype != np.float32:
        raise ConfigError("ONNX export writes float32 models; this model has float64 layers.")
    emit = _Emitter(helper, numpy_helper)
    single = len(model.inputs) == 1 and len(model.outputs) == 1
    input_names = ["input"] if single else model.input_names
    output_names = ["output"] if single else model.output_names
    inputs, input_infos = [], []
    for name, tensor in zip(input_names, model.inputs):
        shape = tuple(tensor.shape[1:])
        if len(shape) == 3:
            nchw = input_layout == "NCHW"
            dims = ["N", shape[2], shape[0], shape[1]] if nchw else ["N", *shape]
            inputs.append((name, "NCHW" if nchw else "NHWC"))
        else:
            dims = ["N", *shape]
            inputs.append((name, "flat"))
        input_infos.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
    outputs = _emit_graph(emit, model, inputs)
    output_infos = []
    for name, (tensor, layout), symbolic in zip(output_names, outputs, model.outputs):
        shape = list(symbolic.shape[1:])
        if layout == "NCHW" and input_layout == "NHWC":
            tensor, layout = emit.as_layout((tensor, layout), "NHWC")
        if layout == "NCHW":                     # a fully convolutional model, NCHW in and out
            shape = [shape[2], shape[0], shape[1]]
        emit.nodes.append(helper.make_node("Identity", [tensor], [name], name=name))
        output_infos.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                          ["N", *shape]))
    onnx_graph = helper.make_graph(emit.nodes, model.name, input_infos, output_infos,
                                   emit.initializers)
    proto = helper.make_model(onnx_graph, producer_name="cnnlab",
                              opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = 8                                 # readable by onnxruntime >= 1.10
    onnx.checker.check_model(proto)
    if path is not None:
        from cnnlab.atomic import atomic_write
        with atomic_write(path) as handle:
            handle.write(proto.SerializeToString())
    return proto
