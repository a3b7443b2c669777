"""The public ``cnnlab.optimizers`` (Keras' ``keras.optimizers``).

The code lives in ``cnnlab.training.optimizers``.
"""

from cnnlab.training.optimizers import *  # noqa: F403
from cnnlab.training.optimizers import __all__  # noqa: F401  (what the star brings, and only that)
