"""Figures for people: feature maps, filters, training curves, confusion matrix, mistakes,
Grad-CAM. matplotlib draws them; every function returns the figure and, given ``path``, saves it
as PNG.

Each figure is a ``matplotlib.figure.Figure`` made here, never through ``pyplot``: nothing global
changes (not the user's backend, not pyplot's list of open figures), so a notebook's own plots
and windows are left alone. Display one in a notebook with ``display(fig)``.
"""

from __future__ import annotations

import numpy as np

from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.layers.conv import Conv2D
from cnnlab.viz.attribution import as_batch, grad_cam, sees_nested_layers
from cnnlab.viz.grids import feature_map_grid, kernel_grid


def _figure(width: float, height: float):
    """A figure of its own, outside pyplot (see the module docstring)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise CnnlabError("Plots need matplotlib: pip install matplotlib") from None
    return Figure(figsize=(width, height))


def _finish(fig, path):
    if path is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


@sees_nested_layers
def feature_maps(model, image) -> list[tuple[str, np.ndarray]]:
    """Every node's activations for one image, in topological order (merges included):
    ``[(layer name, (H, W, C) or (D,)), ...]``; a layer called twice appears as ``name (call 2)``."""
    calls: dict[str, int] = {}
    maps = []
    for layer, out in model.node_outputs(as_batch(model, image)):
        calls[layer.name] = calls.get(layer.name, 0) + 1
        count = calls[layer.name]
        maps.append((layer.name if count == 1 else f"{layer.name} (call {count})", out[0]))
    return maps


@sees_nested_layers
def plot_feature_maps(model, image, path=None, layers=None):
    """One grid per layer (each map min-max scaled on its own), titled with name and shape."""
    chosen = [(name, maps) for name, maps in feature_maps(model, image)
              if layers is None or name in layers]
    chosen = [(name, maps) for name, maps in chosen
              if type(model.get_layer(name.split(" (call")[0])).__name__
              not in ("Flatten", "Dropout")]
    grids = [(name, feature_map_grid(maps), maps.shape) for name, maps in chosen]
    heights = [max(1.2, min(6.0, 6.0 * g.shape[0] / max(g.shape[1], 1))) for _, g, _ in grids]
    # 10 inches: the report's full width (a third of it stayed empty at 7)
    heights = [h * 10 / 7 for h in heights]
    fig = _figure(10, 2.2 + sum(heights))
    axes = fig.subplots(len(grids) + 1, 1, gridspec_kw={"height_ratios": [1.6, *heights]},
                        squeeze=False)
    axes = axes[:, 0]
    axes[0].imshow(as_batch(model, image)[0].squeeze(), cmap="gray")
    axes[0].set_title(f"Input {tuple(model.input_shape)}")
    axes[0].axis("off")
    for ax, (name, grid, shape) in zip(axes[1:], grids):
        layer = model.get_layer(name.split(" (call")[0])
        kind = f"{len(shape) == 3 and shape[2] or 1} maps of {shape[0]}x{shape[1]}" \
            if len(shape) == 3 else f"{shape[0]} units"
        ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto" if grid.shape[0] == 1
                  else "equal", interpolation="nearest")
        ax.set_title(f"{name} ({type(layer).__name__}): {kind}", fontsize=10)
        ax.axis("off")
    fig.suptitle("Feature maps: each map scaled to its own min (dark) .. max (yellow)",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    return _finish(fig, path)


@sees_nested_layers
def plot_filters(model, layer=None, path=None):
    """A conv layer's learned kernels (default: the first Conv2D): red positive, blue negative."""
    if layer is None:
        conv = next((lay for lay in model.layers if isinstance(lay, Conv2D)), None)
        if conv is None:
            raise ConfigError("plot_filters needs a Conv2D layer; this model has none.")
    else:
        conv = model.get_layer(layer) if isinstance(layer, str) else layer
    kernel = conv.get_weights()[0]
    grid = kernel_grid(kernel)
    fig = _figure(6, 6 * grid.shape[0] / grid.shape[1] + 0.8)
    ax = fig.subplots()
    if grid.ndim == 3:
        ax.imshow(np.nan_to_num(grid, nan=1.0), interpolation="nearest")
    else:
        image = ax.imshow(grid, cmap="RdBu_r", vmin=0, vmax=1, interpolation="nearest")
        bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, ticks=[0, 0.5, 1])
        bound = float(np.abs(kernel).max())
        bar.ax.set_yticklabels([f"{-bound:.2f}", "0", f"{bound:.2f}"])
        bar.set_label("weight")
    kh, kw, c, f = kernel.shape
    note = "" if c in (1, 3) else f", mean over {c} input channels"
    ax.set_title(f"{conv.name}: {f} filters of {kh}x{kw}{note}")
    ax.axis("off")
    return _finish(fig, path)


