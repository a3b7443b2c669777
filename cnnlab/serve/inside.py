"""The Inside page's API (``/inside``): for a served model, its conv layers; for a filter, what it
looks for (feature visualisation), the dataset patches that excite it most, and its map on an
uploaded image; for the model, the embedding map of a dataset, each point linked to its image.

The dataset is the model's own when it is a named one (``train_settings['data']``: the bundled
digits, lfw_faces ...), its held-out split; otherwise the photos of the server's index
(``cnnlab serve --index``), labelled by their class folders where those are the model's
classes. Without either, a model has no patches or map here. Results are computed once and
kept: a visualisation per filter, the patches per layer, the map per model.
"""

from __future__ import annotations

import base64
import io
import threading

import numpy as np

from cnnlab.serve.api import ApiError, ServedModel, encode_activation, is_count, uploaded_image, user_errors

#: dataset images the patches and the embedding map are drawn from
SAMPLE_IMAGES = 500


def png_base64(image: np.ndarray) -> str:
    """``(H, W, 1 or 3)`` floats in [0, 1] as a base64 PNG (greyscale or RGB)."""
    from PIL import Image
    pixels = np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)
    picture = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class InsideService:
    """What ``/api/inside/*`` answers, per served model; ``photos``: the server's photo index
    (``tasks.search.Index``), the dataset of a model trained on a folder."""

    def __init__(self, photos=None):
        self.photos = photos
        self._cache: dict = {}
        self._lock = threading.Lock()

    def _kept(self, key, make):
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        value = make()
        with self._lock:
            return self._cache.setdefault(key, value)

    # --- the dataset ----------------------------------------------------------------------
    def images(self, served: ServedModel):
        """``(images (N, H, W, C), labels (N,), where they come from)``, or None."""
        return self._kept(("images", served.name), lambda: self._load_images(served))

    def _load_images(self, served: ServedModel):
        from cnnlab.data import datasets
        model = served.model
        name = model.metadata.get("train_settings", {}).get("data")
        if name in datasets.NAMES:
            try:
                _, (x, y) = datasets.load(name)
            except Exception:                  # noqa: BLE001 - an extra it needs is missing
                x = None
            if x is not None:
                x = datasets.as_model_input(x[:SAMPLE_IMAGES]).astype(model.dtype)
                if x.shape[1:] == tuple(model.input_shape):
                    return x, np.asarray(y[:SAMPLE_IMAGES]).reshape(-1).astype(int), \
                        f"{name}'s held-out split"
        return self._index_photos(served) if self.photos is not None else None

    def _index_photos(self, served: ServedModel):
        """Up to ``SAMPLE_IMAGES`` photos of the index (spread evenly over it), prepared for the
        model; labelled by class folder (-1 where the folder is not one of its classes)."""
        import os

        from cnnlab.data.pictures import class_names, image_for_model, open_image
        names = class_names(served.model)
        chosen = np.unique(np.linspace(0, len(self.photos) - 1, SAMPLE_IMAGES).astype(int))
        images, labels = [], []
        for i in chosen:
            relative = self.photos.paths[i]
            try:
                with user_errors():
                    picture = open_image(os.path.join(self.photos.root, relative))
                    images.append(image_for_model(served.model, picture))
            except ApiError:                         # gone or unreadable since indexing
                continue
            folder = os.path.basename(os.path.dirname(relative))
            labels.append(names.index(folder) if folder in names else -1)
        if not images:
            return None
        return (np.stack(images).astype(served.model.dtype), np.array(labels),
                f"{len(images)} photos of the index ({self.photos.root})")

    def _require_images(self, served):
        found = self.images(served)
        if found is None:
            raise ApiError(404, f"{served.name} was not trained on a dataset this server has "
                                f"(a named one such as mnist_sample), and the server has no "
                                f"photo index: start cnnlab serve --index INDEX to draw "
                                f"patches and the map from your photos.")
        return found

    # --- answers --------------------------------------------------------------------------
    def layers(self, served: ServedModel) -> dict:
        from cnnlab.viz import attribution, inside
        from cnnlab.viz.inside import centre_field
        rows = []
        for name in inside.conv_layers(served.model):
            node = attribution.target_node(served.model, name)
            field = attribution.receptive_field(node)
            box, small = centre_field(served.model, name)
            rows.append({"name": name, "type": type(node.layer).__name__,
                         "shape": list(node.outputs[0].shape[1:]),
                         "filters": int(node.outputs[0].shape[-1]),
                         "receptive_field": [axis[2] for axis in field],
                         "shows": "centre" if small else "mean"})
        found = self.images(served)
        return {"model": served.name, "layers": rows,
                "dataset": found[2] if found else None,
                "input_shape": list(served.model.input_shape)}

    def _layer(self, served, layer: str):
        from cnnlab.viz import inside
        names = inside.conv_layers(served.model)
        if layer not in names:
            raise ApiError(404, f"{served.name} has no conv layer {layer!r}; it has {names}.")
        return layer

    def _filter(self, served, layer: str, value: str) -> int:
        from cnnlab.viz import attribution
        count = attribution.target_node(served.model, layer).outputs[0].shape[-1]
        if not is_count(value) or not 0 <= int(value) < count:
            raise ApiError(400, f"'filter' must be 0 to {count - 1} for {layer}. Received: "
                                f"{value!r}")
        return int(value)

    def filter(self, served: ServedModel, layer: str, value: str) -> dict:
        """The filter's visualisation and its top patches."""
        layer = self._layer(served, layer)
        index = self._filter(served, layer, value)
        return {"model": served.name, "layer": layer, "filter": index,
                **self._kept(("visual", served.name, layer, index),
                             lambda: self._visualise(served, layer, index)),
                "patches": self._patches(served, layer, index)}

    @staticmethod
    def _visualise(served, layer, index) -> dict:
        from cnnlab.viz.inside import filter_pictures
        images, reached, where, _ = filter_pictures(served.model, layer, [index])
        return {"visualisation": png_base64(images[0]), "where": where,
                "activation": float(reached[0]), "size": list(images.shape[1:3])}

    def _patches(self, served, layer, index) -> list[dict]:
        found = self.images(served)
        if found is None:
            return []
        every = self._kept(("patches", served.name, layer), lambda: self._all_patches(
            served, layer, found[0]))
        return every[index]

    @staticmethod
    def _all_patches(served, layer, images):
        from cnnlab.viz.patches import top_patches
        patches = top_patches(served.model, layer, images, k=8)
        return {f: [{"image": p.image, "activation": round(p.activation, 4),
                     "box": list(p.box), "png": png_base64(p.pixels)} for p in found]
                for f, found in patches.items()}

    def map(self, served: ServedModel, layer: str, value: str, body: bytes) -> dict:
        """The filter's map on an uploaded image (prepared as the model's training data was)."""
        from cnnlab.data.pictures import image_for_model
        from cnnlab.viz import attribution
        layer = self._layer(served, layer)
        index = self._filter(served, layer, value)
        with user_errors():
            x = image_for_model(served.model, uploaded_image(body))
        _, tape = served.model.run(x[None])
        node = attribution.target_node(served.model, layer)
        maps = tape.values[id(node.outputs[0])][0][..., index:index + 1]
        return {"layer": layer, "filter": index, "input": png_base64(x),
                "map": encode_activation(maps)}

    def embedding(self, served: ServedModel) -> dict:
        images, labels, source = self._require_images(served)
        from cnnlab.data.pictures import class_names
        from cnnlab.viz.embedding import embedding_map
        points = self._kept(("embedding", served.name), lambda: embedding_map(served.model,
                                                                              images))
        names = class_names(served.model)
        if (np.asarray(labels) < 0).any():
            names = [*names, "(other folder)"]
            labels = np.where(np.asarray(labels) < 0, len(names) - 1, labels)
        return {"model": served.name, "dataset": source, "classes": names,
                "method": "pca",
                "points": [{"x": round(float(px), 4), "y": round(float(py), 4),
                            "label": int(label), "image": i}
                           for i, ((px, py), label) in enumerate(zip(points, labels))]}

    def image(self, served: ServedModel, number: str) -> dict:
        images = self._require_images(served)[0]
        if not is_count(number) or int(number) >= len(images):
            raise ApiError(404, f"No image {number!r}: the dataset has {len(images)} (0 to "
                                f"{len(images) - 1}).")
        return {"image": int(number), "png": png_base64(images[int(number)])}
