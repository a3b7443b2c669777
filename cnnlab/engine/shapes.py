"""The article's output-size formula, and how padding is turned into numbers.

    O = floor((W - K + 2P) / S) + 1

W is the input size along one axis, K the kernel (or pool window) size, P the zero padding on each
side and S the stride. This module is its only home: layers, ``summary()``, ``explain`` and the viz
all call :func:`conv_output_size`, so the numbers a student reads are the numbers the engine uses.

Two extensions keep the formula exact for every layer cnnlab has:
- dilation ``D`` spreads the kernel taps ``D`` apart, so the window covers ``D*(K-1)+1`` pixels;
- padding may differ before and after (``'same'`` with an even kernel pads one more after), so
  ``2P`` becomes ``P_before + P_after``.
"""

from __future__ import annotations

import math

from cnnlab.errors import ConfigError, ShapeError

Pads = tuple[tuple[int, int], tuple[int, int]]  # ((top, bottom), (left, right))


def effective_kernel_size(kernel: int, dilation: int = 1) -> int:
    """Pixels a dilated kernel spans: taps are ``dilation`` apart, so ``D*(K-1)+1``."""
    return dilation * (kernel - 1) + 1


def conv_output_size(size: int, kernel: int, stride: int = 1, pad_before: int = 0,
                     pad_after: int | None = None, dilation: int = 1) -> int:
    """``O = floor((W - K_eff + P_before + P_after) / S) + 1``; refuses results <= 0.

    With symmetric padding and no dilation this is the article's ``floor((W - K + 2P) / S) + 1``.

    floor, not ceil: a window that would hang over the padded edge is not computed, so the last
    ``(W - K + 2P) mod S`` input pixels can be dropped (``summary()`` warns when that happens).

    >>> conv_output_size(28, 5)          # the article's first conv
    24
    >>> conv_output_size(24, 2, stride=2)  # its 2x2, stride-2 max pool
    12
    """
    if pad_after is None:
        pad_after = pad_before
    for name, value, least in (("input size", size, 1), ("kernel", kernel, 1),
                               ("stride", stride, 1), ("dilation", dilation, 1),
                               ("padding", pad_before, 0), ("padding", pad_after, 0)):
        if value < least:
            raise ShapeError(f"The {name} must be {'positive' if least else 'zero or more'}; "
                             f"received {value}.")
    k_eff = effective_kernel_size(kernel, dilation)
    span = size - k_eff + pad_before + pad_after
    out = math.floor(span / stride) + 1
    if out <= 0:
        raise ShapeError(
            f"Output size would be {out} <= 0: floor(({size} - {k_eff} + {pad_before + pad_after})"
            f" / {stride}) + 1 = {out} (input {size}, kernel {kernel}"
            f"{f', dilation {dilation}' if dilation != 1 else ''}, padding "
            f"{pad_before}+{pad_after}, stride {stride}). The input is too small for this layer: "
            f"use a larger input, a smaller kernel, or padding='same'."
        )
    return out


def receptive_field_step(field: tuple[float, float, int], kernel: int, stride: int = 1,
                         pad_before: int = 0, dilation: int = 1) -> tuple[float, float, int]:
    """One windowed layer (conv or pooling) on top of a receptive field, along one axis.

    ``field = (start, jump, size)``: cell ``o`` of the layer's *input* sees input-image pixels
    ``start + jump * o`` to ``start + jump * o + size - 1``. The layer's output cell ``o`` reads
    its input cells ``stride * o - pad_before`` to that ``+ k_eff - 1``, so it sees::

        start' = start - pad_before * jump      jump' = jump * stride
        size'  = size + (k_eff - 1) * jump      k_eff = dilation * (kernel - 1) + 1

    (the same geometry as the output-size formula; the image itself is ``(0, 1, 1)``)."""
    start, jump, size = field
    k_eff = effective_kernel_size(kernel, dilation)
    return start - pad_before * jump, jump * stride, size + (k_eff - 1) * jump


