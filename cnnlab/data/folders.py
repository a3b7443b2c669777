""""A data-set of your own": a folder with one subfolder of images per class.

    data/
      cats/  a.jpg  b.png ...
      dogs/  c.jpg  ...

``image_dataset_from_directory`` has Keras' signature and semantics (classes are the subfolders
in sorted order; images come as float32 in [0, 255]) and streams: only the file list is in
memory, and a background thread decodes the next batches while the model trains on this one.
Decoding goes through Pillow (PNG, JPEG, BMP, GIF, WebP), with EXIF rotation applied and
decompression bombs refused.
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cnnlab.errors import ConfigError, DataError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
_CHANNELS = {"grayscale": 1, "rgb": 3, "rgba": 4}
_INTERPOLATION = {"bilinear": "BILINEAR", "nearest": "NEAREST", "bicubic": "BICUBIC",
                  "area": "BOX", "lanczos": "LANCZOS"}


def decode(path, color_mode: str, image_size, interpolation: str) -> np.ndarray:
    """One file -> float32 ``(H, W, C)`` in [0, 255]."""
    from PIL import Image

    from cnnlab.data.pictures import open_image, to_gray
    image = open_image(path)
    if color_mode == "grayscale":
        image = Image.fromarray((to_gray(image) * 255).round().astype(np.uint8))
    else:
        image = image.convert("RGB" if color_mode == "rgb" else "RGBA")
    resample = getattr(Image, _INTERPOLATION[interpolation])
    image = image.resize((image_size[1], image_size[0]), resample)
    array = np.asarray(image, dtype=np.float32)
    return array[..., None] if array.ndim == 2 else array


def conversion_notes(paths, color_mode: str, image_size, sample: int = 24) -> list[str]:
    """One line for each way the files differ from what the batches will be: their colour (a
    greyscale folder for an RGB model, or the reverse) and their size. Reads the headers of up to
    ``sample`` files spread over the list (Pillow decodes nothing to tell mode and size)."""
    from PIL import Image
    picked = [paths[i] for i in np.linspace(0, len(paths) - 1, min(sample, len(paths)), dtype=int)]
    modes, sizes = set(), set()
    for path in picked:
        try:
            with Image.open(path) as image:
                modes.add("grayscale" if image.mode in ("1", "L", "LA", "I", "I;16", "F")
                          else "rgba" if "A" in image.mode else "rgb")
                sizes.add((image.height, image.width))
        except Exception:       # unreadable files are reported once, when a batch decodes them
            continue
    notes = []
    colour = {"grayscale": "greyscale", "rgb": "RGB", "rgba": "RGBA"}
    others = sorted(modes - {color_mode})
    if others:
        notes.append(f"Converting {' and '.join(colour[m] for m in others)} images to "
                     f"{colour[color_mode]} (color_mode={color_mode!r}).")
    wrong = sorted(sizes - {tuple(image_size)})
    if wrong:
        shown = ", ".join(f"{w}x{h}" for h, w in wrong[:3]) + (" ..." if len(wrong) > 3 else "")
        notes.append(f"Resizing images of {shown} pixels to {image_size[1]}x{image_size[0]} "
                     f"(image_size={tuple(image_size)}).")
    return notes


class ImageDataset:
    """An iterable of ``(images, labels)`` batches decoded from files, re-iterable per epoch.

    ``len(dataset)`` is the number of batches; ``class_names`` and ``file_paths`` describe it.
    """

    def __init__(self, paths, labels, class_names, label_mode, color_mode, image_size,
                 batch_size, shuffle, seed, interpolation, on_error, prefetch=2):
        self.file_paths, self._labels = list(paths), np.asarray(labels, dtype=np.int64)
        self.class_names, self.label_mode = class_names, label_mode
        self.color_mode, self.image_size = color_mode, tuple(image_size)
        self.batch_size, self.shuffle = batch_size, shuffle
        self.interpolation, self.on_error, self.prefetch = interpolation, on_error, prefetch
        self._rng = np.random.default_rng(seed)
        self._reported: set[str] = set()
        self._settings = (class_names, label_mode, color_mode, image_size, batch_size, shuffle,
                          seed, interpolation, on_error, prefetch)
        self._cached: np.ndarray | None = None      # (files, H, W, C) uint8, once .cache()d
        self._is_cached: np.ndarray | None = None   # which of them are decoded yet

    def cache(self) -> ImageDataset:
        """The same dataset, keeping every image once it is decoded, so that later epochs read
        memory instead of files (Keras' ``Dataset.cache()``, in memory), at a cost of
        ``cache_bytes``. Kept as uint8: a decoded image's values are whole numbers in [0, 255]
        (Pillow's 8-bit modes), so the float32 batches are the same. A file that fails is tried
        again each epoch, as without the cache; ``subset`` of a cached dataset starts uncached."""
        cached = ImageDataset(self.file_paths, self._labels, *self._settings)
        cached._cached = np.empty((len(self.file_paths), *self.element_shape), np.uint8)
        cached._is_cached = np.zeros(len(self.file_paths), bool)
        return cached

    @property
    def cache_bytes(self) -> int:
        """What :meth:`cache` keeps in memory once every file is decoded."""
        return len(self.file_paths) * int(np.prod(self.element_shape))

    def subset(self, indices) -> ImageDataset:
        """The same dataset over the files at ``indices`` only, in that order."""
        indices = [int(i) for i in indices]
        return ImageDataset([self.file_paths[i] for i in indices], self._labels[indices],
                            *self._settings)

    def __len__(self) -> int:
        return -(-len(self.file_paths) // self.batch_size)

    @property
    def labels(self) -> np.ndarray:
        """Every file's class index, in ``file_paths`` order."""
        return self._labels

    @property
    def element_shape(self):
        return (*self.image_size, _CHANNELS[self.color_mode])

    def _batch(self, indices):
        images, labels, failed = [], [], []
        for i in indices:
            if self._is_cached is not None and self._is_cached[i]:
                images.append(self._cached[i])
                labels.append(self._labels[i])
                continue
            try:
                image = decode(self.file_paths[i], self.color_mode, self.image_size,
                               self.interpolation)
            except DataError as exc:
                if self.on_error == "raise":
                    raise
                failed.append(str(exc))
                continue
            if self._is_cached is not None:
                self._cached[i] = image
                self._is_cached[i] = True
            images.append(image)
            labels.append(self._labels[i])
        shape = (0, *self.element_shape)
        x = np.stack(images).astype(np.float32, copy=False) if images \
            else np.zeros(shape, np.float32)
        return x, self._encode(np.asarray(labels, dtype=np.int64)), failed

    def _encode(self, labels):
        if self.label_mode == "int":
            return labels.astype(np.int32)
        if self.label_mode == "categorical":
            return np.eye(len(self.class_names), dtype=np.float32)[labels]
        if self.label_mode == "binary":
            return labels.astype(np.float32)[:, None]
        return None

    def __iter__(self):
        return self._epoch(0)

    def state(self) -> dict:
        """Where the next epoch starts: the shuffling generator's state (checkpoints keep it)."""
        return self._rng.bit_generator.state

    def epoch_from(self, state: dict, first_step: int = 0):
        """The epoch that starts at ``state`` (from :meth:`state`), from batch ``first_step`` on;
        the batches before it are skipped without decoding. ``fit`` resumes a killed run so."""
        self._rng.bit_generator.state = state
        return self._epoch(first_step)

    def _epoch(self, first_step: int):
        order = self._rng.permutation(len(self.file_paths)) if self.shuffle \
            else np.arange(len(self.file_paths))
        batches = [order[i:i + self.batch_size]
                   for i in range(first_step * self.batch_size, len(order), self.batch_size)]
        failed_this_epoch = []
        # a background thread decodes up to `prefetch` batches ahead: memory stays bounded by
        # those few batches, whatever the folder's size
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnnlab-decode") as pool:
            pending = [pool.submit(self._batch, b) for b in batches[:self.prefetch]]
            for k in range(len(batches)):
                x, y, failed = pending.pop(0).result()
                if k + self.prefetch < len(batches):
                    pending.append(pool.submit(self._batch, batches[k + self.prefetch]))
                failed_this_epoch += failed
                if len(x):
                    yield (x, y) if self.label_mode is not None else x
        new = [f for f in failed_this_epoch if f not in self._reported]
        if new:
            self._reported.update(new)
            warnings.warn(f"Skipped {len(new)} unreadable image(s): " + "; ".join(new),
                          RuntimeWarning, stacklevel=2)

    def map(self, function):
        """A view whose batches are ``function(x, y)`` (e.g. scaling to [0, 1])."""
        return _Mapped(self, function)


class _Mapped:
    def __init__(self, source, function):
        self.source, self.function = source, function
        self.class_names = source.class_names

    def __len__(self):
        return len(self.source)

    def __iter__(self):
        return self._apply(iter(self.source))

    def state(self) -> dict:
        return self.source.state()

    def epoch_from(self, state: dict, first_step: int = 0):
        return self._apply(self.source.epoch_from(state, first_step))

    def _apply(self, batches):
        for batch in batches:
            yield self.function(*batch) if isinstance(batch, tuple) else self.function(batch)


def _scan(directory: Path, class_names):
    """(paths, labels, class names, per-class counts) from one subfolder per class."""
    if not directory.is_dir():
        raise DataError(f"No folder at {str(directory)!r}: expected one subfolder of images per "
                        f"class.")
    folders = sorted(p.name for p in directory.iterdir() if p.is_dir())
    if class_names is not None:
        missing = [c for c in class_names if c not in folders]
        if missing:
            raise DataError(f"class_names {missing} have no subfolder in {str(directory)!r}; "
                            f"found {folders}.")
        folders = list(class_names)
    if not folders:
        raise DataError(f"{str(directory)!r} has no subfolders: put each class's images in a "
                        f"subfolder named after the class.")
    paths, labels, counts = [], [], {}
    for label, name in enumerate(folders):
        found = sorted(str(Path(root) / f) for root, _, files in os.walk(directory / name)
                       for f in files if Path(f).suffix.lower() in IMAGE_EXTENSIONS)
        counts[name] = len(found)
        paths += found
        labels += [label] * len(found)
    return paths, labels, folders, counts


def files_digest(paths, directory) -> str:
    """SHA-256 of a list of image files, named relative to ``directory`` (so a moved folder
    still matches): a model records the files it held out, and evaluation checks them."""
    root = Path(directory).resolve()
    names = "\n".join(Path(p).resolve().relative_to(root).as_posix() for p in paths)
    return hashlib.sha256(names.encode()).hexdigest()


def image_dataset_from_directory(directory, labels="inferred", label_mode="int", class_names=None,
                                 color_mode="rgb", batch_size=32, image_size=(256, 256),
                                 shuffle=True, seed=None, validation_split=None, subset=None,
                                 interpolation="bilinear", on_error="warn", verbose=True):
    """Keras' function: batches of ``(images (n, H, W, C) float32 in [0, 255], labels)``.

    Args: ``label_mode`` 'int', 'categorical', 'binary' or None; ``color_mode`` 'grayscale',
    'rgb' or 'rgba'; ``validation_split`` with ``subset`` 'training', 'validation' or 'both'
    (the files are permuted with ``seed``, which is required, whether or not batches are shuffled;
    the last fraction is validation);
    ``on_error`` 'warn' (skip unreadable files, listing them once) or 'raise'.
    """
    if labels != "inferred":
        raise ConfigError("labels must be 'inferred' (one subfolder per class).")
    if label_mode not in ("int", "categorical", "binary", None):
        raise ConfigError(f"label_mode must be 'int', 'categorical', 'binary' or None. "
                          f"Received: label_mode={label_mode!r}")
    if color_mode not in _CHANNELS:
        raise ConfigError(f"color_mode must be one of {sorted(_CHANNELS)}. Received: "
                          f"color_mode={color_mode!r}")
    if interpolation not in _INTERPOLATION:
        raise ConfigError(f"interpolation must be one of {sorted(_INTERPOLATION)}. Received: "
                          f"interpolation={interpolation!r}")
    if on_error not in ("warn", "raise"):
        raise ConfigError(f"on_error must be 'warn' or 'raise'. Received: {on_error!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ConfigError(f"batch_size must be a positive int. Received: {batch_size!r}")
    if (not isinstance(image_size, (tuple, list)) or len(image_size) != 2
            or not all(isinstance(v, int) and v > 0 for v in image_size)):
        raise ConfigError(f"image_size must be (height, width). Received: {image_size!r}")
    if validation_split is not None:
        if not 0 < validation_split < 1:
            raise ConfigError(f"validation_split must be in (0, 1). Received: "
                              f"{validation_split!r}")
        if subset not in ("training", "validation", "both"):
            raise ConfigError("With validation_split, subset must be 'training', 'validation' "
                              "or 'both'.")
        if seed is None:
            raise ConfigError("With validation_split, give a seed: the split is drawn with it, "
                              "so that the training and validation subsets never overlap and "
                              "evaluation later holds out the very same files.")
    paths, label_ids, names, counts = _scan(Path(directory), class_names)
    if label_mode == "binary" and len(names) != 2:
        raise ConfigError(f"label_mode='binary' needs 2 classes; found {len(names)}: {names}.")
    empty = [name for name, n in counts.items() if n == 0]
    if empty:
        warnings.warn(f"Class folder(s) with no images: {empty}.", RuntimeWarning, stacklevel=2)
    if not paths:
        raise DataError(f"No images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in "
                        f"{str(directory)!r}.")
    if verbose:
        listing = ", ".join(f"{name} {n}" for name, n in counts.items())
        print(f"Found {len(paths)} files belonging to {len(names)} classes ({listing}).",
              file=sys.stdout)
        for line in conversion_notes(paths, color_mode, image_size):
            print(line, file=sys.stdout)
    if validation_split is not None:
        # drawn with the seed whether or not batches are shuffled: a split that followed
        # `shuffle` gave evaluation (shuffle=False) other files than training held out
        order = np.random.default_rng(seed).permutation(len(paths))
        paths = [paths[i] for i in order]
        label_ids = [label_ids[i] for i in order]
        cut = int(len(paths) * (1 - validation_split))
    make = lambda p, lab, s: ImageDataset(p, lab, names, label_mode, color_mode,  # noqa: E731
                                          image_size, batch_size, shuffle, s, interpolation,
                                          on_error)
    if validation_split is None:
        return make(paths, label_ids, seed)
    training = make(paths[:cut], label_ids[:cut], seed)
    validation = make(paths[cut:], label_ids[cut:], None if seed is None else seed + 1)
    if verbose:
        print(f"Using {cut} files for training and {len(paths) - cut} for validation.")
    return {"training": training, "validation": validation,
            "both": (training, validation)}[subset]
