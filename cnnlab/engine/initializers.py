"""Weight initializers, Keras semantics, each drawn from an explicit ``np.random.Generator``.

Fans follow Keras: a conv kernel ``(KH, KW, C, F)`` has ``fan_in = KH*KW*C`` and
``fan_out = KH*KW*F``; a dense kernel ``(D_in, D_out)`` has ``fan_in = D_in``, ``fan_out = D_out``.
"""

from __future__ import annotations

import numpy as np

from cnnlab.errors import ConfigError


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a kernel shape."""
    if len(shape) < 2:
        return (shape[0], shape[0]) if shape else (1, 1)
    receptive_field = int(np.prod(shape[:-2]))
    return shape[-2] * receptive_field, shape[-1] * receptive_field


def glorot_uniform(shape, rng: np.random.Generator, dtype="float32") -> np.ndarray:
    """``U(-l, l)`` with ``l = sqrt(6 / (fan_in + fan_out))``: keeps the activations' variance
    roughly equal going forward and the gradients' going backward (Glorot & Bengio, 2010)."""
    fan_in, fan_out = fans(shape)
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(dtype)


def _truncated_normal(shape, rng: np.random.Generator, std: float, dtype) -> np.ndarray:
    """Normal draws beyond 2 std redrawn; the 0.8796... factor is the std of a unit normal
    truncated at +-2, so the result has the intended std (Keras' VarianceScaling)."""
    values = rng.standard_normal(size=shape)
    outside = np.abs(values) > 2
    while outside.any():
        values[outside] = rng.standard_normal(size=int(outside.sum()))
        outside = np.abs(values) > 2
    return (values * (std / 0.87962566103423978)).astype(dtype)


def he_normal(shape, rng: np.random.Generator, dtype="float32") -> np.ndarray:
    """Truncated normal with ``std = sqrt(2 / fan_in)``, as Keras: ReLU zeroes half the inputs,
    so the variance is doubled to compensate (He et al., 2015)."""
    return _truncated_normal(shape, rng, np.sqrt(2.0 / fans(shape)[0]), dtype)


def he_uniform(shape, rng: np.random.Generator, dtype="float32") -> np.ndarray:
    """``U(-l, l)`` with ``l = sqrt(6 / fan_in)``: He's variance ``2 / fan_in``, uniformly."""
    limit = np.sqrt(6.0 / fans(shape)[0])
    return rng.uniform(-limit, limit, size=shape).astype(dtype)


def lecun_normal(shape, rng: np.random.Generator, dtype="float32") -> np.ndarray:
    """Truncated normal with ``std = sqrt(1 / fan_in)`` (LeCun et al., 1998; what SELU wants)."""
    return _truncated_normal(shape, rng, np.sqrt(1.0 / fans(shape)[0]), dtype)


def orthogonal(shape, rng: np.random.Generator, dtype="float32") -> np.ndarray:
    """A (semi-)orthogonal matrix, as Keras: the kernel flattened to ``(prod(shape[:-1]),
    shape[-1])`` has orthonormal columns (or rows, when there are fewer rows), from the QR
    decomposition of a normal draw with the signs fixed so the result is uniformly
    distributed (Saxe et al., 2014)."""
    rows, cols = int(np.prod(shape[:-1])) if len(shape) > 1 else 1, shape[-1]
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    q = q if rows >= cols else q.T
    return q.reshape(shape).astype(dtype)


def zeros(shape, rng: np.random.Generator | None = None, dtype="float32") -> np.ndarray:
    return np.zeros(shape, dtype=dtype)


def ones(shape, rng: np.random.Generator | None = None, dtype="float32") -> np.ndarray:
    return np.ones(shape, dtype=dtype)


INITIALIZERS = {"glorot_uniform": glorot_uniform, "he_normal": he_normal,
                "he_uniform": he_uniform, "lecun_normal": lecun_normal, "orthogonal": orthogonal,
                "zeros": zeros, "ones": ones}


def get(name: str):
    """Look an initializer up by its Keras name."""
    if callable(name):
        return name
    try:
        return INITIALIZERS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"Unknown initializer {name!r}. Expected one of "
                          f"{sorted(INITIALIZERS)}.") from None
