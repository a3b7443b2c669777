"""cnnlab -> PyTorch (``to_torch``). torch is imported here only, when a conversion is asked for.

Layouts: cnnlab is NHWC and flattens (H, W, C); torch is NCHW and flattens (C, H, W).
``to_torch`` returns a module that takes NCHW tensors (torch's convention; ``input_layout='NHWC'``
takes cnnlab's) and flattens in cnnlab's order, so the same Dense weights apply. Asymmetric
'same' padding becomes an explicit pad module; average pooling over padding divides by the real
cells, as cnnlab does. The way back is ``torch_import.from_torch``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import fx, nn

from cnnlab import layers as L  # noqa: N812
from cnnlab.engine import arrays
from cnnlab.errors import ConfigError

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "elu": nn.ELU,
                "leaky_relu": lambda: nn.LeakyReLU(0.2), "silu": nn.SiLU, "swish": nn.SiLU,
                "hard_sigmoid": nn.Hardsigmoid, "gelu": nn.GELU,
                "gelu_tanh": lambda: nn.GELU(approximate="tanh")}


class _Permute(nn.Module):
    def __init__(self, *order):
        super().__init__()
        self.order = order

    def forward(self, x):
        return x.permute(*self.order)


class _Pad(nn.Module):
    """Explicit (left, right, top, bottom) padding with a value (-inf before max pooling)."""

    def __init__(self, pads, value=0.0):
        super().__init__()
        self.pads, self.value = pads, value

    def forward(self, x):
        return F.pad(x, self.pads, value=self.value)


class _AvgPoolRealCells(nn.Module):
    """Average pooling that divides by the real (unpadded) cells of each window."""

    def __init__(self, pads, kernel, stride, input_hw):
        super().__init__()
        self.pads, self.kernel, self.stride = pads, kernel, stride
        ones = torch.ones(1, 1, *input_hw)
        self.register_buffer("counts", F.avg_pool2d(F.pad(ones, pads), kernel, stride,
                                                    divisor_override=1))

    def forward(self, x):
        sums = F.avg_pool2d(F.pad(x, self.pads), self.kernel, self.stride, divisor_override=1)
        return sums / self.counts


def _torch_pads(layer, input_hw):
    (top, bottom), (left, right) = layer.pads_for(input_hw)
    return (left, right, top, bottom)


def _tensor(array):
    return torch.tensor(np.ascontiguousarray(arrays.to_host(array)))


def _torch_dtype(layer):
    return torch.float64 if layer.dtype == np.float64 else torch.float32


class _Merge(nn.Module):
    """A merge layer over NCHW (or flat) tensors: ``kind`` is add, subtract, multiply, average,
    maximum or concat (along ``dim``)."""

    def __init__(self, kind: str, dim: int = 1):
        super().__init__()
        self.kind, self.dim = kind, dim

    def forward(self, *xs):
        if self.kind == "concat":
            return torch.cat(xs, self.dim)
        if self.kind == "subtract":
            return xs[0] - xs[1]
        out = xs[0]
        for x in xs[1:]:
            out = torch.maximum(out, x) if self.kind == "maximum" else (
                out * x if self.kind == "multiply" else out + x)
        return out / len(xs) if self.kind == "average" else out


class _Crop(nn.Module):
    """Rows and columns cut from each border of an NCHW tensor: ((top, bottom), (left, right))."""

    def __init__(self, crops):
        super().__init__()
        self.crops = crops

    def forward(self, x):
        (top, bottom), (left, right) = self.crops
        return x[:, :, top:x.shape[2] - bottom, left:x.shape[3] - right]


class _Scale(nn.Module):
    def __init__(self, scale, offset):
        super().__init__()
        self.scale, self.offset = scale, offset

    def forward(self, x):
        return x * self.scale + self.offset


# --- one converter per layer type: (layer, NHWC input shape) -> torch modules, NCHW in and out --
def _conv(layer, shape):
    modules = []
    pads = _torch_pads(layer, shape[:2])
    if any(pads):
        modules.append(_Pad(pads))
    conv = nn.Conv2d(shape[-1], layer.filters, layer.kernel_size, stride=layer.strides,
                     dilation=layer.dilation_rate, bias=layer.use_bias, dtype=_torch_dtype(layer))
    with torch.no_grad():
        conv.weight.copy_(_tensor(layer.weights[0].transpose(3, 2, 0, 1)))
        if layer.use_bias:
            conv.bias.copy_(_tensor(layer.weights[1]))
    return modules + [conv]


def _depthwise_conv(layer, shape, kernel=None, bias=True):
    """A grouped torch conv, one group per input channel: (KH, KW, C, M) -> (C*M, 1, KH, KW)."""
    kernel = layer.variable("kernel") if kernel is None else kernel
    kh, kw, c, m = kernel.shape
    pads = _torch_pads(layer, shape[:2])
    with_bias = bias and layer.use_bias
    conv = nn.Conv2d(c, c * m, (kh, kw), stride=layer.strides, dilation=layer.dilation_rate,
                     groups=c, bias=with_bias, dtype=_torch_dtype(layer))
    with torch.no_grad():
        conv.weight.copy_(_tensor(kernel.reshape(kh, kw, c * m).transpose(2, 0, 1)[:, None]))
        if with_bias:
            conv.bias.copy_(_tensor(layer.variable("bias")))
    return ([_Pad(pads)] if any(pads) else []) + [conv]


def _separable_conv(layer, shape):
    pointwise = layer.variable("pointwise_kernel")                    # (1, 1, C*M, F)
    conv = nn.Conv2d(pointwise.shape[2], layer.filters, 1, bias=layer.use_bias,
                     dtype=_torch_dtype(layer))
    with torch.no_grad():
        conv.weight.copy_(_tensor(pointwise.transpose(3, 2, 0, 1)))
        if layer.use_bias:
            conv.bias.copy_(_tensor(layer.variable("bias")))
    return _depthwise_conv(layer, shape, layer.variable("depthwise_kernel"), bias=False) + [conv]


def _max_pool(layer, shape):
    pads = _torch_pads(layer, shape[:2])
    return ([_Pad(pads, value=-float("inf"))] if any(pads) else []) + [
        nn.MaxPool2d(layer.pool_size, layer.strides)]


def _average_pool(layer, shape):
    pads = _torch_pads(layer, shape[:2])
    return [_AvgPoolRealCells(pads, layer.pool_size, layer.strides, shape[:2]) if any(pads)
            else nn.AvgPool2d(layer.pool_size, layer.strides)]


def _dense(layer, shape):
    if len(shape) != 1:
        raise ConfigError(f"to_torch: Dense {layer.name!r} on a {len(shape)}-D input is not "
                          f"supported; put a Flatten before it.")
    linear = nn.Linear(shape[0], layer.units, bias=layer.use_bias, dtype=_torch_dtype(layer))
    with torch.no_grad():
        linear.weight.copy_(_tensor(layer.weights[0].T))
        if layer.use_bias:
            linear.bias.copy_(_tensor(layer.weights[1]))
    return [linear]


def _batch_norm(layer, shape):
    kind = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
    norm = kind(shape[-1], eps=layer.epsilon, momentum=1 - layer.momentum,
                dtype=_torch_dtype(layer))
    with torch.no_grad():
        if layer.scale:
            norm.weight.copy_(_tensor(layer.variable("gamma")))
        if layer.center:
            norm.bias.copy_(_tensor(layer.variable("beta")))
        norm.running_mean.copy_(_tensor(layer.variable("moving_mean")))
        norm.running_var.copy_(_tensor(layer.variable("moving_variance")))
    return [norm]


def _concatenate(layer, shape):
    rank = len(layer.output_shape)
    axis = layer.axis % rank
    return [_Merge("concat", {1: 2, 2: 3, 3: 1}[axis] if rank == 4 else axis)]


def _flatten(layer, shape):
    # flatten (H, W, C), as cnnlab does, so the next Dense's weights apply unchanged
    return [_Permute(0, 2, 3, 1), nn.Flatten()] if len(shape) == 3 else [nn.Flatten()]


def _merge(layer, shape):
    return [_Merge(type(layer).__name__.lower())]


def _nothing(layer, shape):
    """Layers that do nothing at inference (or only an activation, added after)."""
    return []


CONVERTERS = {
    L.Conv2D: _conv, L.MaxPooling2D: _max_pool, L.AveragePooling2D: _average_pool,
    L.GlobalAveragePooling2D: lambda layer, shape: [nn.AdaptiveAvgPool2d(1), nn.Flatten()],
    L.Flatten: _flatten, L.Dense: _dense,
    L.Dropout: lambda layer, shape: [nn.Dropout(layer.rate)],
    L.BatchNormalization: _batch_norm, L.Concatenate: _concatenate,
    L.Rescaling: lambda layer, shape: [_Scale(layer.scale, layer.offset)],
    L.DepthwiseConv2D: _depthwise_conv, L.SeparableConv2D: _separable_conv,
    L.GlobalMaxPooling2D: lambda layer, shape: [nn.AdaptiveMaxPool2d(1), nn.Flatten()],
    L.ZeroPadding2D: lambda layer, shape: [nn.ZeroPad2d((*layer.padding[1], *layer.padding[0]))],
    L.Cropping2D: lambda layer, shape: [_Crop(layer.cropping)],
    L.RandomCrop: lambda layer, shape: [_Crop(layer.centre_crop(*shape[:2]))],   # inference
    L.UpSampling2D: lambda layer, shape: [nn.Upsample(scale_factor=layer.size, mode="nearest")],
    L.LeakyReLU: lambda layer, shape: [nn.LeakyReLU(layer.negative_slope)],
    L.ELU: lambda layer, shape: [nn.ELU(layer.alpha)],
    L.Add: _merge, L.Subtract: _merge, L.Multiply: _merge, L.Average: _merge, L.Maximum: _merge,
    L.Activation: _nothing, L.ReLU: _nothing, L.Softmax: _nothing, L.InputLayer: _nothing,
    L.RandomFlip: _nothing, L.RandomTranslation: _nothing, L.RandomRotation: _nothing,
    L.RandomZoom: _nothing, L.RandomContrast: _nothing, L.RandomBrightness: _nothing,
}


def _activation_modules(layer, rank):
    if layer.activation in _ACTIVATIONS:
        return [_ACTIVATIONS[layer.activation]()]
    if layer.activation in ("softmax", "log_softmax"):
        channel_axis = 1 if rank == 3 else -1                  # NCHW: channels on 1
        return [nn.Softmax(channel_axis) if layer.activation == "softmax"
                else nn.LogSoftmax(channel_axis)]
    return []


def _node_modules(node) -> list:
    """The torch modules for one node: its layer's core op, then its activation."""
    layer = node.layer
    converter = next((CONVERTERS[k] for k in type(layer).__mro__ if k in CONVERTERS), None)
    if converter is None:
        raise ConfigError(f"to_torch does not support layer {layer.name!r} of type "
                          f"{type(layer).__name__}; supported: "
                          f"{', '.join(sorted(k.__name__ for k in CONVERTERS))}, nested models.")
    shape = tuple(node.inbound[0].shape[1:])
    return converter(layer, shape) + _activation_modules(layer, len(node.outputs[0].shape) - 1)


