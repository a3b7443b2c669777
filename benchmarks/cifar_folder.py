"""CIFAR-10's training JPEGs as a folder of class folders, for the benchmarks that train on it
(``recipe_vs_torch.py``, ``folder_cache.py``): the folder given, or the tarball in
``../shared/data`` extracted once under /tmp (never into the repository)."""

import os
import sys
import tarfile

SHARED_TARBALL = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                              "cifar10-train-jpeg.tar.gz")
EXTRACTED = "/tmp/cnnlab-cifar10"


def cifar_folder(path):
    """The CIFAR-10 folder: ``path``, or the shared tarball extracted once under /tmp."""
    if path:
        return path
    folder = os.path.join(EXTRACTED, "train")
    if not os.path.isdir(folder):
        if not os.path.exists(SHARED_TARBALL):
            sys.exit(f"No CIFAR-10 images: give --data FOLDER (no tarball at {SHARED_TARBALL}).")
        with tarfile.open(SHARED_TARBALL) as archive:
            archive.extractall(EXTRACTED, filter="data")
    return folder