def dropped_pixels(size: int, kernel: int, stride: int, pad_before: int = 0,
                   pad_after: int = 0, dilation: int = 1) -> int:
    """How many padded-input pixels at the end floor() leaves out: ``(W - K_eff + 2P) mod S``."""
    return (size - effective_kernel_size(kernel, dilation) + pad_before + pad_after) % stride


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow/Keras 'same': output ``ceil(W / S)``; any odd pixel of padding goes *after*.

    The total padding is what the last window needs to fit:
    ``max((ceil(W/S) - 1) * S + K_eff - W, 0)``, split ``total // 2`` before and the rest after.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + effective_kernel_size(kernel, dilation) - size, 0)
    return total // 2, total - total // 2


def as_pair(value, name: str, owner: str = "") -> tuple[int, int]:
    """Accept ``3`` or ``(3, 3)`` as a (height, width) pair of positive ints."""
    where = f"{owner}: " if owner else ""
    if isinstance(value, int) and not isinstance(value, bool):
        pair = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ConfigError(f"{where}{name} must be an int or a tuple of 2 ints. Received: "
                          f"{name}={value!r}")
    if min(pair) <= 0:
        raise ConfigError(f"{where}{name} must be positive. Received: {name}={value!r}")
    return pair


def resolve_padding(padding, input_hw: tuple[int, int], kernel: tuple[int, int],
                    strides: tuple[int, int], dilation: tuple[int, int] = (1, 1),
                    owner: str = "") -> Pads:
    """Turn any accepted ``padding`` into explicit ``((top, bottom), (left, right))`` numbers.

    Accepts ``'valid'`` (no padding), ``'same'`` (TensorFlow semantics, see
    :func:`same_padding`), an int ``P`` (``P`` on every side), ``(P_h, P_w)``, or
    ``((top, bottom), (left, right))``.
    """
    where = f"{owner}: " if owner else ""
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return (0, 0), (0, 0)
        if mode == "same":
            return (same_padding(input_hw[0], kernel[0], strides[0], dilation[0]),
                    same_padding(input_hw[1], kernel[1], strides[1], dilation[1]))
    elif isinstance(padding, int) and not isinstance(padding, bool) and padding >= 0:
        return (padding, padding), (padding, padding)
    elif isinstance(padding, (tuple, list)) and len(padding) == 2:
        if all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in padding):
            return (padding[0], padding[0]), (padding[1], padding[1])
        if all(isinstance(p, (tuple, list)) and len(p) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in p)
               for p in padding):
            return (padding[0][0], padding[0][1]), (padding[1][0], padding[1][1])
    raise ConfigError(
        f"{where}padding must be 'valid', 'same', a non-negative int, (pad_h, pad_w) or "
        f"((top, bottom), (left, right)). Received: padding={padding!r}")


def validate_padding(padding, owner: str = "") -> None:
    """Check a padding argument at construction time, before any input size is known."""
    resolve_padding(padding, (1, 1), (1, 1), (1, 1), owner=owner)


def output_hw(input_hw: tuple[int, int], kernel: tuple[int, int], strides: tuple[int, int],
              pads: Pads, dilation: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    """The formula applied to height and width."""
    return (conv_output_size(input_hw[0], kernel[0], strides[0], pads[0][0], pads[0][1],
                             dilation[0]),
            conv_output_size(input_hw[1], kernel[1], strides[1], pads[1][0], pads[1][1],
                             dilation[1]))


def formula_text(size: int, kernel: int, stride: int = 1, pad_before: int = 0,
                 pad_after: int | None = None, dilation: int = 1) -> str:
    """The formula with its numbers filled in, as the article writes it.

    >>> formula_text(28, 5)
    '24 = floor((28 - 5 + 2*0) / 1) + 1'
    >>> formula_text(28, 2, 1, 0, 1)
    '28 = floor((28 - 2 + 0+1) / 1) + 1'
    """
    if pad_after is None:
        pad_after = pad_before
    out = conv_output_size(size, kernel, stride, pad_before, pad_after, dilation)
    pad = f"2*{pad_before}" if pad_before == pad_after else f"{pad_before}+{pad_after}"
    k = effective_kernel_size(kernel, dilation)
    k_text = str(k) if dilation == 1 else f"{k}"
    return f"{out} = floor(({size} - {k_text} + {pad}) / {stride}) + 1"
