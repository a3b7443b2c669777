"""The article's concepts with real numbers: convolution, zero padding, stride, pooling, ReLU,
softmax and the output-size formula. Every number comes from the engine's own functions
(``pad_images``, ``sliding_windows``, ``conv2d_forward``, the pooling and softmax ops,
``formula_text``), not from a second implementation.

    explain_conv(size=6, kernel=3, padding=1, stride=2)  ->  text
    conv_gif(..., path)                                    ->  one frame per kernel position
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cnnlab.engine.activations import relu_forward, softmax_forward
from cnnlab.engine.conv import conv2d_forward
from cnnlab.engine.pool import avg_pool2d_forward, max_pool2d_forward
from cnnlab.engine.shapes import dropped_pixels, formula_text, output_hw, resolve_padding
from cnnlab.engine.windows import pad_images, sliding_windows
from cnnlab.errors import ConfigError


@dataclass
class Slide:
    """One sliding-window operation, computed by the engine. 2-D arrays (one channel)."""
    kind: str                  # 'conv', 'max' or 'avg'
    image: np.ndarray          # (H, W)
    padded: np.ndarray         # (Hp, Wp)
    pad: int
    kernel: np.ndarray | None  # (K, K) for conv
    window: int
    stride: int
    windows: np.ndarray        # (Ho, Wo, K, K): what each output cell sees
    output: np.ndarray         # (Ho, Wo)

    @property
    def positions(self):
        return list(np.ndindex(*self.output.shape))

    def formula(self) -> str:
        return formula_text(self.image.shape[0], self.window, self.stride, self.pad, self.pad)


def _check(size, window, padding, stride):
    for name, value, low in (("size", size, 1), ("kernel/pool", window, 1), ("stride", stride, 1),
                             ("padding", padding, 0)):
        if not isinstance(value, int) or value < low or value > 64:
            raise ConfigError(f"explain: {name} must be an integer from {low} to 64 (it has to "
                              f"fit on a screen). Received: {value!r}")


def conv_slide(size=6, kernel=3, padding=1, stride=2, seed=0) -> Slide:
    """A small integer image and an edge-detecting kernel, convolved by ``engine.conv``."""
    _check(size, kernel, padding, stride)
    # pixels 1..9, so that every 0 on screen is padding
    image = np.random.default_rng(seed).integers(1, 10, (size, size)).astype(np.float64)
    # a vertical-edge detector: +1 on the left column, -1 on the right, 0 between; it answers
    # strongly where brightness changes from left to right
    weights = np.zeros((kernel, kernel))
    if kernel == 1:
        weights[0, 0] = 1
    else:
        weights[:, 0], weights[:, -1] = 1, -1
    pads = resolve_padding(padding, (size, size), (kernel, kernel), (stride, stride))
    x = image[None, :, :, None]                                         # (1, H, W, 1)
    out, _ = conv2d_forward(x, weights[:, :, None, None], None, (stride, stride), pads)
    padded = pad_images(x, pads)
    hw = output_hw((size, size), (kernel, kernel), (stride, stride), pads)
    windows = sliding_windows(padded, (kernel, kernel), (stride, stride), (1, 1), hw)
    return Slide("conv", image, padded[0, :, :, 0], padding, weights, kernel, stride,
                 windows[0, :, :, :, :, 0], out[0, :, :, 0])


def pool_slide(size=4, pool=2, stride=2, kind="max", seed=0) -> Slide:
    """Max or average pooling of a small integer image by ``engine.pool``."""
    _check(size, pool, 0, stride)
    if kind not in ("max", "avg"):
        raise ConfigError(f"explain pool: kind must be 'max' or 'avg'. Received: {kind!r}")
    image = np.random.default_rng(seed).integers(1, 10, (size, size)).astype(np.float64)
    x = image[None, :, :, None]
    forward = max_pool2d_forward if kind == "max" else avg_pool2d_forward
    out, _ = forward(x, (pool, pool), (stride, stride))
    hw = output_hw((size, size), (pool, pool), (stride, stride), ((0, 0), (0, 0)))
    windows = sliding_windows(x, (pool, pool), (stride, stride), (1, 1), hw)
    return Slide(kind, image, image, 0, None, pool, stride, windows[0, :, :, :, :, 0],
                 out[0, :, :, 0])


# --- text ----------------------------------------------------------------------------------------
def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.2f}"


def _matrix(values, indent="    ") -> str:
    cells = [[_number(v) for v in row] for row in values]
    width = max(len(c) for row in cells for c in row)
    return "\n".join(indent + " ".join(c.rjust(width) for c in row) for row in cells)


def _terms(window, kernel) -> str:
    return " + ".join(f"{_number(a)}*{_number(b) if b >= 0 else f'({_number(b)})'}"
                      for a, b in zip(window.ravel(), kernel.ravel()))


#: window positions whose multiply-add ``explain_conv`` writes out unless asked for every one
SHOWN_SUMS = 3


def explain_conv(size=6, kernel=3, padding=1, stride=2, seed=0, every_sum: bool = False) -> str:
    """The slide, step by step: the multiply-add written out for the first ``SHOWN_SUMS``
    positions (every one with ``every_sum``), then each position's result."""
    s = conv_slide(size, kernel, padding, stride, seed)
    ho, wo = s.output.shape
    lines = [f"Convolution: a {size}x{size} input, a {kernel}x{kernel} kernel, zero padding "
             f"{padding}, stride {stride}.", ""]
    if padding:
        lines += [f"Input with {padding} pixel{'s' * (padding > 1)} of zero padding all round "
                  f"({size}x{size} -> {s.padded.shape[0]}x{s.padded.shape[1]}; the outer ring of "
                  f"0s is the padding):", _matrix(s.padded)]
    else:
        lines += [f"Input ({size}x{size}), no padding:", _matrix(s.image)]
    lines += ["", f"Kernel ({kernel}x{kernel}):", _matrix(s.kernel), "",
              f"The kernel slides {stride} pixel{'s' * (stride > 1)} at a time (the stride) and "
              f"stops at {ho}x{wo} positions. At each, multiply the window by the kernel cell by "
              f"cell and add:", ""]
    for step, (i, j) in enumerate(s.positions, start=1):
        r, c = i * stride, j * stride
        where = (f"step {step}/{ho * wo}: rows {r}-{r + kernel - 1}, cols {c}-{c + kernel - 1} "
                 f"of the padded input -> feature map [{i}, {j}] = {_number(s.output[i, j])}")
        lines.append("    " + where)
        if every_sum or step <= SHOWN_SUMS:
            lines.append(f"        = {_terms(s.windows[i, j], s.kernel)}")
    if not every_sum and len(s.positions) > SHOWN_SUMS:
        lines.append(f"    (the multiply-add is written out for the first {SHOWN_SUMS} positions; "
                     f"--all writes it for every one)")
    lines += ["", f"Feature map ({ho}x{wo}):", _matrix(s.output), "",
              "Output size (the article's formula, per axis):", "    " + s.formula()]
    lost = dropped_pixels(size, kernel, stride, padding, padding)
    if lost:
        lines.append(f"    floor drops the last {lost} row(s) and column(s): the kernel cannot "
                     f"take another full step there.")
    return "\n".join(lines)


