"""PyTorch -> cnnlab (``from_torch``): a module that ``torch.fx`` can trace becomes a cnnlab
``Model`` with the same weights and outputs.

The trace is walked node by node. Each torch value is a cnnlab symbolic tensor plus what cnnlab
must remember about it:

- an image tensor is NCHW in torch and NHWC in cnnlab, so ``torch.cat(dim=1)`` is a
  ``Concatenate(axis=-1)``;
- a pad module or ``F.pad`` waiting for the conv or pool it pads (cnnlab pads inside the layer);
- a tensor permuted to NHWC (``to_torch``'s Flatten in cnnlab's order): flattening it needs no
  weight permutation;
- a tensor flattened from NCHW: the next Linear's input rows are permuted from (C, H, W) to
  cnnlab's (H, W, C) order.

One small converter per module type (``MODULES``) and per function (``FUNCTIONS``).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import fx, nn

from cnnlab import layers as L  # noqa: N812
from cnnlab.errors import ConfigError
from cnnlab.io.export.torch_bridge import (
    _AvgPoolRealCells,
    _Crop,
    _Merge,
    _Pad,
    _Permute,
    _Scale,
    _torch_pads,
)


@dataclass
class _Value:
    tensor: object                      # the cnnlab symbolic tensor
    pads: tuple | None = None           # (left, right, top, bottom) waiting for a conv or pool
    pad_value: float = 0.0
    nhwc: bool = False                  # permuted to NHWC in torch (before a Flatten)
    chw: tuple | None = None            # flattened from NCHW (C, H, W): permute the next Linear
    flat_already: bool = False          # (N, C) from global pooling: a Flatten changes nothing
    single_user: bool = False           # only one operation reads it (an activation may fold in)


class _Tracer(fx.Tracer):
    """Our own helper modules stay whole (their attributes say what they do)."""

    def is_leaf_module(self, module, name):
        return isinstance(module, (_Pad, _Permute, _AvgPoolRealCells, _Merge, _Scale, _Crop)) or (
            super().is_leaf_module(module, name))


def _numpy(t) -> np.ndarray:
    return t.detach().cpu().numpy()


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _plain(value: _Value, what: str) -> object:
    """The tensor, for an operation that takes it as it is: nothing may be pending on it."""
    if value.pads is not None:
        _refuse(f"a pad before {what}", "is only supported right before a conv or pool.")
    if value.nhwc:
        _refuse(f"a permute to NHWC before {what}", "is only supported right before a Flatten.")
    return value.tensor


def _apply(layer, value: _Value, weights=None, pads_consumed: bool = False) -> _Value:
    if not pads_consumed:
        _plain(value, type(layer).__name__)
    out = layer(value.tensor)
    if weights is not None:
        layer.set_weights(weights)
    return _Value(out)


def _refuse(what: str, why: str):
    raise ConfigError(f"from_torch: {what} {why}")


# --- modules ---------------------------------------------------------------------------------------
def _conv(m: nn.Conv2d, value: _Value, name: str) -> _Value:
    depthwise = m.groups == m.in_channels and m.groups > 1 and m.out_channels % m.groups == 0
    if (m.groups != 1 and not depthwise) or m.padding_mode != "zeros" \
            or isinstance(m.padding, str):
        _refuse(f"Conv2d {name!r}", "uses groups (other than one per input channel), a padding "
                                    "mode or string padding that cnnlab does not support.")
    padding = tuple(m.padding)
    if value.pads is not None:                                # ((top, bottom), (left, right))
        left, right, top, bottom = value.pads
        padding = ((top + padding[0], bottom + padding[0]), (left + padding[1], right + padding[1]))
    bias = [_numpy(m.bias)] if m.bias is not None else []
    if depthwise:                              # (C*M, 1, KH, KW) -> (KH, KW, C, M)
        multiplier = m.out_channels // m.groups
        kernel = _numpy(m.weight)[:, 0].transpose(1, 2, 0).reshape(
            *m.kernel_size, m.in_channels, multiplier)
        layer = L.DepthwiseConv2D(m.kernel_size, strides=m.stride, padding=padding,
                                  depth_multiplier=multiplier, dilation_rate=m.dilation,
                                  use_bias=m.bias is not None)
        return _apply(layer, value, [kernel] + bias, pads_consumed=True)
    layer = L.Conv2D(m.out_channels, m.kernel_size, strides=m.stride, padding=padding,
                     dilation_rate=m.dilation, use_bias=m.bias is not None)
    return _apply(layer, value, [_numpy(m.weight).transpose(2, 3, 1, 0)] + bias,
                  pads_consumed=True)


def _pool(m, value: _Value, name: str) -> _Value:
    maximum = isinstance(m, nn.MaxPool2d)
    if isinstance(m, _AvgPoolRealCells) or value.pads is not None:
        pads = m.pads if isinstance(m, _AvgPoolRealCells) else value.pads
        kernel = m.kernel if isinstance(m, _AvgPoolRealCells) else m.kernel_size
        layer = (L.MaxPooling2D if maximum else L.AveragePooling2D)(kernel, strides=m.stride,
                                                                    padding="same")
        out = _apply(layer, value, pads_consumed=True)
        if _torch_pads(layer, layer.input_shape[:2]) != tuple(pads):
            _refuse(f"the padding before {name!r}", "is not 'same' padding, the only padding "
                                                    "cnnlab pools take.")
        return out
    if m.padding not in (0, (0, 0)) or m.ceil_mode:
        _refuse(f"{type(m).__name__} {name!r}", "uses padding or ceil_mode, which cnnlab's "
                                                "pooling does not.")
    layer = (L.MaxPooling2D if maximum else L.AveragePooling2D)(m.kernel_size, strides=m.stride)
    return _apply(layer, value)


def _adaptive(m: nn.AdaptiveAvgPool2d, value: _Value, name: str) -> _Value:
    if m.output_size not in (1, (1, 1)):
        _refuse(f"AdaptiveAvgPool2d {name!r}", "pools to a size other than 1.")
    out = _apply(L.GlobalAveragePooling2D(), value)
    out.flat_already = True                                  # (N, C, 1, 1) -> (N, C) in cnnlab
    return out


def _upsample(m: nn.Upsample, value: _Value, name: str) -> _Value:
    if m.mode != "nearest" or m.scale_factor is None:
        _refuse(f"Upsample {name!r}", "must be mode='nearest' with a scale_factor.")
    size = m.scale_factor if isinstance(m.scale_factor, tuple) else (m.scale_factor,) * 2
    if any(float(s) != int(s) for s in size):
        _refuse(f"Upsample {name!r}", f"scales by {size}; cnnlab repeats pixels a whole number of "
                                      f"times.")
    return _apply(L.UpSampling2D(tuple(int(s) for s in size)), value)


def _adaptive_max(m: nn.AdaptiveMaxPool2d, value: _Value, name: str) -> _Value:
    if m.output_size not in (1, (1, 1)):
        _refuse(f"AdaptiveMaxPool2d {name!r}", "pools to a size other than 1.")
    out = _apply(L.GlobalMaxPooling2D(), value)
    out.flat_already = True
    return out


def _flatten(value: _Value) -> _Value:
    if value.flat_already:
        return value
    shape = value.tensor.shape[1:]
    nhwc, value = value.nhwc, _Value(value.tensor, value.pads)      # NHWC: cnnlab's own order
    out = _apply(L.Flatten(), value)
    if len(shape) == 3 and not nhwc:
        h, w, c = shape
        out.chw = (c, h, w)
    return out


def _linear(m: nn.Linear, value: _Value, name: str) -> _Value:
    kernel = _numpy(m.weight).T                                  # (in, out)
    if value.chw is not None:                                    # rows: CHW -> HWC order
        c, h, w = value.chw
        kernel = kernel.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(c * h * w, -1)
    layer = L.Dense(m.out_features, use_bias=m.bias is not None)
    return _apply(layer, value, [kernel] + ([_numpy(m.bias)] if m.bias is not None else []))


def _batch_norm(m, value: _Value, name: str) -> _Value:
    if m.running_mean is None or not m.affine:
        _refuse(f"{type(m).__name__} {name!r}", "needs running statistics and affine=True.")
    layer = L.BatchNormalization(momentum=1 - (m.momentum or 0.1), epsilon=m.eps)
    return _apply(layer, value, [_numpy(m.weight), _numpy(m.bias), _numpy(m.running_mean),
                                 _numpy(m.running_var)])


def _activation(name: str):
    def convert(m, value: _Value, node_name: str) -> _Value:
        return _activate(value, name)
    return convert


def _activate(value: _Value, activation: str) -> _Value:
    """Fold into the layer that made the tensor when it has no activation yet and nothing else
    reads the tensor; else an Activation layer."""
    producer = _plain(value, activation).node.layer
    if isinstance(producer, (L.Conv2D, L.Dense)) and producer.activation == "linear" \
            and value.single_user:
        producer.activation = activation
        return _Value(value.tensor)
    return _apply(L.Activation(activation), value)


def _softmax(m: nn.Softmax, value: _Value, name: str) -> _Value:
    rank = len(value.tensor.shape)
    if m.dim not in (-1, rank - 1, 1) or (rank == 4 and m.dim != 1):
        _refuse(f"Softmax {name!r}", f"over dim={m.dim} is not over the channels.")
    return _activate(value, "softmax")


def _pad(m: _Pad, value: _Value, name: str) -> _Value:
    return _Value(value.tensor, pads=tuple(m.pads), pad_value=m.value)


def _permute(m: _Permute, value: _Value, name: str) -> _Value:
    if m.order == (0, 3, 1, 2):                   # to_torch(input_layout='NHWC'): cnnlab's input
        return _Value(value.tensor)
    if m.order == (0, 2, 3, 1):                   # before a Flatten in cnnlab's own order
        return _Value(value.tensor, nhwc=True)
    _refuse(f"permute {m.order} ({name!r})", "is not a layout change cnnlab knows.")


MODULES = {
    nn.Conv2d: _conv, nn.MaxPool2d: _pool, nn.AvgPool2d: _pool, _AvgPoolRealCells: _pool,
    nn.AdaptiveAvgPool2d: _adaptive, nn.Flatten: lambda m, v, n: _flatten(v),
    nn.Linear: _linear, nn.BatchNorm2d: _batch_norm, nn.BatchNorm1d: _batch_norm,
    nn.ReLU: _activation("relu"), nn.Tanh: _activation("tanh"),
    nn.Sigmoid: _activation("sigmoid"), nn.Softmax: _softmax, nn.SiLU: _activation("silu"),
    nn.Hardsigmoid: _activation("hard_sigmoid"),
    nn.GELU: lambda m, v, n: _activate(v, "gelu_tanh" if m.approximate == "tanh" else "gelu"),
    nn.LeakyReLU: lambda m, v, n: _apply(L.LeakyReLU(m.negative_slope), v),
    nn.ELU: lambda m, v, n: _apply(L.ELU(m.alpha), v),
    nn.ZeroPad2d: lambda m, v, n: _apply(L.ZeroPadding2D(((m.padding[2], m.padding[3]),
                                                           (m.padding[0], m.padding[1]))), v),
    _Crop: lambda m, v, n: _apply(L.Cropping2D(m.crops), v),
    nn.Upsample: lambda m, v, n: _upsample(m, v, n),
    nn.AdaptiveMaxPool2d: lambda m, v, n: _adaptive_max(m, v, n),
    nn.Dropout: lambda m, v, n: _apply(L.Dropout(m.p), v), nn.Identity: lambda m, v, n: v,
    _Pad: _pad, _Permute: _permute,
    _Scale: lambda m, v, n: _apply(L.Rescaling(m.scale, m.offset), v),
}

_MERGES = {"add": L.Add, "subtract": L.Subtract, "multiply": L.Multiply,
           "average": L.Average, "maximum": L.Maximum}


def _merge(values: list[_Value], kind: str, dim: int = 1) -> _Value:
    tensors = [_plain(v, kind) for v in values]
    if kind == "concat":
        rank = len(tensors[0].shape)
        dim = dim % rank
        axis = {1: -1, 2: 1, 3: 2}[dim] if rank == 4 else dim     # torch NCHW -> cnnlab NHWC
        return _Value(L.Concatenate(axis=axis)(tensors))
    return _Value(_MERGES[kind]()(tensors))


FUNCTIONS = {
    operator.add: "add", torch.add: "add", operator.sub: "subtract", torch.sub: "subtract",
    operator.mul: "multiply", torch.mul: "multiply", torch.maximum: "maximum",
    torch.cat: "concat", torch.relu: "relu", F.relu: "relu", torch.tanh: "tanh",
    torch.sigmoid: "sigmoid", torch.flatten: "flatten",
}


def _functional_pool(node, args, kwargs) -> _Value:
    """``F.max_pool2d`` / ``F.avg_pool2d`` / ``F.adaptive_avg_pool2d``, as their modules."""
    name = node.target.__name__.lstrip("_")
    params = dict(zip(("kernel_size", "stride", "padding"), args[1:]), **kwargs)
    if name == "adaptive_avg_pool2d":
        return _adaptive(nn.AdaptiveAvgPool2d(params.get("kernel_size", args[1])), args[0],
                         node.name)
    kind = nn.MaxPool2d if name == "max_pool2d" else nn.AvgPool2d
    module = kind(params["kernel_size"], params.get("stride") or None,
                  params.get("padding", 0), **({"ceil_mode": params.get("ceil_mode", False)}))
    return _pool(module, args[0], node.name)


def _call_function(node, args, kwargs) -> _Value:
    if getattr(node.target, "__name__", "").lstrip("_") in (
            "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"):
        return _functional_pool(node, args, kwargs)
    kind = FUNCTIONS.get(node.target)
    if kind in ("relu", "tanh", "sigmoid"):
        return _activate(args[0], kind)
    if kind == "flatten":
        if (args[1] if len(args) > 1 else kwargs.get("start_dim", 0)) != 1:
            _refuse("torch.flatten", "must flatten from dim 1 (keep the batch axis).")
        return _flatten(args[0])
    if kind == "concat":
        return _merge(list(args[0]), "concat", args[1] if len(args) > 1 else kwargs.get("dim", 0))
    if kind is not None:
        if not all(isinstance(a, _Value) for a in args):
            _refuse(f"{node.target.__name__} with a constant", "is not a layer cnnlab has.")
        return _merge(list(args), kind)
    _refuse(f"the function {getattr(node.target, '__name__', node.target)!r}",
            f"is not supported; supported: {sorted({f.__name__ for f in FUNCTIONS})}.")


def _call_method(node, args, kwargs) -> _Value:
    value = args[0]
    if node.target in ("relu", "tanh", "sigmoid"):
        return _activate(value, node.target)
    if node.target == "flatten" and (args[1:] or [kwargs.get("start_dim", 0)])[0] == 1:
        return _flatten(value)
    if node.target == "permute" and tuple(args[1:]) in ((0, 2, 3, 1), (0, 3, 1, 2)):
        return _permute(_Permute(*args[1:]), value, node.name)
    _refuse(f"the tensor method .{node.target}()", "is not supported.")


def from_torch(module, input_shape):
    """A cnnlab ``Model`` from a torch module that ``torch.fx`` can trace into Conv2d, Linear,
    pooling, BatchNorm (eval statistics), ReLU/Tanh/Sigmoid/Softmax, Flatten, Dropout, additions,
    products, maxima and concatenations. ``input_shape`` is cnnlab's ``(H, W, C)`` (a list of
    them for several inputs)."""
    model_class = L.layer_class("Model")       # cnnlab.models sits above io: found by name
    try:
        graph = _Tracer().trace(module)
    except Exception as exc:                      # what fx raises varies by torch version
        raise ConfigError(f"from_torch: torch.fx cannot trace this module ({exc}); cnnlab "
                          f"converts modules whose forward has no data-dependent Python.") from None
    named = dict(module.named_modules())
    shapes = input_shape if input_shape and isinstance(input_shape[0], (tuple, list)) \
        else [input_shape]
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(shapes):
        _refuse(f"a module with {len(placeholders)} inputs", f"needs {len(placeholders)} input "
                                                            f"shapes; received {len(shapes)}.")
    users = {n: len(n.users) for n in graph.nodes}
    values, inputs, outputs = {}, [], None

    def resolve(arg):
        if isinstance(arg, fx.Node):
            value = values[arg]
            value.single_user = users[arg] == 1
            return value
        if isinstance(arg, (list, tuple)):
            return type(arg)(resolve(a) for a in arg)
        return arg

    for node in graph.nodes:
        args = tuple(resolve(a) for a in node.args)
        kwargs = {k: resolve(v) for k, v in node.kwargs.items()}
        if node.op == "placeholder":
            tensor = L.Input(tuple(shapes[len(inputs)]))
            inputs.append(tensor)
            values[node] = _Value(tensor)
        elif node.op == "call_module":
            target = named[node.target]
            if isinstance(target, _Merge):
                values[node] = _merge(list(args), target.kind, target.dim)
                continue
            convert = next((MODULES[k] for k in type(target).__mro__ if k in MODULES), None)
            if convert is None:
                _refuse(f"{type(target).__name__} ({node.target!r})",
                        f"is not supported; supported: "
                        f"{', '.join(sorted(k.__name__ for k in MODULES))}.")
            values[node] = convert(target, args[0], node.target)
        elif node.op == "call_function":
            values[node] = _call_function(node, args, kwargs)
        elif node.op == "call_method":
            values[node] = _call_method(node, args, kwargs)
        elif node.op == "output":
            result = args[0]
            outputs = list(result) if isinstance(result, (list, tuple)) else [result]
        else:
            _refuse(f"the traced operation {node.op} {node.target!r}", "is not supported.")
    ends = [_plain(v, "the model's output") for v in outputs]
    return model_class(inputs if len(inputs) > 1 else inputs[0],
                       ends if len(ends) > 1 else ends[0])
