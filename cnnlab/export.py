"""The public ``cnnlab.export``: ONNX, PyTorch and Keras weights; the code lives in
``cnnlab.io.export``."""

from cnnlab.io.export import *  # noqa: F403
from cnnlab.io.export import __all__  # noqa: F401  (what the star brings, and only that)
