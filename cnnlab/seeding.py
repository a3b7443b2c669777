"""Where cnnlab's randomness comes from: one global ``np.random.Generator``.

Weight initialisation, dropout masks and shuffling all draw from generators seeded from this one,
so ``set_random_seed(s)`` before building a model makes the whole training run repeat bit for bit.
"""

from __future__ import annotations

import random

import numpy as np

_global = np.random.default_rng()


def set_random_seed(seed: int) -> None:
    """Seed cnnlab (and Python's ``random``) so a run repeats exactly on the same machine."""
    global _global
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        from cnnlab.errors import ConfigError
        raise ConfigError(f"seed must be a non-negative int. Received: seed={seed!r}")
    _global = np.random.default_rng(int(seed))
    random.seed(int(seed))


def global_generator() -> np.random.Generator:
    return _global


def new_generator(seed: int | None = None) -> np.random.Generator:
    """A generator of its own: from ``seed`` if given, else seeded from the global generator."""
    if seed is None:
        seed = int(_global.integers(2**63))
    return np.random.default_rng(seed)
