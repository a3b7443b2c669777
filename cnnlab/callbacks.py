"""The public ``cnnlab.callbacks`` (Keras' ``keras.callbacks``).

The code lives in ``cnnlab.training.callbacks``.
"""

from cnnlab.training.callbacks import *  # noqa: F403
