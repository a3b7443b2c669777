"""Keras' ``keras.mixed_precision`` names for the dtype policy, whose home is ``cnnlab.config``
(``set_dtype_policy``, ``dtype_policy``: Keras 3's ``keras.config`` names).

>>> import cnnlab
>>> cnnlab.mixed_precision.set_global_policy("mixed_bfloat16")
>>> layer = cnnlab.layers.Dense(10)
>>> layer.compute_dtype, layer.variable_dtype
('bfloat16', 'float32')
>>> cnnlab.mixed_precision.set_global_policy(None)       # back to floatx's
"""

from cnnlab.config import DTypePolicy, dtype_policy, set_dtype_policy

__all__ = ["Policy", "DTypePolicy", "set_global_policy", "global_policy"]

#: Keras 2's name for it
Policy = DTypePolicy


def set_global_policy(policy) -> None:
    """The policy of the layers made from now on (``config.set_dtype_policy``)."""
    set_dtype_policy(policy)


def global_policy() -> DTypePolicy:
    """The policy new layers get (``config.dtype_policy``)."""
    return dtype_policy()
