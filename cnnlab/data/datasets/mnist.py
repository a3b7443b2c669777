"""MNIST, Keras' ``keras.datasets.mnist.load_data()``: 60,000 + 10,000 handwritten digits.

    (x_train, y_train), (x_test, y_test) = load_data()   # uint8 (60000, 28, 28), (60000,)

Downloaded once (sha256-checked) into ``$CNNLAB_HOME``. ``path`` takes what you already have: a
folder with the four IDX files (``.gz`` or raw), or a Keras-style ``mnist.npz``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnlab.data.datasets.download import checked_file, fetch, read_idx
from cnnlab.errors import DataError

# sha256 of the canonical files (the same digests are published in many projects' checksums)
FILES = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
MIRRORS = ["https://ossci-datasets.s3.amazonaws.com/mnist/",
           "https://storage.googleapis.com/cvdf-datasets/mnist/"]


def load_idx_family(path, files: dict[str, str], mirrors: list[str], subdir: str):
    """Shared by MNIST and Fashion-MNIST: the four IDX files, from ``path`` or the cache."""
    if path is not None and Path(path).suffix == ".npz":
        try:
            with np.load(checked_file(path), allow_pickle=False) as data:
                return ((data["x_train"], data["y_train"]), (data["x_test"], data["y_test"]))
        except (KeyError, ValueError, OSError) as exc:
            raise DataError(f"{str(path)!r} is not a Keras-style npz with x_train, y_train, "
                            f"x_test, y_test ({exc}).") from None
    arrays = []
    for name, digest in files.items():
        if path is None:
            local = fetch(name, digest, [m + name for m in mirrors], subdir)
        else:
            folder = Path(path)
            candidates = [folder / name, folder / name[:-3]]          # .gz or raw
            local = next((c for c in candidates if c.is_file()), None)
            if local is None:
                raise DataError(f"{str(folder)!r} has neither {name} nor {name[:-3]}.")
            local = checked_file(local, digest if local.suffix == ".gz" else None)
        arrays.append(read_idx(local))
    x_train, y_train, x_test, y_test = arrays
    for images, labels in ((x_train, y_train), (x_test, y_test)):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"Images {images.shape} and labels {labels.shape} do not match.")
    return (x_train, y_train), (x_test, y_test)


def load_data(path=None):
    """``((x_train, y_train), (x_test, y_test))``, uint8 ``(N, 28, 28)`` and ``(N,)``."""
    return load_idx_family(path, FILES, MIRRORS, "mnist")
