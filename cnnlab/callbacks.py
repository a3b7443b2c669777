"""The public ``cnnlab.callbacks`` (Keras' ``keras.callbacks``).

The code lives in ``cnnlab.training.callbacks``.
"""

from cnnlab.training.callbacks import *  # noqa: F403
from cnnlab.training.callbacks import __all__  # noqa: F401  (what the star brings, and only that)
