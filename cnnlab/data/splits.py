"""A run's data, from its recorded settings: what ``cnnlab train`` and the web app train on
(``training_data``), and what ``cnnlab evaluate`` and the report score a saved model on
(``evaluation_data``). Named datasets and ``.npz`` files come as arrays; a folder with one
subfolder of images per class streams in batches, scaled to [0, 1], with
``FOLDER_VALIDATION_SPLIT`` of it held out by the run's seed, and the held-out files recorded so
that evaluation later scores exactly those.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from cnnlab import config
from cnnlab.data import datasets
from cnnlab.data.folders import files_digest, image_dataset_from_directory
from cnnlab.errors import ConfigError

#: the share of a folder's images held out for validation (and for `cnnlab evaluate` later)
FOLDER_VALIDATION_SPLIT = 0.2
#: a folder whose decoded images (training and validation) fit this, and a quarter of the
#: machine's memory, is decoded once, in the first epoch, and kept in memory: decoding
#: CIFAR-10's 40,000 training JPEGs took 8.7 s of a core every epoch without the cache; with
#: it they take 123 MB
FOLDER_CACHE_BYTES = 1 << 30


def folder_cache_budget() -> int:
    """How many bytes of decoded images ``training_data`` keeps in memory at most."""
    memory = config.physical_memory()
    return FOLDER_CACHE_BYTES if memory is None else min(FOLDER_CACHE_BYTES, memory // 4)


def training_data(settings):
    """(train, test, input shape, class names): arrays for named and .npz datasets, streaming
    datasets (scaled to [0, 1]) for a folder of images, one subfolder per class."""
    if os.path.isdir(settings["data"]):
        size = settings["image_size"]
        train, test = image_dataset_from_directory(
            settings["data"], color_mode=settings["color_mode"], image_size=(size, size),
            batch_size=settings["batch_size"], validation_split=FOLDER_VALIDATION_SPLIT,
            subset="both",
            seed=settings["seed"])
        if train.cache_bytes + test.cache_bytes <= folder_cache_budget():
            train, test = train.cache(), test.cache()
            print(f"Keeping the decoded images in memory after the first epoch "
                  f"({(train.cache_bytes + test.cache_bytes) / 1e6:,.0f} MB).")
        names = train.class_names
        scale = lambda x, y: (x / 255.0, y)                               # noqa: E731
        return (train.map(scale), test.map(scale), train.element_shape, names)
    (x_train, y_train), (x_test, y_test) = datasets.load(settings["data"])
    x_train, x_test = datasets.as_model_input(x_train), datasets.as_model_input(x_test)
    y_train, y_test = np.asarray(y_train).reshape(-1), np.asarray(y_test).reshape(-1)
    names = datasets.class_names(settings["data"], int(max(y_train.max(), y_test.max())) + 1)
    return (x_train, y_train), (x_test, y_test), x_train.shape[1:], names


def preparation(settings: dict) -> str:
    """How a picture becomes this run's input: 'mnist' (centred white-on-black digits) for the
    digit datasets, 'plain' (only resized) where a dataset says so (``PREPROCESSING``)."""
    return getattr(datasets.NAMES.get(settings["data"]), "PREPROCESSING", "mnist")


class Evaluation(NamedTuple):
    x: np.ndarray
    y: np.ndarray
    what: str                       # one line for the user: which images these are
    files: list | None              # the image files, for a folder; None for arrays


def evaluation_data(model, path: str, spec=None, limit=None) -> Evaluation:
    """The data ``model`` (loaded from ``path``) is evaluated on.

    Without ``spec``: the test split of the named dataset the model was trained on, or, for a
    model trained on a folder, that folder's validation split. A folder: when it is the training
    folder, exactly the files training held out (rebuilt from the recorded split and seed, and
    checked against the recorded list's digest); any other folder, every image of it."""
    settings = model.metadata.get("train_settings") or {}
    trained_on = settings.get("data")
    folder_trained = model.metadata.get("preprocessing") == "resize"
    if spec is None:
        if folder_trained and not (trained_on and os.path.isdir(trained_on)):
            raise ConfigError(f"{path} was trained on the folder {trained_on!r}, which is not "
                              f"here: evaluate it with --data FOLDER (a folder of the same "
                              f"classes).")
        spec = trained_on or datasets.DEFAULT
    if os.path.isdir(spec):
        return _folder_evaluation_data(model, path, spec, limit)
    _, (x_test, y_test) = datasets.load(spec)
    x_test = datasets.as_model_input(x_test)
    if x_test.shape[1:] != tuple(model.input_shape):
        raise ConfigError(f"{path} takes images of shape {tuple(model.input_shape)}; {spec}'s "
                          f"are {x_test.shape[1:]}. Evaluate it on data like the data it was "
                          f"trained on ({trained_on or 'unknown'}).")
    return Evaluation(x_test, np.asarray(y_test).reshape(-1),
                      f"{spec}'s {len(x_test):,} test images", None)


def _folder_evaluation_data(model, path, folder, limit):
    settings = model.metadata.get("train_settings") or {}
    trained_on = settings.get("data")
    mode = {1: "grayscale", 3: "rgb", 4: "rgba"}[model.input_shape[-1]]
    options = dict(color_mode=mode, image_size=tuple(model.input_shape[:2]), shuffle=False,
                   batch_size=256, verbose=False)
    split = model.metadata.get("validation_split")
    same = trained_on and os.path.isdir(trained_on) and os.path.samefile(folder, trained_on)
    if same and split:
        images = image_dataset_from_directory(folder, validation_split=split,
                                              subset="validation", seed=settings.get("seed"),
                                              **options)
        recorded = model.metadata.get("validation_files") or {}
        if recorded and files_digest(images.file_paths, folder) != recorded.get("sha256"):
            raise ConfigError(f"{folder} has changed since {path} was trained: its validation "
                              f"split now has {len(images.file_paths):,} files that differ from "
                              f"the {recorded.get('count', 0):,} held out in training, so some "
                              f"may be training images. Evaluate on a folder of new images.")
        what = (f"the {split:.0%} validation split of {folder} it was trained with (seed "
                f"{settings.get('seed')}): {len(images.file_paths):,} images it never trained "
                f"on" + (", the same files as recorded" if recorded else ""))
    else:
        images = image_dataset_from_directory(folder, **options)
        what = f"all {len(images.file_paths):,} images of {folder}"
        total = len(images.file_paths)
        if limit is not None and total > limit:
            # a seeded sample of every class, not the files of the first class folders
            images = images.subset(np.sort(np.random.default_rng(0).permutation(total)[:limit]))
            what = f"{limit:,} of the {total:,} images of {folder}"
    x, y = materialise(images.map(lambda x, y: (x / 255.0, y)), limit or len(images.file_paths))
    return Evaluation(x, y, what, images.file_paths[:limit])


def materialise(batches, limit):
    """Up to ``limit`` samples of a stream of (x, y) batches, as two arrays."""
    xs, ys, count = [], [], 0
    for x, y in batches:
        xs.append(x)
        ys.append(y)
        count += len(x)
        if count >= limit:
            break
    return np.concatenate(xs)[:limit], np.concatenate(ys)[:limit]
