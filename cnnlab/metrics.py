"""The public ``cnnlab.metrics`` (Keras' ``keras.metrics``).

The code lives in ``cnnlab.training.metrics``.
"""

from cnnlab.training.metrics import *  # noqa: F403
from cnnlab.training.metrics import __all__  # noqa: F401  (what the star brings, and only that)
