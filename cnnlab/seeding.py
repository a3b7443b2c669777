"""Where cnnlab's randomness comes from: one global ``np.random.Generator``, or a run's own.

Weight initialisation, dropout masks and shuffling all draw from generators seeded from the
current one, so ``set_random_seed(s)`` before building a model makes the whole training run
repeat bit for bit. ``with seeded(s):`` does the same for the code inside the block alone: its
generator lives in a context variable, so the global generator, Python's ``random``, other
threads and the code after the block are left as they were. ``cnnlab train`` and the web app's
training runs use it, so running a command changes nothing the user seeded.
"""

from __future__ import annotations

import contextlib
import contextvars
import random

import numpy as np

_global = np.random.default_rng()
#: (seed, generator) of the innermost ``seeded`` block on this thread or task; None outside
_scoped: contextvars.ContextVar = contextvars.ContextVar("cnnlab_seeded", default=None)


def _checked(seed) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        from cnnlab.errors import ConfigError
        raise ConfigError(f"seed must be a non-negative int. Received: seed={seed!r}")
    return int(seed)


def set_random_seed(seed: int) -> None:
    """Seed cnnlab (and Python's ``random``) so a run repeats exactly on the same machine."""
    global _global
    seed = _checked(seed)
    _global = np.random.default_rng(seed)
    random.seed(seed)


@contextlib.contextmanager
def seeded(seed: int):
    """Inside the block, cnnlab draws from a generator of its own seeded with ``seed``, as after
    ``set_random_seed(seed)``; nothing outside the block sees it or is changed by it."""
    seed = _checked(seed)
    token = _scoped.set((seed, np.random.default_rng(seed)))
    try:
        yield
    finally:
        _scoped.reset(token)


def current_seed() -> int | None:
    """The seed of the innermost ``seeded`` block around this call; None outside any."""
    scoped = _scoped.get()
    return None if scoped is None else scoped[0]


def global_generator() -> np.random.Generator:
    """The generator cnnlab draws from now: the ``seeded`` block's, else the global one."""
    scoped = _scoped.get()
    return _global if scoped is None else scoped[1]


def new_generator(seed: int | None = None) -> np.random.Generator:
    """A generator of its own: from ``seed`` if given, else seeded from the current generator."""
    if seed is None:
        seed = int(global_generator().integers(2**63))
    return np.random.default_rng(seed)
