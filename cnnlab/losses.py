"""The public ``cnnlab.losses`` (Keras' ``keras.losses``).

The code lives in ``cnnlab.training.losses``.
"""

from cnnlab.training.losses import *  # noqa: F403
from cnnlab.training.losses import __all__  # noqa: F401  (what the star brings, and only that)
