"""The public ``cnnlab.export``: ONNX, PyTorch and Keras weights; the code lives in
``cnnlab.io.export``."""

from cnnlab.io.export import *  # noqa: F403
