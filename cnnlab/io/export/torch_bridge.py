"""cnnlab <-> PyTorch. torch is imported here only, when a conversion is asked for.

Layouts: cnnlab is NHWC and flattens (H, W, C); torch is NCHW and flattens (C, H, W).
``to_torch`` returns a module that takes NCHW tensors (torch's convention; ``input_layout='NHWC'``
takes cnnlab's) and flattens in cnnlab's order, so the same Dense weights apply. ``from_torch``
permutes the first Linear layer after a Flatten so cnnlab's flatten order reads the same
features. Asymmetric 'same' padding becomes an explicit pad module; average pooling over
padding divides by the real cells, as cnnlab does.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from cnnlab import layers as L  # noqa: N812
from cnnlab.errors import ConfigError
from cnnlab.models.sequential import Sequential

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


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
    return torch.tensor(np.ascontiguousarray(array))


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


class _Scale(nn.Module):
    def __init__(self, scale, offset):
        super().__init__()
        self.scale, self.offset = scale, offset

    def forward(self, x):
        return x * self.scale + self.offset


class GraphModule(nn.Module):
    """A cnnlab graph in torch: one module per node, run in cnnlab's topological order. Image
    tensors are NCHW throughout; ``wiring`` says which earlier values each node reads."""

    def __init__(self, steps, wiring, outputs, permute_input: bool):
        super().__init__()
        self.steps = nn.ModuleList(steps)
        self.wiring, self.outputs, self.permute_input = wiring, outputs, permute_input

    def forward(self, *inputs):
        values = [x.permute(0, 3, 1, 2) if self.permute_input and x.dim() == 4 else x
                  for x in inputs]
        for step, reads in zip(self.steps, self.wiring):
            values.append(step(*[values[i] for i in reads]))
        outs = [values[i] for i in self.outputs]
        return outs[0] if len(outs) == 1 else tuple(outs)


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
    rank = len(layer.output_shape) + 1
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
    L.Add: _merge, L.Subtract: _merge, L.Multiply: _merge, L.Average: _merge, L.Maximum: _merge,
    L.Activation: _nothing, L.ReLU: _nothing, L.Softmax: _nothing, L.InputLayer: _nothing,
    L.RandomFlip: _nothing, L.RandomTranslation: _nothing, L.RandomRotation: _nothing,
    L.RandomZoom: _nothing, L.RandomContrast: _nothing,
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
    (a Sequential) becomes an ``nn.Sequential``; any other graph a :class:`GraphModule`."""
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
    steps, wiring, outputs = _graph_steps(model, list(range(len(model.inputs))),
                                          len(model.inputs))
    return GraphModule(steps, wiring, outputs, permute).eval()


def _graph_steps(graph, input_slots: list[int], first_slot: int):
    """Modules and wiring for ``graph``'s nodes (a nested model's are inlined), given the value
    slots its inputs occupy; returns ``(steps, wiring, output slots)``."""
    slots = {id(t): slot for t, slot in zip(graph.inputs, input_slots)}
    steps, wiring = [], []
    for node in graph.nodes:
        reads = [slots[id(t)] for t in node.inbound]
        if hasattr(node.layer, "nodes"):                          # a nested model: inline it
            inner, inner_wiring, outs = _graph_steps(node.layer, reads, first_slot + len(steps))
            steps += inner
            wiring += inner_wiring
            slots[id(node.outputs[0])] = outs[0]
            continue
        modules = _node_modules(node)
        steps.append(modules[0] if len(modules) == 1 else nn.Sequential(*modules))
        wiring.append(reads)
        slots[id(node.outputs[0])] = first_slot + len(steps) - 1
    return steps, wiring, [slots[id(t)] for t in graph.outputs]


def _flat(module):
    if isinstance(module, nn.Sequential):
        for child in module:
            yield from _flat(child)
    else:
        yield module


