"""Figures for the sequel, "Visualizing Convolutional Neural Networks": what each filter looks
for, which real patches excite it, which pixels decide, how the classes arrange themselves, and
how the filters formed while the network learned.

Every figure says what it shows: the layer's name and type, the filter's index, the shapes,
and what its colours mean. Like ``plots``, each is a figure of its own, never through pyplot.
"""

from __future__ import annotations

import numpy as np

from cnnlab.layers.conv import Conv2D
from cnnlab.viz import attribution, features
from cnnlab.viz.attribution import sees_nested_layers, target_node
from cnnlab.viz.patches import cell_box, top_patches
from cnnlab.viz.plots import _figure, _finish

INPUT_RANGE_NOTE = "pixels: black 0 .. white 1, the model's input range"


@sees_nested_layers
def conv_layers(model) -> list[str]:
    """The names of the model's Conv2D layers, in the order they run."""
    names = []
    for node in model.nodes:
        if isinstance(node.layer, Conv2D) and node.layer.name not in names:
            names.append(node.layer.name)
    return names


def _show(ax, image, **kwargs):
    """One ``(H, W, C)`` input-range image: greyscale or RGB, no axes."""
    image = np.asarray(image)
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest", **kwargs)
    else:
        ax.imshow(np.clip(image, 0, 1), interpolation="nearest", **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])


def _layer_title(model, layer: str) -> str:
    node = target_node(model, layer)
    shape = "x".join(map(str, node.outputs[0].shape[1:]))
    return f"{layer} ({type(node.layer).__name__}, output {shape})"


