"""A training run as ``cnnlab train`` and the web app set it up, and a picture prepared the way
that run's model expects it.

    settings = run_settings(model="lenet5", epochs=2)      # DEFAULTS fill the rest
    with seeding.seeded(settings["seed"]):                 # the run's randomness, and only its
        model, train, test = new_run(settings)             # compiled, data loaded
        fit_run(model, settings, train, test, verbose=0)   # arrays or a stream of batches
    x = image_for_model(model, pil_image)                  # (H, W, C), as in training

Named datasets and ``.npz`` files come as arrays; a folder with one subfolder of images per class
streams in batches, scaled to [0, 1].
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from cnnlab import seeding, zoo
from cnnlab.errors import ConfigError
from cnnlab.graph.functional import Functional
from cnnlab.training.callbacks import Callback

#: the share of a folder's images held out for validation (and for `cnnlab evaluate` later)
FOLDER_VALIDATION_SPLIT = 0.2
#: a run's settings when nothing is given: what the run trains on, and how (``zoo.Recipe``'s
#: defaults, the only place those are written)
DEFAULTS = {"model": "article", "data": "mnist_sample", "seed": 0, "color_mode": "rgb",
            "pretrained": None, "fine_tune": 0, **zoo.Recipe().settings()}
TRAIN_SETTINGS = tuple(DEFAULTS)


def run_settings(**given) -> dict:
    """Every training setting: the ones given (None means 'not given'), then the zoo model's
    recipe, then DEFAULTS (one merge rule, ``_merged``)."""
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"Unknown training settings {unknown}; expected some of "
                          f"{list(DEFAULTS)}.")
    pretrained = given.get("pretrained")
    if pretrained is not None:
        return _transfer_settings(given)
    if given.get("model") is None and given.get("data") in zoo.DATASET_MODELS:
        given = {**given, "model": zoo.DATASET_MODELS[given["data"]]}
    recipe = zoo.RECIPES[zoo.resolve(given.get("model") or DEFAULTS["model"])].settings()
    return _merged(given, recipe)


def _merged(given: dict, recipe: dict) -> dict:
    """The one merge rule: a setting given (not None), else the recipe's, else DEFAULTS'. An
    optimizer other than the recipe's starts from its own rate (``zoo.OPTIMIZER_LR``: Adam's is
    0.001, not SGD's) unless a rate is given."""
    settings = {name: given[name] if given.get(name) is not None else recipe.get(
        name, DEFAULTS[name]) for name in TRAIN_SETTINGS}
    if settings["optimizer"] != recipe["optimizer"] and given.get("lr") is None:
        settings["lr"] = zoo.OPTIMIZER_LR[settings["optimizer"]]
    return settings


def _transfer_settings(given: dict) -> dict:
    """Settings of a transfer run (``pretrained``: a weights name, 'auto' for the model's
    shipped weights, or the path of a ``.cnnlab`` file of a zoo model; no model: the one the
    weights are for, else the CIFAR-10 backbone): ``zoo.TRANSFER_RECIPE``, and a folder's
    images resized to the size and channels the weights were trained on."""
    from cnnlab.models import load_model
    name, weights = given.get("model"), given["pretrained"]
    owners = {w: m for m, w in zoo.PRETRAINED}
    if weights not in owners and weights != "auto" and (weights.endswith(".cnnlab")
                                                         or os.sep in weights):
        if not os.path.isfile(weights):
            raise ConfigError(f"--pretrained: no file {weights!r} (expected a shipped weights "
                              f"name, {sorted(owners)}, or the path of a .cnnlab file).")
        stored = load_model(weights, compile=False)          # your own pretrained model
        name = zoo.resolve(name or stored.name)
        weights = os.path.abspath(weights)
    else:
        name = zoo.resolve(name or owners.get(weights, "cifar_vgg"))
        if weights == "auto":
            shipped = [w for m, w in zoo.PRETRAINED if m == name]
            if not shipped:
                raise ConfigError(f"--pretrained: no weights ship for {name}; cnnlab ships "
                                  f"{sorted(f'{m} ({w})' for m, w in zoo.PRETRAINED)}. Choose "
                                  f"one with --model, or pass a .cnnlab file.")
            weights = shipped[0]
        stored = zoo.pretrained_model(name, weights)         # a clear error if none ship
    height, _, channels = stored.input_shape
    # the backbone's own augmentation, if any (flips suit photos, not digits)
    augment = bool(stored.metadata.get("train_settings", {}).get("augment"))
    recipe = {**zoo.TRANSFER_RECIPE.settings(), "image_size": height, "augment": augment,
              "color_mode": "grayscale" if channels == 1 else "rgb"}
    return {**_merged(given, recipe), "model": name, "pretrained": weights}