def from_torch(module, input_shape) -> Sequential:
    """A cnnlab model from an ``nn.Sequential`` of Conv2d, ReLU/Tanh/Sigmoid/Softmax,
    MaxPool2d, AvgPool2d, AdaptiveAvgPool2d(1)+Flatten, Flatten, Linear and Dropout.
    ``input_shape`` is cnnlab's ``(H, W, C)``."""
    parts = list(_flat(module))
    model = Sequential([L.Input(tuple(input_shape))])
    weights = []
    flatten_chw = None                 # (C, H, W) of a torch Flatten, for the next Linear
    pending_pads = None                # an explicit pad module (ours) before a conv or pool
    i = 0
    if parts and isinstance(parts[0], _Permute) and parts[0].order == (0, 3, 1, 2):
        i = 1                          # to_torch(..., input_layout='NHWC'): input is cnnlab's
    while i < len(parts):
        part = parts[i]
        name = type(part).__name__
        if isinstance(part, _Pad):     # to_torch's explicit (left, right, top, bottom) padding
            pending_pads = part
            i += 1
            continue
        if isinstance(part, _Permute) and part.order == (0, 2, 3, 1) and i + 1 < len(parts) \
                and isinstance(parts[i + 1], nn.Flatten):
            model.add(L.Flatten())     # flattens (H, W, C): cnnlab's own order, no permutation
            weights.append([])
            i += 2
            continue
        if isinstance(part, (nn.MaxPool2d, _AvgPoolRealCells)) and (
                pending_pads is not None or isinstance(part, _AvgPoolRealCells)):
            pads = part.pads if isinstance(part, _AvgPoolRealCells) else pending_pads.pads
            kernel = part.kernel_size if isinstance(part, nn.MaxPool2d) else part.kernel
            layer = (L.MaxPooling2D if isinstance(part, nn.MaxPool2d) else L.AveragePooling2D)(
                kernel, strides=part.stride, padding="same")
            model.add(layer)
            if _torch_pads(layer, layer.input_shape[:2]) != tuple(pads):
                raise ConfigError(f"from_torch: the padding before {name} (position {i}) is "
                                  f"not 'same' padding, the only padding cnnlab pools take.")
            weights.append([])
            pending_pads = None
            i += 1
            continue
        if isinstance(part, nn.Conv2d):
            if part.groups != 1 or part.padding_mode != "zeros" or isinstance(part.padding, str):
                raise ConfigError(f"from_torch: Conv2d at position {i} uses groups, a padding "
                                  f"mode or string padding that cnnlab does not support.")
            padding = tuple(part.padding)
            if pending_pads is not None:             # ((top, bottom), (left, right))
                left, right, top, bottom = pending_pads.pads
                padding = ((top + padding[0], bottom + padding[0]),
                           (left + padding[1], right + padding[1]))
                pending_pads = None
            model.add(L.Conv2D(part.out_channels, part.kernel_size, strides=part.stride,
                               padding=padding, dilation_rate=part.dilation,
                               use_bias=part.bias is not None))
            weights.append([part.weight.detach().numpy().transpose(2, 3, 1, 0)]
                           + ([part.bias.detach().numpy()] if part.bias is not None else []))
        elif isinstance(part, (nn.MaxPool2d, nn.AvgPool2d)):
            if part.padding not in (0, (0, 0)) or part.ceil_mode:
                raise ConfigError(f"from_torch: {name} at position {i} uses padding or "
                                  f"ceil_mode, which cnnlab's pooling does not.")
            layer = L.MaxPooling2D if isinstance(part, nn.MaxPool2d) else L.AveragePooling2D
            model.add(layer(part.kernel_size, strides=part.stride))
            weights.append([])
        elif isinstance(part, nn.AdaptiveAvgPool2d) and part.output_size in (1, (1, 1)):
            model.add(L.GlobalAveragePooling2D())
            weights.append([])
            if i + 1 < len(parts) and isinstance(parts[i + 1], nn.Flatten):
                i += 1                                   # (N, C, 1, 1) -> (N, C): already flat
        elif isinstance(part, nn.Flatten):
            h, w, c = model.output_shape
            flatten_chw = (c, h, w)
            model.add(L.Flatten())
            weights.append([])
        elif isinstance(part, nn.Linear):
            kernel = part.weight.detach().numpy().T                   # (in, out)
            if flatten_chw is not None:                               # rows: CHW -> HWC order
                c, h, w = flatten_chw
                kernel = kernel.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(
                    c * h * w, -1)
                flatten_chw = None
            model.add(L.Dense(part.out_features, use_bias=part.bias is not None))
            weights.append([kernel] + ([part.bias.detach().numpy()] if part.bias is not None
                                       else []))
        elif isinstance(part, (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Softmax)):
            activation = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid",
                          nn.Softmax: "softmax"}[type(part)]
            last = model.layers[-1] if model.layers else None
            if last is not None and last.activation == "linear" and isinstance(
                    last, (L.Conv2D, L.Dense)):
                last.activation = activation                         # fold into that layer
            else:
                model.add(L.Activation(activation))
                weights.append([])
        elif isinstance(part, nn.Dropout):
            model.add(L.Dropout(part.p))
            weights.append([])
        else:
            raise ConfigError(f"from_torch does not support {name} (position {i}); supported: "
                              f"Conv2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d(1), Flatten, "
                              f"Linear, ReLU, Tanh, Sigmoid, Softmax, Dropout.")
        i += 1
    model.set_weights([w for group in weights for w in group])
    return model