def explain_pool(size=4, pool=2, stride=2, kind="both", seed=0) -> str:
    kinds = ("max", "avg") if kind == "both" else (kind,)
    slides = [pool_slide(size, pool, stride, k, seed) for k in kinds]
    s = slides[0]
    ho, wo = s.output.shape
    lines = [f"Pooling: a {size}x{size} input, {pool}x{pool} windows, stride {stride}.", "",
             "Input:", _matrix(s.image), "",
             f"Each window gives one number: its maximum (max pooling) or its mean (average "
             f"pooling). {ho}x{wo} windows:", ""]
    for i, j in s.positions:
        window = s.windows[i, j]
        results = ", ".join(f"{'max' if t.kind == 'max' else 'mean'} = {_number(t.output[i, j])}"
                            for t in slides)
        lines.append(f"    [{i}, {j}] window {' '.join(_number(v) for v in window.ravel())}: "
                     f"{results}")
    for t in slides:
        lines += ["", f"{'Max' if t.kind == 'max' else 'Average'} pooling output ({ho}x{wo}):",
                  _matrix(t.output)]
    lines += ["", "Output size:", "    " + s.formula(),
              "", "Pooling has no weights to learn; it shrinks each feature map and keeps the "
              "strongest (max) or typical (mean) response in each window."]
    return "\n".join(lines)


def explain_relu(seed=0) -> str:
    values = np.random.default_rng(seed).integers(-9, 10, (4, 4)).astype(np.float64)
    out, _ = relu_forward(values)
    return "\n".join(["ReLU keeps positive values and replaces negative ones by 0: "
                      "relu(x) = max(0, x).", "", "Feature map:", _matrix(values), "",
                      "After ReLU:", _matrix(out), "",
                      "Its gradient is 1 where x > 0 and 0 elsewhere, so only the cells that "
                      "were active pass the error back."])


def explain_softmax(logits=(2.0, 1.0, 0.1)) -> str:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 1 or z.size < 2 or not np.isfinite(z).all():
        raise ConfigError("explain softmax needs two or more finite numbers (the logits).")
    probs, _ = softmax_forward(z[None])
    shifted = z - z.max()
    exps = np.exp(shifted)
    row = lambda v: "  ".join(f"{x:8.4f}" for x in v)           # noqa: E731
    return "\n".join([
        "Softmax turns scores (logits) into probabilities that add up to 1:",
        "    p_i = exp(z_i) / sum_j exp(z_j)", "",
        f"    logits z          {row(z)}",
        f"    z - max(z)        {row(shifted)}   (same result; exp never overflows)",
        f"    exp(z - max z)    {row(exps)}   sum = {exps.sum():.4f}",
        f"    probabilities     {row(probs[0])}   sum = {probs.sum():.4f}", "",
        f"The largest logit ({_number(z.max())}) gets the largest probability "
        f"({probs.max():.1%}). With cross-entropy, the loss for true class k is -log p_k."])


