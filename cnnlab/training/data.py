"""Checks on training and inference data, and how arrays are cut into batches.

Every check runs once per ``fit``/``evaluate``/``predict`` call, before any step, so bad data is
refused with a message instead of surfacing as NaN losses or an index error mid-epoch.
"""

from __future__ import annotations

import numpy as np

from cnnlab import config
from cnnlab.errors import ConfigError, DataError, ShapeError


def check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size <= 0:
        raise ConfigError(f"batch_size must be a positive int. Received: batch_size={batch_size!r}")
    return int(batch_size)


def check_inputs(x, input_shape: tuple[int, ...] | None, where: str) -> np.ndarray:
    """``x`` must be a non-empty numeric array shaped ``(N, *input_shape)`` with no NaN/Inf."""
    if x is None:
        raise DataError(f"{where}: x is None; expected an array of shape (N, ...).")
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) \
            or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"{where}: x must be a real numeric array; received dtype {x.dtype}.")
    if x.ndim == 0 or x.shape[0] == 0:
        raise DataError(f"{where}: x is empty (shape {x.shape}); expected at least one sample.")
    if input_shape is not None and x.shape[1:] != tuple(input_shape):
        hint = ""
        if x.shape[1:] == tuple(input_shape[:-1]) and input_shape[-1] == 1:
            hint = " Add the channel axis: x[..., None] (or x.reshape(-1, *input_shape))."
        raise ShapeError(f"{where}: the model expects inputs of shape (N, "
                         f"{', '.join(map(str, input_shape))}); received x of shape "
                         f"{x.shape}.{hint}")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise DataError(f"{where}: x contains {bad} NaN or Inf values; clean or impute them "
                        f"first.")
    return x


def check_pair(x, y, where: str) -> None:
    if y is None:
        raise DataError(f"{where}: y is None; expected targets for every sample of x.")
    if len(y) != len(x):
        raise DataError(f"{where}: x has {len(x)} samples but y has {len(y)}; they must match.")


def as_float(batch: np.ndarray, dtype=None) -> np.ndarray:
    """Batches enter the network as floats (uint8 images included), as in Keras."""
    dtype = np.dtype(dtype or config.floatx())
    return batch if batch.dtype == dtype else batch.astype(dtype)


def batch_slices(n: int, batch_size: int, order: np.ndarray | None = None):
    """Index arrays (or slices) for each batch; the last batch may be smaller."""
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        yield slice(start, stop) if order is None else order[start:stop]


def is_batches(data) -> bool:
    """A dataset, generator or other iterable of batches, as opposed to arrays (Keras treats
    lists and tuples as arrays too)."""
    return (data is not None and not isinstance(data, (np.ndarray, list, tuple, dict, str, bytes))
            and hasattr(data, "__iter__"))
