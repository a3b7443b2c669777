"""The public ``cnnlab.metrics`` (Keras' ``keras.metrics``).

The code lives in ``cnnlab.training.metrics``.
"""

from cnnlab.training.metrics import *  # noqa: F403
