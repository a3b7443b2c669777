"""``model.summary()``: Keras' table, plus the article's formula for every conv and pool layer.

For a conv or pool layer the last column shows how its output height was computed, with the real
numbers, e.g. ``24 = floor((28 - 5 + 2*0) / 1) + 1``, and a warning when floor leaves input rows
or columns out.
"""

from __future__ import annotations

from cnnlab.engine.shapes import dropped_pixels, formula_text


def _formula_and_warning(layer) -> tuple[str, str]:
    """(formula for height [and width if different], warning or '') for windowed layers."""
    window = getattr(layer, "kernel_size", None) or getattr(layer, "pool_size", None)
    if window is None or layer.input_shape is None or len(layer.input_shape) != 3:
        return "", ""
    h, w = layer.input_shape[0], layer.input_shape[1]
    pads = layer.pads_for((h, w))
    dilation = getattr(layer, "dilation_rate", (1, 1))
    parts, warnings = [], []
    for axis, size, name in ((0, h, "rows"), (1, w, "cols")):
        text = formula_text(size, window[axis], layer.strides[axis], pads[axis][0], pads[axis][1],
                            dilation[axis])
        if axis == 0 or text.split(" = ", 1)[1] != parts[0].split(" = ", 1)[1]:
            parts.append(text)
        lost = dropped_pixels(size, window[axis], layer.strides[axis], pads[axis][0],
                              pads[axis][1], dilation[axis])
        if lost:
            warnings.append(f"floor drops the last {lost} {name}")
    return "; ".join(parts), ", ".join(warnings)


def layer_rows(model) -> list[dict]:
    """The table's content: name, type, output shape, parameters, formula and warning per layer."""
    model._require_built()
    rows = []
    for layer in model.layers:
        formula, warning = _formula_and_warning(layer)
        rows.append({"name": layer.name, "type": type(layer).__name__,
                     "output_shape": list(layer.output_shape), "params": layer.count_params(),
                     "formula": formula, "warning": warning})
    return rows


def summary_text(model, line_length: int = 110) -> str:
    headers = ("Layer (type)", "Output Shape", "Param #", "Output size = formula")
    rows = [(f"{r['name']} ({r['type']})", str((None, *r["output_shape"])), f"{r['params']:,}",
             r["formula"] + (f"   ! {r['warning']}" if r["warning"] else ""))
            for r in layer_rows(model)]
    widths = [max(len(headers[i]), *(len(r[i]) for r in rows)) if rows else len(headers[i])
              for i in range(4)]
    widths[3] = max(widths[3], line_length - sum(widths[:3]) - 6)

    def fmt(row):
        return "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()

    rule = "=" * (sum(widths) + 6)
    total = model.count_params()
    trainable = sum(layer.count_params() for layer in model.layers if layer.trainable)
    lines = [f'Model: "{model.name}"', rule, fmt(headers), rule]
    lines += [fmt(r) for r in rows]
    lines += [rule, f"Total params: {total:,}", f"Trainable params: {trainable:,}",
              f"Non-trainable params: {total - trainable:,}",
              f"Input shape: {(None, *model.input_shape)}   (N, H, W, C: channels last)"]
    return "\n".join(lines)
