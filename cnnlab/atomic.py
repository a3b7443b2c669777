"""Writing a file all or nothing: data goes to a temporary file in the target's folder, is
fsync'ed, then renamed over the target. A crash leaves either the old file or the new one, never
half of one. Models, checkpoints, downloads, reports and logs are all written this way.
"""

from __future__ import annotations

import contextlib
import os
import tempfile


def _default_file_mode() -> int:
    """What open() would give a new file: 0o666 less the umask (mkstemp's 0o600 would hide
    models and reports from everyone else)."""
    current = os.umask(0)
    os.umask(current)
    return 0o666 & ~current


_FILE_MODE = _default_file_mode()


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb"):
    """``with atomic_write(path) as handle: ...``: all or nothing at ``path``. The folder must
    exist: cnnlab never creates a folder its user did not name (a typo would go unseen)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        from cnnlab.errors import ConfigError
        raise ConfigError(f"Cannot write {path!r}: there is no folder {folder!r}. Create it "
                          f"first, or choose a path in a folder that exists.")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=folder)
    try:
        os.chmod(tmp, _FILE_MODE)
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):       # make the rename itself durable
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
