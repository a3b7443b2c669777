"""CIFAR-10 (Krizhevsky, 2009), Keras' ``cifar10.load_data()``: 60,000 32x32 colour images in
10 classes, read from the *binary* version (never the pickled Python version).

``path``: ``cifar-10-binary.tar.gz``, or its extracted ``cifar-10-batches-bin`` folder. Images come
back NHWC uint8 ``(N, 32, 32, 3)``, labels ``(N, 1)`` as Keras returns them.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np

from cnnlab.data.datasets.download import checked_file, fetch, read_cifar_batch
from cnnlab.errors import DataError

ARCHIVE = "cifar-10-binary.tar.gz"
SHA256 = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"   # 170,052,171 bytes
MIRRORS = ["https://www.cs.toronto.edu/~kriz/",
           "https://storage.googleapis.com/s4tf-hosted-binaries/datasets/CIFAR10/"]
TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]
TEST = ["test_batch.bin"]
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]


def _read_members(archive_path) -> dict[str, bytes]:
    """The batch files' bytes, read by name from the archive (nothing is extracted to disk)."""
    wanted = set(TRAIN + TEST)
    found = {}
    try:
        with tarfile.open(archive_path, "r:gz") as archive:
            for member in archive:
                name = Path(member.name).name
                if member.isfile() and name in wanted:
                    found[name] = archive.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{str(archive_path)!r} is not a readable CIFAR-10 archive ({exc}).") \
            from None
    return found


def load_data(path=None):
    """``((x_train, y_train), (x_test, y_test))``: uint8 ``(N, 32, 32, 3)`` and ``(N, 1)``."""
    if path is not None and Path(path).is_dir():
        members = {}
        for name in TRAIN + TEST:
            members[name] = checked_file(Path(path) / name).read_bytes()
    else:
        archive = (checked_file(path, SHA256) if path is not None
                   else fetch(ARCHIVE, SHA256, [m + ARCHIVE for m in MIRRORS], "cifar10"))
        members = _read_members(archive)
    missing = [n for n in TRAIN + TEST if n not in members]
    if missing:
        raise DataError(f"The CIFAR-10 data lacks {missing}.")
    train = [read_cifar_batch(members[n], n) for n in TRAIN]
    x_test, y_test = read_cifar_batch(members[TEST[0]], TEST[0])
    x_train = np.concatenate([t[0] for t in train])
    y_train = np.concatenate([t[1] for t in train])
    return (x_train, y_train[:, None]), (x_test, y_test[:, None])
