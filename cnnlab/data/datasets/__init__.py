"""Datasets with Keras' ``load_data()`` signatures, and :func:`load` for the command line.

``mnist_sample`` ships inside the package: 10,000 real MNIST digits, so everything works offline.
"""

from __future__ import annotations

import os

import numpy as np

from cnnlab.data.datasets import cifar10, fashion_mnist, lfw_faces, mnist, mnist_sample
from cnnlab.errors import DataError

__all__ = ["DEFAULT", "mnist_sample", "mnist", "fashion_mnist", "cifar10", "lfw_faces", "load", "NAMES",
           "class_names"]

#: what a run trains on when it names no data: the digits that ship inside the package
DEFAULT = "mnist_sample"
NAMES = {"mnist_sample": mnist_sample, "mnist": mnist, "fashion_mnist": fashion_mnist,
         "cifar10": cifar10, "lfw_faces": lfw_faces}


def class_names(spec: str, count: int) -> list[str]:
    """A named dataset's class names (``CLASS_NAMES``), an ``.npz``'s ``class_names`` array,
    else '0', '1', ..."""
    names = getattr(NAMES.get(spec), "CLASS_NAMES", None)
    if names is None and spec not in NAMES and _is_zip(spec):
        names = _npz_class_names(spec, count)
    return list(names) if names and len(names) == count else [str(i) for i in range(count)]


def _npz_class_names(path: str, count: int) -> list[str] | None:
    """The ``class_names`` an ``.npz`` dataset carries (one string per label), or None."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "class_names" not in data.files:
                return None
            names = data["class_names"]
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"Cannot read {path!r} as an .npz dataset ({exc}).") from None
    if names.ndim != 1 or names.dtype.kind not in "US" or len(names) != count:
        raise DataError(f"{path!r}: class_names should be {count} strings, one per label "
                        f"0..{count - 1}; it holds {names.dtype} of shape {names.shape}.")
    return [str(name) for name in names]


def _is_zip(path) -> bool:
    """An .npz is a zip: it starts with a zip's local file header."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def load(spec: str):
    """``((x_train, y_train), (x_test, y_test))`` from a dataset name or an ``.npz`` path.

    An ``.npz`` holds ``x_train, y_train, x_test, y_test`` (or just ``x, y``, of which the last
    20% become the test split), and may hold ``class_names`` (one string per label, which a
    model trained on it keeps). Images are ``(N, H, W)`` or ``(N, H, W, C)``.
    """
    if spec in NAMES:
        return NAMES[spec].load_data()
    if not os.path.exists(spec):
        raise DataError(f"Unknown dataset {spec!r}: expected one of {sorted(NAMES)} or the path "
                        f"of an .npz file.")
    if os.path.isdir(spec) or not _is_zip(spec):
        # np.load would call any other file "pickled (object) data"; cnnlab never unpickles
        raise DataError(f"{spec!r} is not a dataset cnnlab reads: expected a dataset name "
                        f"({', '.join(sorted(NAMES))}), a folder with one subfolder of images "
                        f"per class, or an .npz of arrays (x_train, y_train, x_test, y_test).")
    try:
        with np.load(spec, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"Cannot read {spec!r} as an .npz dataset ({exc}).") from None
    if {"x_train", "y_train", "x_test", "y_test"} <= arrays.keys():
        return ((arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"]))
    if {"x", "y"} <= arrays.keys():
        cut = int(len(arrays["x"]) * 0.8)
        return ((arrays["x"][:cut], arrays["y"][:cut]), (arrays["x"][cut:], arrays["y"][cut:]))
    raise DataError(f"{spec!r} has arrays {sorted(arrays)}; expected x_train, y_train, x_test, "
                    f"y_test (or x, y).")


def as_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 images -> floats in [0, 1] with a channel axis: ``(N, H, W[, C]) -> (N, H, W, C)``."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise DataError(f"Expected images of shape (N, H, W) or (N, H, W, C); received "
                        f"{images.shape}.")
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    return (images / scale).astype(np.float32)
