"""Which real images excite a filter: its top-k patches (Zeiler & Fergus, 2014).

    patches = top_patches(model, "conv2", images, k=9)     # {filter: [Patch, ...]}, best first

Every image goes through the model once (in batches); for each filter of the layer, the k
largest activations over all images and positions are kept (by default at most one per image,
its strongest cell: two neighbouring cells of one image would show the same thing twice), and
each is shown as the part of its image that the activation depends on: the cell's exact
receptive field (``attribution.receptive_field``, from the layers' geometry), clipped to the
image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cnnlab.viz.attribution import receptive_field, sees_nested_layers, target_node


@dataclass(frozen=True)
class Patch:
    image: int                          # index into the images
    row: int                            # the cell in the layer's output map
    col: int
    activation: float
    box: tuple[int, int, int, int]      # top, left, bottom, right (exclusive) in the image
    pixels: np.ndarray                  # image[top:bottom, left:right]


def cell_box(field, row: int, col: int, height: int, width: int):
    """The receptive field of output cell (row, col), clipped to a ``height`` x ``width``
    image: ``(top, left, bottom, right)``, bottom and right exclusive."""
    (r0, rj, rs), (c0, cj, cs) = field
    top, left = r0 + rj * row, c0 + cj * col
    return (max(top, 0), max(left, 0), min(top + rs, height), min(left + cs, width))


@sees_nested_layers
def top_patches(model, layer, images: np.ndarray, k: int = 9, filters=None,
                batch_size: int = 64, one_per_image: bool = True) -> dict[int, list[Patch]]:
    """For each filter of ``layer`` (a name or index; ``filters`` to pick some), the ``k``
    strongest activations over ``images`` ``(N, H, W, C)`` (each image's strongest cell only,
    unless ``one_per_image`` is False), with their receptive-field crops."""
    node = target_node(model, layer)
    tensor = node.outputs[0]
    channels = tensor.shape[-1]
    chosen = list(range(channels)) if filters is None else [int(f) for f in filters]
    best: dict[int, list[tuple[float, int, int, int]]] = {f: [] for f in chosen}
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start:start + batch_size], dtype=model.dtype)
        _, tape = model.run(batch)
        maps = tape.values[id(tensor)]                                  # (n, h, w, F)
        n, h, w = maps.shape[:3]
        for f in chosen:
            cells = maps[..., f].reshape(n, h * w)
            if one_per_image:                               # each image's first strongest cell
                where = cells.argmax(axis=1)
                values = cells[np.arange(n), where]
                top = np.argpartition(-values, min(k, n) - 1)[:k]
                found = [(values[i], i, where[i]) for i in top]
            else:
                flat = cells.reshape(-1)
                top = np.argpartition(-flat, min(k, flat.size) - 1)[:k]
                found = [(flat[t], *divmod(int(t), h * w)) for t in top]
            for value, i, rest in found:
                best[f].append((float(value), start + int(i), *divmod(int(rest), w)))
        for f in chosen:                                   # keep k; ties: the earlier first
            best[f] = sorted(best[f], key=lambda t: (-t[0], t[1], t[2], t[3]))[:k]
    field = receptive_field(node)
    height, width = images.shape[1:3]
    result = {}
    for f, found in best.items():
        result[f] = []
        for activation, i, row, col in found:
            box = cell_box(field, row, col, height, width)
            result[f].append(Patch(i, row, col, activation, box,
                                   images[i, box[0]:box[2], box[1]:box[3]]))
    return result
