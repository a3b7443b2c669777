"""Fetching dataset files once, checking them, and reading their formats without pickle.

Files go to ``$CNNLAB_HOME`` (default ``~/.cache/cnnlab``). A download streams into a temporary
file while its sha256 is computed, and is renamed into place only if the digest matches, so an
interrupted or corrupted download never passes as valid later. With no network, the error says
exactly which file to put where.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import urllib.request
from pathlib import Path

import numpy as np

from cnnlab import config
from cnnlab.atomic import atomic_write
from cnnlab.errors import DataError


def cache_dir() -> Path:
    return config.home_dir() / "datasets"


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(name: str, sha256: str, urls: list[str], subdir: str, timeout: float = 30) -> Path:
    """The checked local path of ``name``: from the cache, or downloaded from the first mirror
    that serves the right bytes."""
    target = cache_dir() / subdir / name
    if target.exists():
        if sha256_of(target) == sha256:
            return target
        target.unlink()                       # corrupt or truncated: fetch it again
    errors = []
    for url in urls:
        try:
            _download(url, target, sha256, timeout)
            return target
        except (OSError, ValueError, DataError) as exc:      # URLError is an OSError
            errors.append(f"{url}: {exc}")
    raise DataError(
        f"Could not download {name} ({'; '.join(errors)}). Without a network, copy the file "
        f"{name} (sha256 {sha256}) to {target}, where cnnlab looks first.")


def _download(url: str, target: Path, sha256: str, timeout: float) -> None:
    digest = hashlib.sha256()
    target.parent.mkdir(parents=True, exist_ok=True)          # cnnlab's own cache folder
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (https mirrors)
        total = int(response.headers.get("Content-Length") or 0) or None
        from tqdm.auto import tqdm
        with atomic_write(target) as handle, tqdm(total=total, unit="B", unit_scale=True,
                                                  desc=target.name, leave=False) as bar:
            for block in iter(lambda: response.read(1 << 16), b""):
                digest.update(block)
                handle.write(block)
                bar.update(len(block))
            if digest.hexdigest() != sha256:   # raising here discards the temporary file
                raise DataError(f"checksum mismatch (sha256 {digest.hexdigest()}, expected "
                                f"{sha256})")


def checked_file(path, sha256: str | None = None) -> Path:
    """A file the user gave: it must exist; when a digest is known, it must match."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"No file at {str(path)!r}.")
    if sha256 is not None and sha256_of(path) != sha256:
        raise DataError(f"{str(path)!r} does not have the expected sha256 {sha256}: it is "
                        f"corrupt, truncated or a different file.")
    return path


# --- formats ------------------------------------------------------------------------------------
def _open_maybe_gzip(path):
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def read_idx(path) -> np.ndarray:
    """An IDX file (MNIST's format), gzipped or raw: uint8 images ``(N, H, W)`` or labels ``(N,)``.

    Header: two zero bytes, a type byte (0x08: uint8), the number of dimensions, then each
    dimension as a big-endian uint32.
    """
    try:
        with _open_maybe_gzip(path) as handle:
            data = handle.read()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{str(path)!r} is not a readable IDX file ({exc}).") from None
    if len(data) < 4 or data[0:2] != b"\0\0" or data[2] != 0x08 or not 1 <= data[3] <= 4:
        raise DataError(f"{str(path)!r} is not an IDX file of uint8 (bad header).")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{str(path)!r} is truncated inside its header.")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    expected = int(np.prod(shape))
    body = data[4 + 4 * ndim:]
    if len(body) != expected:
        raise DataError(f"{str(path)!r} holds {len(body):,} bytes of data; its header "
                        f"{shape} needs {expected:,} (truncated or corrupt).")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape).copy()


CIFAR_RECORD = 1 + 32 * 32 * 3            # label byte, then 1024 red, 1024 green, 1024 blue


def read_cifar_batch(data: bytes, where: str):
    """One CIFAR-10 binary batch -> images ``(N, 32, 32, 3)`` uint8 (NHWC), labels ``(N,)``."""
    if not data or len(data) % CIFAR_RECORD:
        raise DataError(f"{where} is {len(data):,} bytes, not a whole number of "
                        f"{CIFAR_RECORD}-byte CIFAR records (truncated or corrupt).")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    labels = records[:, 0].copy()
    if labels.max() > 9:
        raise DataError(f"{where} has labels above 9: not CIFAR-10.")
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()  # CHW -> HWC
    return images, labels
