"""Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017), Keras' ``fashion_mnist.load_data()``:
70,000 28x28 greyscale images of 10 kinds of clothing, in MNIST's IDX format.

``path``: a folder with the four IDX files, or an npz with x_train, y_train, x_test, y_test.
"""

from __future__ import annotations

from cnnlab.data.datasets.mnist import load_idx_family

FILES = {
    "train-images-idx3-ubyte.gz": "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
    "train-labels-idx1-ubyte.gz": "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
    "t10k-images-idx3-ubyte.gz": "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
    "t10k-labels-idx1-ubyte.gz": "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
}
MIRRORS = ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
           "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"]
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot"]


def load_data(path=None):
    """``((x_train, y_train), (x_test, y_test))``, uint8 ``(N, 28, 28)`` and ``(N,)``."""
    return load_idx_family(path, FILES, MIRRORS, "fashion_mnist")
