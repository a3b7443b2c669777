"""cnnlab: convolutional neural networks from scratch on NumPy, with a Keras-compatible API."""

__version__ = "0.1.0"

from cnnlab import config, layers, seeding  # noqa: E402,F401
