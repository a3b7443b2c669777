"""The public ``cnnlab.optimizers`` (Keras' ``keras.optimizers``).

The code lives in ``cnnlab.training.optimizers``.
"""

from cnnlab.training.optimizers import *  # noqa: F403
