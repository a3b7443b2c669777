"""Where a command writes its files: one rule for every ``cnnlab`` command, checked before any
work is done (an hour of training must not end in "no such folder").

- A path the user gave (``--out``): its folder must exist, since cnnlab never creates a folder the
  user did not name; its extension must be one the command writes; and a file already there is
  replaced only with ``--overwrite``.
- A default name (``MODEL.cnnlab``, ``report.html``): when an earlier run's file is there, the
  first free ``name-2.ext``, ``name-3.ext`` ... instead, and one line says so.
"""

from __future__ import annotations

import os

from cnnlab.errors import ConfigError


def given_path(path: str, flag: str, extensions: tuple[str, ...] = (),
               overwrite: bool = False) -> str:
    """``path`` checked by the rule above; a ConfigError naming ``flag`` otherwise."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConfigError(f"{flag} {path}: there is no folder {folder!r}, and cnnlab does not "
                          f"create folders. Create it first, or choose another path.")
    if extensions and not path.lower().endswith(extensions):
        raise ConfigError(f"{flag} {path}: expected a file ending in {' or '.join(extensions)}.")
    if os.path.isdir(path):
        raise ConfigError(f"{flag} {path}: that is a folder; name the file to write.")
    if os.path.exists(path) and not overwrite:
        raise ConfigError(f"{flag} {path}: the file exists. Add --overwrite to replace it, or "
                          f"choose another name.")
    return path


def free_path(path: str, overwrite: bool, say) -> str:
    """A default ``path``, or, when an earlier run's file is there, the first free
    ``stem-2.ext``, ``stem-3.ext`` ... (never replace another run's file unasked)."""
    if overwrite or not os.path.exists(path):
        return path
    stem, ext = os.path.splitext(path)
    k = 2
    while os.path.exists(f"{stem}-{k}{ext}"):
        k += 1
    say(f"{path} holds an earlier run's file; this run writes {stem}-{k}{ext} (--out FILE or "
        f"--overwrite to choose)")
    return f"{stem}-{k}{ext}"


def output(given: str | None, default: str, flag: str, extensions: tuple[str, ...],
           overwrite: bool, say=print) -> str:
    """The file a command writes: ``given`` by the rule for given paths, else ``default`` by
    the rule for default names."""
    if given is not None:
        return given_path(given, flag, extensions, overwrite)
    return free_path(default, overwrite, say)


def image_extensions() -> tuple[str, ...]:
    """The extensions Pillow can write."""
    from PIL import Image
    Image.init()
    return tuple(sorted(ext for ext, kind in Image.registered_extensions().items()
                        if kind in Image.SAVE))
