"""The public ``cnnlab.losses`` (Keras' ``keras.losses``).

The code lives in ``cnnlab.training.losses``.
"""

from cnnlab.training.losses import *  # noqa: F403
