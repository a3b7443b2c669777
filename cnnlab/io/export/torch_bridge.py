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


def _torch_pads(layer):
    (top, bottom), (left, right) = layer.pads_for(layer.input_shape[:2])
    return (left, right, top, bottom)


def _tensor(array):
    return torch.tensor(np.ascontiguousarray(array))


def to_torch(model, input_layout: str = "NCHW") -> nn.Sequential:
    """A ``torch.nn.Sequential`` with the same weights and the same outputs (eval mode)."""
    if input_layout not in ("NHWC", "NCHW"):
        raise ConfigError(f"input_layout must be 'NHWC' or 'NCHW'. Received: {input_layout!r}")
    model._require_built()
    modules = [_Permute(0, 3, 1, 2)] if input_layout == "NHWC" and len(model.input_shape) == 3 \
        else []
    for layer in model.layers:
        kind = type(layer)
        if kind is L.Conv2D:
            pads = _torch_pads(layer)
            if any(pads):
                modules.append(_Pad(pads))
            conv = nn.Conv2d(layer.input_shape[-1], layer.filters, layer.kernel_size,
                             stride=layer.strides, dilation=layer.dilation_rate,
                             bias=layer.use_bias, dtype=torch.float64 if layer.dtype == np.float64
                             else torch.float32)
            with torch.no_grad():
                conv.weight.copy_(_tensor(layer.weights[0].transpose(3, 2, 0, 1)))
                if layer.use_bias:
                    conv.bias.copy_(_tensor(layer.weights[1]))
            modules.append(conv)
        elif kind is L.MaxPooling2D:
            pads = _torch_pads(layer)
            if any(pads):
                modules.append(_Pad(pads, value=-float("inf")))
            modules.append(nn.MaxPool2d(layer.pool_size, layer.strides))
        elif kind is L.AveragePooling2D:
            pads = _torch_pads(layer)
            modules.append(_AvgPoolRealCells(pads, layer.pool_size, layer.strides,
                                             layer.input_shape[:2]) if any(pads)
                           else nn.AvgPool2d(layer.pool_size, layer.strides))
        elif kind is L.GlobalAveragePooling2D:
            modules += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        elif kind is L.Flatten:
            modules += [_Permute(0, 2, 3, 1), nn.Flatten()]        # flatten (H, W, C), as cnnlab
        elif kind is L.Dense:
            if len(layer.input_shape) != 1:
                raise ConfigError(f"to_torch: Dense {layer.name!r} on a {len(layer.input_shape)}"
                                  f"-D input is not supported; put a Flatten before it.")
            linear = nn.Linear(layer.input_shape[0], layer.units, bias=layer.use_bias,
                               dtype=torch.float64 if layer.dtype == np.float64 else torch.float32)
            with torch.no_grad():
                linear.weight.copy_(_tensor(layer.weights[0].T))
                if layer.use_bias:
                    linear.bias.copy_(_tensor(layer.weights[1]))
            modules.append(linear)
        elif kind is L.Dropout:
            modules.append(nn.Dropout(layer.rate))
        elif kind not in (L.Activation, L.ReLU, L.Softmax):
            raise ConfigError(f"to_torch does not support layer {layer.name!r} of type "
                              f"{kind.__name__}.")
        if layer.activation in _ACTIVATIONS:
            modules.append(_ACTIVATIONS[layer.activation]())
        elif layer.activation in ("softmax", "log_softmax"):
            channel_axis = 1 if len(layer.output_shape) == 3 else -1   # NCHW: channels on 1
            modules.append(nn.Softmax(channel_axis) if layer.activation == "softmax"
                           else nn.LogSoftmax(channel_axis))
    return nn.Sequential(*modules).eval()



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
            if _torch_pads(layer) != tuple(pads):
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
