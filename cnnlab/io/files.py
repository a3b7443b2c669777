"""The zip-of-.npy container cnnlab's files use, written atomically (``cnnlab.atomic``) and read
without pickle.

Safe reading: every ``.npy`` header is parsed and checked (dtype, shape, size against caps and
against the bytes really present) *before* any array is allocated, object dtypes are refused, and
nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
import zlib

import numpy as np

from cnnlab.atomic import atomic_write
from cnnlab.errors import ModelFileError

# Everything zipfile and the .npy header parser raise on damaged bytes (found by fuzzing: a
# flipped bit in a zip header can surface as NotImplementedError or struct.error, for example).
# All of them mean "this file is corrupt"; MemoryError and KeyboardInterrupt are not among them.
CORRUPT_FILE_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError,
                       NotImplementedError, RuntimeError, struct.error, zlib.error, KeyError,
                       IndexError, TypeError, OverflowError, SyntaxError)

ALLOWED_DTYPES = {np.dtype(t) for t in ("float32", "float64", "int64", "int32", "uint8")}
MAX_ENTRIES = 10_000
MAX_JSON_BYTES = 16 * 2**20


def json_array(obj) -> np.ndarray:
    """JSON stored as a uint8 array, so the whole file is plain .npy members."""
    return np.frombuffer(json.dumps(obj).encode("utf-8"), dtype=np.uint8)


def write_archive(path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``{name: array}`` as a zip of ``name.npy`` members (an .npz), atomically."""
    with atomic_write(path) as handle:
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED) as archive:
            for name, array in arrays.items():
                with archive.open(name + ".npy", "w", force_zip64=True) as member:
                    array = np.asarray(array)       # (ascontiguousarray would make 0-d 1-d)
                    np.lib.format.write_array(member, array if array.flags.c_contiguous
                                              else array.copy(), allow_pickle=False)


class ArchiveReader:
    """Reads members of a file written by :func:`write_archive`, checking everything."""

    def __init__(self, path, what: str = "model file"):
        self.path, self.what = os.fspath(path), what
        if not os.path.exists(self.path):
            raise ModelFileError(f"No {what} at {self.path!r}.")
        if os.path.isdir(self.path):
            raise ModelFileError(f"{self.path!r} is a folder; expected a {what}.")
        try:
            self._zip = zipfile.ZipFile(self.path)
            infos = self._zip.infolist()
        except CORRUPT_FILE_ERRORS as exc:
            raise ModelFileError(f"{self.path!r} is not a valid {what} (truncated or corrupt: "
                                 f"{exc}).") from None
        if len(infos) > MAX_ENTRIES:
            raise ModelFileError(f"{self.path!r} has {len(infos)} entries; a {what} has at most "
                                 f"{MAX_ENTRIES}.")
        self.sizes = {info.filename[:-4]: info.file_size for info in infos
                      if info.filename.endswith(".npy")}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._zip.close()

    def names(self) -> list[str]:
        return list(self.sizes)

    def header(self, name: str):
        """``(shape, dtype)`` of a member, from its header alone."""
        with self._open(name) as member:
            return self._read_header(member, name)[:2]

    def array(self, name: str, expected_shape=None, max_bytes: int | None = None) -> np.ndarray:
        """Read one member; its shape must equal ``expected_shape`` when one is given, and its
        size stay within ``max_bytes``: both are checked from the header, before reading."""
        try:
            with self._open(name) as member:
                shape, dtype, nbytes = self._read_header(member, name)
                if expected_shape is not None and shape != tuple(expected_shape):
                    raise ModelFileError(f"{self.path!r}: {name!r} has shape {shape}; the model "
                                         f"needs {tuple(expected_shape)}.")
                if max_bytes is not None and nbytes > max_bytes:
                    raise ModelFileError(f"{self.path!r}: {name!r} is {nbytes:,} bytes; at most "
                                         f"{max_bytes:,} are allowed there.")
                data = member.read(nbytes)
        except ModelFileError:
            raise
        except CORRUPT_FILE_ERRORS as exc:
            raise ModelFileError(f"{self.path!r}: entry {name!r} is corrupt ({exc}).") from None
        if len(data) != nbytes:
            raise ModelFileError(f"{self.path!r}: entry {name!r} is truncated ({len(data)} of "
                                 f"{nbytes} bytes).")
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()

    def json(self, name: str):
        raw = self.array(name, max_bytes=MAX_JSON_BYTES)
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise ModelFileError(f"{self.path!r}: entry {name!r} is not a JSON document.")
        try:
            return json.loads(raw.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFileError(f"{self.path!r}: entry {name!r} is not valid JSON ({exc}).") \
                from None

    def _open(self, name):
        if name not in self.sizes:
            raise ModelFileError(f"{self.path!r} has no entry {name!r}; is it a {self.what}?")
        try:
            return self._zip.open(name + ".npy")
        except CORRUPT_FILE_ERRORS as exc:
            raise ModelFileError(f"{self.path!r}: entry {name!r} is corrupt ({exc}).") from None

    def _read_header(self, member, name):
        try:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except CORRUPT_FILE_ERRORS as exc:
            raise ModelFileError(f"{self.path!r}: entry {name!r} has a corrupt header ({exc}).") \
                from None
        if dtype not in ALLOWED_DTYPES or fortran:
            raise ModelFileError(f"{self.path!r}: entry {name!r} has dtype {dtype}"
                                 f"{' in Fortran order' if fortran else ''}; expected one of "
                                 f"{sorted(str(d) for d in ALLOWED_DTYPES)}.")
        count = int(np.prod(shape, dtype=np.float64)) if shape else 1
        nbytes = count * dtype.itemsize
        if nbytes > self.sizes[name]:       # the header claims more data than the entry holds
            raise ModelFileError(f"{self.path!r}: entry {name!r} claims shape {shape} "
                                 f"({nbytes:,} bytes) but holds only {self.sizes[name]:,} bytes.")
        return tuple(shape), dtype, nbytes


