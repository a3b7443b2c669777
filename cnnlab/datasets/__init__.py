"""``cnnlab.datasets``, as Keras names it (``cnnlab.datasets.mnist.load_data()``): the named
datasets live in ``cnnlab.data.datasets``; this name, and each submodule's, is the same module."""

import sys

from cnnlab.data import datasets as _home
from cnnlab.data.datasets import (
    NAMES,
    as_model_input,
    cifar10,
    class_names,
    download,
    fashion_mnist,
    lfw_faces,
    load,
    mnist,
    mnist_sample,
    web_faces,
)

# `import cnnlab.datasets.mnist` finds the module already imported under this name
for _module in (cifar10, download, fashion_mnist, lfw_faces, mnist, mnist_sample, web_faces):
    sys.modules[f"{__name__}.{_module.__name__.rsplit('.', 1)[1]}"] = _module

__all__ = ["NAMES", "as_model_input", "cifar10", "class_names", "download", "fashion_mnist",
           "lfw_faces", "load", "mnist", "mnist_sample", "web_faces"]
__doc__ += "\n\n" + (_home.__doc__ or "")
