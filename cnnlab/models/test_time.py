"""Test-time augmentation: a photo classifier's outputs averaged over a few views of each image,
as fast CIFAR-10 recipes score their networks (airbench, Jordan 2024, does the same two).

Images are (N, H, W, C); a view is a batch of the same shape. With ``x'`` the mirror image
(columns reversed) and ``u(x)``, ``d(x)`` the image shifted one pixel up-left and down-right
(the row and column that come in at the edge reflect their neighbours, as
``np.pad(mode='reflect')`` does):

    'flip':            p = (f(x) + f(x')) / 2
    'flip-translate':  p = (f(x) + f(x')) / 4 + (f(u x) + f(u x') + f(d x) + f(d x')) / 8

The model's own outputs are averaged (probabilities, for a softmax head). Only for what a
mirror or a one-pixel shift leaves the same class: photos, not digits or text."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from cnnlab.errors import ConfigError, DataError

#: each choice of views, and how many predictions of every image it takes
VIEWS = {"flip": 2, "flip-translate": 6}


def predict(model, x, views: str = "flip", batch_size: int = 256) -> np.ndarray:
    """The model's outputs for ``x`` (N, H, W, C), each the weighted mean over ``views``."""
    _check(model, views)
    x = _as_images(model, x)
    return np.concatenate([_averaged(model, x[i:i + batch_size], views, batch_size)
                           for i in range(0, len(x), batch_size)])


def accuracy(model, x, y=None, views: str = "flip", batch_size: int = 256) -> float:
    """Top-1 accuracy of the averaged outputs: on ``(x, y)`` arrays, or on ``x`` as batches of
    ``(images, labels)`` (an ``image_dataset_from_directory`` dataset) with ``y=None``."""
    _check(model, views)
    if y is None:
        if isinstance(x, np.ndarray) or not isinstance(x, Iterable):
            raise DataError("test_time.accuracy: give labels y with an array of images, or "
                            "batches of (images, labels) with y=None.")
        batches = x
    else:
        x, y = _as_images(model, x), np.asarray(y).reshape(-1)
        if len(y) != len(x):
            raise DataError(f"test_time.accuracy: {len(x)} images but {len(y)} labels.")
        batches = ((x[i:i + batch_size], y[i:i + batch_size])
                   for i in range(0, len(x), batch_size))
    right = seen = 0
    for images, labels in batches:
        scores = _averaged(model, _as_images(model, images), views, batch_size)
        right += int(np.sum(scores.argmax(axis=1) == np.asarray(labels).reshape(-1)))
        seen += len(scores)
    if not seen:
        raise DataError("test_time.accuracy: there are no images to score.")
    return right / seen


def weighted_views(images: np.ndarray, views: str) -> list[tuple[float, np.ndarray]]:
    """(weight, view) pairs whose weights sum to 1, per the formulas in the module docstring."""
    mirrored = images[:, :, ::-1]
    if views == "flip":
        return [(0.5, images), (0.5, mirrored)]
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    h, w = images.shape[1:3]
    up_left, down_right = padded[:, 2:, 2:], padded[:, :h, :w]
    return [(0.25, images), (0.25, mirrored),
            *((0.125, shifted) for view in (up_left, down_right)
              for shifted in (view, view[:, :, ::-1]))]


def _averaged(model, images: np.ndarray, views: str, batch_size: int) -> np.ndarray:
    total = None
    for weight, view in weighted_views(images, views):
        out = weight * model.predict(np.ascontiguousarray(view), batch_size=batch_size,
                                     verbose=0)
        total = out if total is None else total + out
    return total


def _check(model, views: str) -> None:
    if views not in VIEWS:
        raise ConfigError(f"Unknown test-time views {views!r}. Expected one of {list(VIEWS)}.")
    if len(model.inputs) != 1 or len(model.outputs) != 1 or len(model.input_shape) != 3:
        raise ConfigError(f"Test-time augmentation needs a model with one image input "
                          f"(H, W, C) and one output; {model.name} has "
                          f"{len(model.inputs)} input(s) and {len(model.outputs)} output(s), "
                          f"input shape {model.input_shape}.")


def _as_images(model, x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1:] != tuple(model.input_shape):
        raise DataError(f"Test-time augmentation takes images of shape (N, "
                        f"{', '.join(map(str, model.input_shape))}) for {model.name}; "
                        f"received {x.shape}.")
    if min(x.shape[1:3]) < 2:
        raise DataError(f"Mirroring and one-pixel shifts need images of at least 2x2 pixels; "
                        f"received {x.shape[1]}x{x.shape[2]}.")
    return x
