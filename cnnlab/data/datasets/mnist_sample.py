"""10,000 real MNIST digits bundled with cnnlab, split 8,000 for training and 2,000 for testing.

Source: the MNIST database of handwritten digits, Yann LeCun, Corinna Cortes and Christopher
J.C. Burges, http://yann.lecun.com/exdb/mnist/, licensed CC BY-SA 3.0. The bundled file holds the
first 10,000 images of its training set, unchanged (uint8, 28 x 28, white digit on black).

>>> (x_train, y_train), (x_test, y_test) = load_data()
>>> x_train.shape, x_train.dtype, x_test.shape
((8000, 28, 28), dtype('uint8'), (2000, 28, 28))
"""

from __future__ import annotations

from importlib import resources

import numpy as np

NUM_TRAIN = 8000
CLASS_NAMES = [str(d) for d in range(10)]


def load_data():
    """``((x_train, y_train), (x_test, y_test))``: uint8 images ``(N, 28, 28)``, uint8 labels.

    The split is fixed (the first 8,000 / the last 2,000), so results are comparable across runs.
    """
    with resources.files("cnnlab.data.datasets").joinpath("data/mnist_sample.npz").open("rb") as fh:
        with np.load(fh, allow_pickle=False) as data:
            x, y = data["x"], data["y"]
    return (x[:NUM_TRAIN], y[:NUM_TRAIN]), (x[NUM_TRAIN:], y[NUM_TRAIN:])