def to_torch(model, input_layout: str = "NCHW") -> nn.Module:
    """A torch module with the same weights and the same outputs (eval mode). A chain of layers
    (a Sequential) becomes an ``nn.Sequential``; any other graph a ``torch.fx.GraphModule`` with
    one submodule per node, named after the layer (``print(net.code)`` shows the wiring)."""
    from cnnlab.graph.summary import is_chain
    if input_layout not in ("NHWC", "NCHW"):
        raise ConfigError(f"input_layout must be 'NHWC' or 'NCHW'. Received: {input_layout!r}")
    model._require_built()
    permute = input_layout == "NHWC"
    if is_chain(model) and not any(hasattr(node.layer, "nodes") for node in model.nodes):
        modules = [_Permute(0, 3, 1, 2)] if permute and len(model.input_shapes[0]) == 3 else []
        for node in model.nodes:
            modules += _node_modules(node)
        return nn.Sequential(*modules).eval()
    root, graph = nn.Module(), fx.Graph()
    inputs = []
    for name, shape in zip(model.input_names, model.input_shapes):
        value = graph.placeholder(_identifier(name))
        if permute and len(shape) == 3:                       # NHWC images in: NCHW inside
            value = graph.call_method("permute", (value, 0, 3, 1, 2))
        inputs.append(value)
    outputs = _emit_nodes(model, inputs, root, graph, prefix="")
    graph.output(outputs[0] if len(outputs) == 1 else tuple(outputs))
    return fx.GraphModule(root, graph, class_name=_identifier(model.name)).eval()


def _identifier(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def _emit_nodes(graph_model, inputs, root, graph, prefix: str) -> list:
    """One ``call_module`` per node of ``graph_model`` (a nested model's nodes inlined, their
    modules named ``model__layer``); returns the fx values of its outputs."""
    values = {id(t): v for t, v in zip(graph_model.inputs, inputs)}
    for node in graph_model.nodes:
        reads = tuple(values[id(t)] for t in node.inbound)
        layer = node.layer
        if hasattr(layer, "nodes"):                                # a nested model: inline it
            outs = _emit_nodes(layer, list(reads), root, graph,
                               f"{prefix}{_identifier(layer.name)}__")
            values[id(node.outputs[0])] = outs[0]
            continue
        modules = _node_modules(node)
        name = f"{prefix}{_identifier(layer.name)}"
        while hasattr(root, name):                                 # a layer called twice
            name += "_again"
        root.add_module(name, modules[0] if len(modules) == 1 else nn.Sequential(*modules))
        values[id(node.outputs[0])] = graph.call_module(name, reads)
    return [values[id(t)] for t in graph_model.outputs]
