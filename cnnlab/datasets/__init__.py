"""Datasets with Keras' ``load_data()`` signatures.

``mnist_sample`` ships inside the package: 10,000 real MNIST digits, so everything works offline.
"""

from cnnlab.datasets import mnist_sample

__all__ = ["mnist_sample"]