def explain_formula(size: int, kernel: int, padding: int, stride: int) -> str:
    text = formula_text(size, kernel, stride, padding, padding)
    lost = dropped_pixels(size, kernel, stride, padding, padding)
    lines = ["O = floor((W - K + 2P) / S) + 1", f"    W = {size} (input), K = {kernel} (kernel), "
             f"P = {padding} (padding), S = {stride} (stride)", "    " + text]
    lines.append(f"    floor drops {lost} pixel(s) at the end: (W - K + 2P) is not a multiple of S."
                 if lost else "    No pixel is dropped: (W - K + 2P) is a multiple of S.")
    return "\n".join(lines)


# --- the animation -----------------------------------------------------------------------------
CELL = 34
COLOURS = {"pad": (232, 232, 232), "input": (207, 227, 255), "window": (255, 204, 128),
           "edge": (230, 120, 0), "done": (200, 230, 201), "current": (102, 187, 106),
           "empty": (250, 250, 250), "line": (150, 150, 150), "text": (20, 20, 20)}


def _font(size):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:                       # Pillow < 10.1: a fixed-size bitmap font
        return ImageFont.load_default()


def _grid(draw, origin, values, colours, font):
    """Draw ``values (h, w)`` as a table of cells filled with ``colours[i][j]`` (NaN: blank)."""
    x0, y0 = origin
    for (i, j), v in np.ndenumerate(values):
        box = (x0 + j * CELL, y0 + i * CELL, x0 + (j + 1) * CELL, y0 + (i + 1) * CELL)
        draw.rectangle(box, fill=colours[i][j], outline=COLOURS["line"])
        if not np.isnan(v):
            draw.text((box[0] + CELL / 2, box[1] + CELL / 2), _number(v), fill=COLOURS["text"],
                      font=font, anchor="mm")


def _input_colours(s: Slide, r0: int, c0: int):
    """Padding grey, input blue, the current window orange."""
    hp, wp = s.padded.shape
    colours = [[COLOURS["input"] if (s.pad <= a < hp - s.pad and s.pad <= b < wp - s.pad)
                else COLOURS["pad"] for b in range(wp)] for a in range(hp)]
    for a in range(r0, r0 + s.window):
        for b in range(c0, c0 + s.window):
            colours[a][b] = COLOURS["window"]
    return colours


def slide_frames(s: Slide):
    """One PIL image per window position: input (padding grey, input blue), the window in
    orange, the kernel, and the feature map filling in (current cell dark green)."""
    from PIL import Image, ImageDraw
    font, title_font = _font(15), _font(16)
    hp, wp = s.padded.shape
    ho, wo = s.output.shape
    gap, top = CELL, 84
    kernel_w = (s.window * CELL + gap) if s.kernel is not None else 0
    width = max(wp * CELL + gap + kernel_w + wo * CELL + 2 * 20, 600)
    height = top + max(hp, ho) * CELL + 40
    verb = {"conv": "sum(window x kernel)", "max": "max(window)", "avg": "mean(window)"}[s.kind]
    filled = np.full(s.output.shape, np.nan)
    frames = []
    for step, (i, j) in enumerate(s.positions):
        filled[i, j] = s.output[i, j]
        img = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(img)
        r0, c0 = i * s.stride, j * s.stride
        _grid(draw, (20, top), s.padded, _input_colours(s, r0, c0), font)
        draw.rectangle((20 + c0 * CELL, top + r0 * CELL, 20 + (c0 + s.window) * CELL,
                        top + (r0 + s.window) * CELL), outline=COLOURS["edge"], width=3)
        x = 20 + wp * CELL + gap
        if s.kernel is not None:
            draw.text((x, top - 10), "kernel", fill=COLOURS["text"], font=font, anchor="ls")
            _grid(draw, (x, top), s.kernel, [[COLOURS["window"]] * s.window] * s.window, font)
            x += s.window * CELL + gap
        draw.text((x, top - 10), "feature map" if s.kind == "conv" else "output",
                  fill=COLOURS["text"], font=font, anchor="ls")
        colours = [[COLOURS["current"] if (a, b) == (i, j) else
                    COLOURS["empty"] if np.isnan(filled[a, b]) else COLOURS["done"]
                    for b in range(wo)] for a in range(ho)]
        _grid(draw, (x, top), filled, colours, font)
        draw.text((20, 22), f"Step {step + 1}/{ho * wo}: output[{i}, {j}] = {verb} = "
                  f"{_number(s.output[i, j])}", fill=COLOURS["text"], font=title_font,
                  anchor="ls")
        draw.text((20, 46), f"output size: {s.formula()}", fill=(90, 90, 90), font=font,
                  anchor="ls")
        draw.text((20, 66), "padding grey, input blue, window orange", fill=(90, 90, 90),
                  font=font, anchor="ls")
        frames.append(img)
    return frames


def save_gif(s: Slide, path) -> int:
    """Write the animation (atomically); returns the number of frames."""
    from cnnlab.atomic import atomic_write
    frames = slide_frames(s)
    with atomic_write(path) as handle:
        frames[0].save(handle, format="GIF", save_all=True, append_images=frames[1:],
                       duration=700, loop=0)
    return len(frames)
