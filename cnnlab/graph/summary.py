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


def _connections(model) -> dict[int, str]:
    """Per layer, the tensors its calls read: ``conv2d[0][0], add[0][0]`` (layer, node, tensor),
    Keras' "Connected to"."""
    refs = model._node_refs()
    text: dict[int, list[str]] = {}
    for node in model.nodes:
        text.setdefault(id(node.layer), []).extend(
            f"{refs[id(t.node)][0]}[{refs[id(t.node)][1]}][{t.index}]" for t in node.inbound)
    return {key: ", ".join(value) for key, value in text.items()}


def is_chain(model) -> bool:
    """One input, one output, every layer called once on the previous layer's output."""
    return len(model.inputs) == 1 and len(model.outputs) == 1 and all(
        len(node.inbound) == 1 and len(model.consumers.get(id(node.outputs[0]), [])) <= 1
        for node in model.nodes)


def layer_rows(model) -> list[dict]:
    """The table's content per layer: name, type, output shape, parameters, what it is connected
    to, formula and warning."""
    model._require_built()
    connections = _connections(model)
    rows = []
    for layer in model.layers:
        formula, warning = _formula_and_warning(layer)
        shape = layer._output_shape                   # the batch axis is added when shown
        rows.append({"name": layer.name, "type": type(layer).__name__,
                     "output_shape": [list(s) for s in shape] if isinstance(shape, list)
                     else list(shape),
                     "params": layer.count_params(),
                     "connected_to": connections.get(id(layer), ""),
                     "formula": formula, "warning": warning})
    return rows


def _shape_text(shape) -> str:
    if shape and isinstance(shape[0], list):
        return ", ".join(str((None, *s)) for s in shape)
    return str((None, *shape))


def summary_text(model, line_length: int = 110) -> str:
    graph = not is_chain(model)
    headers = ("Layer (type)", "Output Shape", "Param #") + (("Connected to",) if graph else ()) \
        + ("Output size = formula",)
    rows = [(f"{r['name']} ({r['type']})", _shape_text(r["output_shape"]), f"{r['params']:,}")
            + ((r["connected_to"],) if graph else ())
            + (r["formula"] + (f"   ! {r['warning']}" if r["warning"] else ""),)
            for r in layer_rows(model)]
    columns = len(headers)
    widths = [max(len(headers[i]), *(len(r[i]) for r in rows)) if rows else len(headers[i])
              for i in range(columns)]
    widths[-1] = max(widths[-1], line_length - sum(widths[:-1]) - 2 * (columns - 1))

    def fmt(row):
        return "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()

    rule = "=" * (sum(widths) + 2 * (columns - 1))
    total = model.count_params()
    trainable = sum(v.value.size for v in model.trainable_params)
    inputs = ", ".join(str((None, *t.shape[1:])) for t in model.inputs)
    lines = [f'Model: "{model.name}"', rule, fmt(headers), rule]
    lines += [fmt(r) for r in rows]
    lines += [rule, f"Total params: {total:,}", f"Trainable params: {trainable:,}",
              f"Non-trainable params: {total - trainable:,}",
              f"Input shape: {inputs}   (N, H, W, C: channels last)"]
    return "\n".join(lines)