def _grid(count: int, cols: int = 8):
    cols = min(cols, count)
    return -(-count // cols), cols


@sees_nested_layers
def centre_field(model, layer):
    """The input box ``(top, left, bottom, right)`` that ``layer``'s centre cell sees, and
    whether it covers less than half the image along both axes (then a filter is best shown
    by what its centre cell looks for, ``where='centre'``)."""
    node = target_node(model, layer)
    _, h, w, _ = node.outputs[0].shape
    height, width = model.input_shapes[0][:2]
    box = cell_box(attribution.receptive_field(node), h // 2, w // 2, height, width)
    small = (box[2] - box[0]) * 2 < height and (box[3] - box[1]) * 2 < width
    return box, small


@sees_nested_layers
def filter_pictures(model, layer, filters, steps: int = 128, seed: int = 0,
                    where: str = "auto"):
    """What ``filters`` of ``layer`` look for, as shown: ``(images, activations reached,
    where, box)``. ``where='auto'``: a layer whose cells see less than half the image shows
    what its centre cell looks for, the images cropped to that cell's receptive field
    ``box``; deeper layers their mean over the whole map, whole images."""
    box, small = centre_field(model, layer)
    where = ("centre" if small else "mean") if where == "auto" else where
    images = features.visualise(model, layer, filters=filters, steps=steps, seed=seed,
                                where=where)
    reached = features.objective(model, layer, images, filters, where=where)
    if where == "centre":
        images = images[:, box[0]:box[2], box[1]:box[3]]
    return images, reached, where, box


@sees_nested_layers
def plot_feature_visualisation(model, layer, filters=None, steps: int = 128, seed: int = 0,
                               path=None, where: str = "auto"):
    """What each of ``filters`` (default: the first 16) of ``layer`` looks for
    (:func:`filter_pictures`): one image per filter, titled with its index and the activation
    it reaches."""
    count = target_node(model, layer).outputs[0].shape[-1]
    filters = list(range(min(16, count))) if filters is None else list(filters)
    images, reached, where, box = filter_pictures(model, layer, filters, steps, seed, where)
    rows, cols = _grid(len(filters))
    fig = _figure(1.45 * cols, 1.6 * rows + 0.7)
    fig.set_layout_engine("constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, f, image, value in zip(axes, filters, images, reached):
        _show(ax, image)
        ax.axis("on")
        ax.set_title(f"filter {f}\n{'centre' if where == 'centre' else 'mean'} {value:.2f}",
                     fontsize=8)
    what = (f"what each filter's centre cell looks for in its {box[2] - box[0]}x"
            f"{box[3] - box[1]} receptive field" if where == "centre" else
            "what each filter looks for (its mean over the map)")
    fig.suptitle(f"{_layer_title(model, layer)}: {what}\n"
                 f"(gradient ascent on the input, {steps} steps, seed {seed}; {INPUT_RANGE_NOTE})",
                 fontsize=9)
    return _finish(fig, path)


@sees_nested_layers
def plot_class_visualisation(model, class_names, steps: int = 128, seed: int = 0, path=None):
    """One image per class that raises the class's logit (at most 10 classes shown)."""
    shown = list(range(min(10, len(class_names))))
    images = [features.visualise(model, class_index=k, steps=steps, seed=seed)[0] for k in shown]
    fig = _figure(1.45 * len(shown), 2.2)
    fig.set_layout_engine("constrained")
    axes = np.atleast_1d(fig.subplots(1, len(shown), squeeze=False)).ravel()
    for ax, k, image in zip(axes, shown, images):
        _show(ax, image)
        ax.set_title(str(class_names[k]), fontsize=9)
    fig.suptitle(f"What each class looks like to the model (its logit maximised; "
                 f"{INPUT_RANGE_NOTE})", fontsize=9)
    return _finish(fig, path)


@sees_nested_layers
def plot_top_patches(model, layer, images: np.ndarray, filters=None, k: int = 6, path=None):
    """For each of ``filters`` (default: the first 8) of ``layer``, the ``k`` dataset patches
    that excite it most, each cropped to the cell's receptive field, one row per filter."""
    node = target_node(model, layer)
    count = node.outputs[0].shape[-1]
    filters = list(range(min(8, count))) if filters is None else list(filters)
    found = top_patches(model, layer, images, k=k, filters=filters)
    field = attribution.receptive_field(node)
    fig = _figure(1.2 * k + 1.0, 1.25 * len(filters) + 0.8)
    fig.set_layout_engine("constrained")
    axes = fig.subplots(len(filters), k, squeeze=False)
    for row, f in enumerate(filters):
        for col in range(k):
            ax = axes[row, col]
            ax.axis("off")
            if col < len(found[f]):
                patch = found[f][col]
                _show(ax, patch.pixels)
                ax.set_title(f"{patch.activation:.2f}", fontsize=7)
        axes[row, 0].axis("on")
        axes[row, 0].set_xticks([])
        axes[row, 0].set_yticks([])
        axes[row, 0].set_ylabel(f"filter {f}", fontsize=8)
    size = "x".join(str(axis[2]) for axis in field)
    fig.suptitle(f"{_layer_title(model, layer)}: the {k} patches of {len(images):,} images that "
                 f"excite each filter most\n(each crop is the cell's {size} receptive field, "
                 f"clipped to the image; above it, the activation)", fontsize=9)
    return _finish(fig, path)


@sees_nested_layers
def plot_attributions(model, image, class_names=None, path=None):
    """One image and, beside it, four answers to "which pixels decided?": Grad-CAM, gradient
    saliency, Integrated Gradients and occlusion, each with its colour scale."""
    batch = attribution.as_batch(model, image)
    logits = model.run(batch, logits=True)[0][0]
    guess = int(np.argmax(logits))
    names = class_names or [str(i) for i in range(len(logits))]
    size = batch.shape[1]
    patch = max(2, size // 7)
    maps = [
        ("Grad-CAM", attribution.grad_cam(model, image, guess), "inferno", (0, 1),
         "evidence, 0 .. max"),
        ("Saliency", attribution.saliency(model, image, guess), "inferno", (0, 1),
         "|gradient|, 0 .. max"),
        ("Integrated Gradients",
         attribution.integrated_gradients(model, image, guess).sum(axis=-1), "RdBu_r", None,
         "logit added (red) or taken (blue)"),
        (f"Occlusion ({patch}x{patch} grey)",
         attribution.occlusion(model, image, guess, patch=patch, stride=max(1, patch // 2),
                               fill=0.5), "RdBu_r", None, "logit drop when hidden"),
    ]
    fig = _figure(13, 3.3)
    fig.set_layout_engine("constrained")
    axes = fig.subplots(1, 5)
    _show(axes[0], batch[0])
    axes[0].set_title(f"input {'x'.join(map(str, batch.shape[1:]))}\npredicted "
                      f"{names[guess]}", fontsize=9)
    for ax, (title, values, cmap, limits, label) in zip(axes[1:], maps):
        if limits is None:
            bound = float(np.abs(values).max()) or 1.0
            limits = (-bound, bound)
        shown = ax.imshow(values, cmap=cmap, vmin=limits[0], vmax=limits[1],
                          interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03).set_label(label, fontsize=7)
    fig.suptitle(f"Which pixels decided '{names[guess]}' (the class's logit, before softmax)",
                 fontsize=10)
    return _finish(fig, path)


def plot_embedding(points: np.ndarray, labels, class_names=None, method: str = "pca",
                   path=None):
    """The embedding map: one dot per image at its 2-D position, coloured by true class."""
    labels = np.asarray(labels).reshape(-1).astype(int)
    names = class_names or [str(i) for i in range(labels.max() + 1)]
    fig = _figure(7.5, 6)
    ax = fig.subplots()
    from matplotlib import colormaps
    palette = colormaps["tab10" if len(names) <= 10 else "tab20"]
    colours = [palette(k % palette.N) for k in range(len(names))]
    for k, name in enumerate(names):
        chosen = labels == k
        if chosen.any():
            ax.scatter(points[chosen, 0], points[chosen, 1], s=8, color=colours[k], label=name,
                       alpha=0.75, linewidths=0)
    ax.legend(markerscale=2.5, fontsize=8, loc="best", title="true class")
    axis = ("principal axis" if method == "pca" else "t-SNE axis")
    ax.set_xlabel(f"{axis} 1")
    ax.set_ylabel(f"{axis} 2")
    how = ("PCA: distances are true distances in the plane of most variance" if method == "pca"
           else "t-SNE: neighbours stay together; gaps between clusters carry no meaning")
    ax.set_title(f"Penultimate-layer features of {len(labels):,} images, in 2-D\n({how})",
                 fontsize=10)
    fig.tight_layout()
    return _finish(fig, path)
