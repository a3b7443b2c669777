"""Keras' ``utils``: ``to_categorical``, ``set_random_seed``, ``image_dataset_from_directory``,
``clear_session``."""

from __future__ import annotations

import numpy as np

from cnnlab.data.folders import image_dataset_from_directory
from cnnlab.errors import DataError
from cnnlab.layers.base import reset_names
from cnnlab.seeding import set_random_seed

__all__ = ["to_categorical", "set_random_seed", "image_dataset_from_directory", "clear_session"]


def clear_session() -> None:
    """Automatic layer names start again (``conv2d``, not ``conv2d_1``), as after Keras'
    ``clear_session()``. Files are matched by layer name, so building the same unnamed model
    twice in one process and loading the first one's weights into the second needs this
    between the two builds. Models already built keep their names."""
    reset_names()


def to_categorical(y, num_classes: int | None = None, dtype="float32") -> np.ndarray:
    """Integer labels ``(N,)`` -> one-hot ``(N, num_classes)``.

    >>> to_categorical([0, 2], 3)
    array([[1., 0., 0.],
           [0., 0., 1.]], dtype=float32)
    """
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"to_categorical expects labels of shape (N,); received {y.shape}.")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.number) or np.any(y != np.round(y)):
            raise DataError("to_categorical expects integer labels.")
    y = y.astype(np.int64)
    if num_classes is None:
        num_classes = int(y.max()) + 1 if y.size else 0
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"to_categorical: labels must be in [0, {num_classes}); received "
                        f"{int(y.min())} to {int(y.max())}.")
    out = np.zeros((len(y), num_classes), dtype=dtype)
    out[np.arange(len(y)), y] = 1
    return out