def plot_history(history, path=None):
    """Loss and accuracy per epoch, training and validation."""
    logs = getattr(history, "history", history)
    if not logs or "loss" not in logs:
        raise ConfigError("plot_history needs a History (or dict) with a 'loss' list.")
    metrics = ["loss"] + [k for k in logs if not k.startswith("val_") and k not in
                          ("loss", "learning_rate")]
    fig = _figure(5 * len(metrics), 3.6)
    axes = fig.subplots(1, len(metrics), squeeze=False)
    for ax, name in zip(axes[0], metrics):
        epochs = np.arange(1, len(logs[name]) + 1)
        ax.plot(epochs, logs[name], "o-", label="training")
        if f"val_{name}" in logs:
            ax.plot(epochs, logs[f"val_{name}"], "s--", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(name.replace("_", " ").capitalize())
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return _finish(fig, path)


def predictions(model, x, batch_size=256) -> np.ndarray:
    return np.argmax(model.predict(x, batch_size=batch_size, verbose=0), axis=-1)


def confusion_matrix(model, x, y, num_classes: int | None = None) -> np.ndarray:
    """Counts ``(K, K)``: row = true class, column = predicted class."""
    y = np.asarray(y).reshape(-1).astype(int) if np.asarray(y).ndim == 1 \
        else np.argmax(y, axis=-1)
    predicted = predictions(model, x)
    k = num_classes or model.output_shape[-1]
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (y, predicted), 1)
    return matrix


def plot_confusion_matrix(matrix, class_names=None, path=None):
    k = len(matrix)
    names = class_names or [str(i) for i in range(k)]
    fig = _figure(1.0 + 0.55 * k, 0.8 + 0.55 * k)
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                    color="white" if count > matrix.max() / 2 else "black")
    ax.set_xticks(range(k), names)
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set_title(f"Confusion matrix ({accuracy:.1%} correct)")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="images")
    fig.tight_layout()
    return _finish(fig, path)


def misclassified(model, x, y, limit: int | None = 16):
    """Indices, true and predicted classes and confidence of the first ``limit`` mistakes (all
    of them with ``limit=None``)."""
    probs = model.predict(x, batch_size=256, verbose=0)
    predicted = probs.argmax(axis=-1)
    truth = np.asarray(y).reshape(-1) if np.asarray(y).ndim == 1 else np.argmax(y, axis=-1)
    wrong = np.flatnonzero(predicted != truth)[:limit]
    return [(int(i), int(truth[i]), int(predicted[i]), float(probs[i, predicted[i]]))
            for i in wrong]


def plot_misclassified(model, x, y, limit: int = 16, class_names=None, path=None):
    """A gallery of mistakes, each titled with its true and predicted class; the title says how
    many are shown of how many there are."""
    every = misclassified(model, x, y, None)
    mistakes = every[:limit]
    names = class_names or [str(i) for i in range(model.output_shape[-1])]
    cols = min(8, max(1, len(mistakes)))
    rows = max(1, -(-len(mistakes) // cols))
    fig = _figure(1.6 * cols, 2.2 * rows + 0.4)
    # constrained layout keeps each image's two-line title clear of the row above
    fig.set_layout_engine("constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (i, true, guess, confidence) in zip(axes.ravel(), mistakes):
        ax.imshow(np.asarray(x[i]).squeeze(), cmap="gray")
        ax.set_title(f"true {names[true]}\npred {names[guess]} ({confidence:.0%})", fontsize=8,
                     color="firebrick")
    title = (f"{len(mistakes)} of {len(every)} misclassified images shown"
             if len(mistakes) < len(every) else f"{len(every)} misclassified images")
    fig.suptitle(title if every else "No mistakes", fontsize=10)
    return _finish(fig, path)


@sees_nested_layers
def plot_grad_cam(model, images, class_names=None, path=None):
    """Each image beside its Grad-CAM heat map (for the predicted class), overlaid."""
    names = class_names or [str(i) for i in range(model.output_shape[-1])]
    fig = _figure(1.9 * len(images), 4.0)
    axes = fig.subplots(2, len(images), squeeze=False)
    for col, image in enumerate(images):
        batch = as_batch(model, image)
        guess = int(model.predict_on_batch(batch).argmax())
        heat = grad_cam(model, image, guess)
        axes[0, col].imshow(batch[0].squeeze(), cmap="gray")
        axes[0, col].set_title(f"pred {names[guess]}", fontsize=9)
        axes[1, col].imshow(batch[0].squeeze(), cmap="gray")
        axes[1, col].imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        for row in (0, 1):
            axes[row, col].axis("off")
    axes[1, 0].set_title("Grad-CAM", fontsize=9, loc="left")
    fig.tight_layout()
    return _finish(fig, path)