def total_epochs(settings: dict) -> int:
    """The epochs of a run: the recipe's, then any fine-tuning ones."""
    return settings["epochs"] + (settings.get("fine_tune") or 0)


def training_data(settings):
    """(train, test, input shape, class names): arrays for named and .npz datasets, streaming
    datasets (scaled to [0, 1]) for a folder of images, one subfolder per class."""
    from cnnlab import datasets
    if os.path.isdir(settings["data"]):
        from cnnlab.utils import image_dataset_from_directory
        size = settings["image_size"]
        train, test = image_dataset_from_directory(
            settings["data"], color_mode=settings["color_mode"], image_size=(size, size),
            batch_size=settings["batch_size"], validation_split=FOLDER_VALIDATION_SPLIT,
            subset="both",
            seed=settings["seed"])
        names = train.class_names
        scale = lambda x, y: (x / 255.0, y)                               # noqa: E731
        return (train.map(scale), test.map(scale), train.element_shape, names)
    (x_train, y_train), (x_test, y_test) = datasets.load(settings["data"])
    x_train, x_test = datasets.as_model_input(x_train), datasets.as_model_input(x_test)
    y_train, y_test = np.asarray(y_train).reshape(-1), np.asarray(y_test).reshape(-1)
    names = datasets.class_names(settings["data"], int(max(y_train.max(), y_test.max())) + 1)
    return (x_train, y_train), (x_test, y_test), x_train.shape[1:], names


def new_run(settings: dict):
    """Load the data, build and compile the zoo model: ``(model, train, test)``. The model's
    metadata records the settings, the class names and how inputs were prepared. Called inside
    ``seeding.seeded(settings["seed"])``, with ``fit_run`` in the same block, so that the run
    repeats exactly and no generator outside it is touched; a ConfigError otherwise."""
    from cnnlab import losses
    if seeding.current_seed() != settings["seed"]:
        raise ConfigError(f"new_run draws the run's weights and shuffling from its seed: call it "
                          f"inside `with cnnlab.seeding.seeded({settings['seed']}):` (with "
                          f"fit_run in the same block). Current seeded block: "
                          f"{seeding.current_seed()}.")
    train, test, input_shape, names = training_data(settings)
    if settings.get("pretrained"):
        base = zoo.get(settings["model"], weights=settings["pretrained"], include_top=False,
                       input_shape=tuple(input_shape))
        base.trainable = False
        model = zoo.with_new_head(base, len(names), augment=settings["augment"])
    else:
        model = zoo.get(settings["model"], input_shape=tuple(input_shape),
                        num_classes=len(names), augment=settings["augment"])
    check_memory(model, settings["batch_size"])
    images = len(train[0]) if isinstance(train, tuple) else len(train.source.file_paths)
    model.compile(optimizer=make_optimizer(settings, -(-images // settings["batch_size"])),
                  loss=losses.SparseCategoricalCrossentropy(
                      label_smoothing=settings["label_smoothing"]),
                  metrics=["accuracy"])
    folder = not isinstance(train, tuple)
    model.metadata.update({"train_settings": settings, "class_names": names,
                           "input_scale": "uint8 / 255",
                           "preprocessing": "resize" if folder else preparation(settings)})
    if folder:                  # so that evaluation later holds out the very same images
        from cnnlab.utils.image_dataset import files_digest
        model.metadata["validation_split"] = FOLDER_VALIDATION_SPLIT
        model.metadata["validation_files"] = {
            "count": len(test.source.file_paths),
            "sha256": files_digest(test.source.file_paths, settings["data"])}
    return model, train, test


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
    from cnnlab import datasets
    settings = model.metadata.get("train_settings") or {}
    trained_on = settings.get("data")
    folder_trained = model.metadata.get("preprocessing") == "resize"
    if spec is None:
        if folder_trained and not (trained_on and os.path.isdir(trained_on)):
            raise ConfigError(f"{path} was trained on the folder {trained_on!r}, which is not "
                              f"here: evaluate it with --data FOLDER (a folder of the same "
                              f"classes).")
        spec = trained_on or DEFAULTS["data"]
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
    from cnnlab.utils import image_dataset_from_directory
    from cnnlab.utils.image_dataset import files_digest
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


def training_bytes(model, batch_size: int) -> int:
    """About what one training step holds: every node's output for the batch, and as much
    again for the gradients flowing back (caches and workspace come on top)."""
    elements = sum(int(np.prod(node.outputs[0].shape[1:])) for node in model.nodes)
    return 2 * elements * batch_size * np.dtype(model.dtype).itemsize


def check_memory(model, batch_size: int) -> None:
    """Refuse, with the numbers, a run whose activations alone exceed the machine's memory
    (2000x2000 images once asked NumPy for 118 GiB, mid-way, with a traceback)."""
    needed = training_bytes(model, batch_size)
    try:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):       # not a POSIX system: cannot tell
        return
    if needed > available:
        height, width = model.input_shape[:2]
        raise ConfigError(f"Training {model.name} on {height}x{width} images at batch size "
                          f"{batch_size} needs about {needed / 2**30:,.1f} GiB for its "
                          f"activations; this machine has {available / 2**30:,.1f} GiB. Use a "
                          f"smaller --image-size or --batch-size.")


def preparation(settings: dict) -> str:
    """How a picture becomes this run's input: 'mnist' (centred white-on-black digits) for the
    digit datasets, 'plain' (only resized) where a dataset says so (``PREPROCESSING``)."""
    from cnnlab import datasets
    return getattr(datasets.NAMES.get(settings["data"]), "PREPROCESSING", "mnist")


def make_optimizer(settings: dict, steps_per_epoch: int):
    """The run's optimizer: its learning rate constant, or a one-cycle schedule over every step
    of the run; decoupled weight decay."""
    from cnnlab import optimizers
    from cnnlab.zoo import FINE_TUNE_FACTOR
    lr = settings["lr"]
    if settings["schedule"] == "onecycle":
        lr = optimizers.schedules.OneCycle(lr, total_steps=total_epochs(settings)
                                           * steps_per_epoch)
    elif settings["schedule"] != "constant":
        raise ConfigError(f"Unknown schedule {settings['schedule']!r}; expected 'constant' or "
                          f"'onecycle'.")
    elif settings.get("fine_tune"):              # the fine-tuning epochs at a tenth of the rate
        lr = optimizers.schedules.PiecewiseConstantDecay(
            [settings["epochs"] * steps_per_epoch], [lr, lr * FINE_TUNE_FACTOR])
    decay = {"weight_decay": settings["weight_decay"]}
    name = settings["optimizer"]
    if name == "sgd":
        return optimizers.SGD(lr, momentum=settings["momentum"], **decay)
    kinds = {"adam": optimizers.Adam, "adamw": optimizers.AdamW, "rmsprop": optimizers.RMSprop}
    if name not in kinds:
        raise ConfigError(f"Unknown optimizer {name!r}; expected one of {['sgd', *kinds]}.")
    return kinds[name](lr, **decay)


def fit_run(model, settings: dict, train, test, **options):
    """``model.fit`` on a run's data: arrays in batches of the run's size, or a stream of batches
    (which comes batched already); ``options`` go to ``fit`` (verbose, callbacks, ...). A
    fine-tuned transfer run unfreezes its backbone when the head's epochs are done."""
    epochs = total_epochs(settings)
    if settings.get("pretrained") and settings.get("fine_tune"):
        options["callbacks"] = [*options.get("callbacks", []),
                                UnfreezeBackbone(settings["epochs"])]
    if isinstance(train, tuple):
        return model.fit(*train, batch_size=settings["batch_size"], epochs=epochs,
                         validation_data=test, **options)
    return model.fit(train, epochs=epochs, validation_data=test, **options)


class UnfreezeBackbone(Callback):
    """At the start of epoch ``at_epoch`` (and of any later one, so that a resumed run agrees),
    every nested model of the trained model becomes trainable; its BatchNormalization still runs
    in inference mode (it was called with training=False)."""

    def __init__(self, at_epoch: int):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch >= self.at_epoch:
            for layer in self.model.layers:
                if isinstance(layer, Functional) and not layer.trainable:
                    layer.trainable = True


def class_names(model) -> list[str]:
    names = model.metadata.get("class_names")
    return [str(n) for n in names] if names else [str(k) for k in range(model.output_shape[-1])]


def image_for_model(model, image, invert="auto") -> np.ndarray:
    """One picture -> the model's input ``(H, W, C)`` in [0, 1], prepared as its training data
    was: a model trained on a folder saw plain resized images; digit models saw MNIST's
    preparation (white on black, centred by centre of mass)."""
    from cnnlab.preprocess import image_to_input
    plain = model.metadata.get("preprocessing") in ("resize", "plain")
    return image_to_input(image, model.input_shape, invert=False if plain else invert,
                          centre=not plain)
