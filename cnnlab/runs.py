"""A training run as ``cnnlab train`` and the web app set it up: its settings (given, else its
model's recipe), its model and optimizer, and the fit.

    settings = run_settings(model="lenet5", epochs=2)      # the recipe fills the rest
    with seeding.seeded(settings["seed"]):                 # the run's randomness, and only its
        model, train, test = new_run(settings)             # compiled, data loaded
        fit_run(model, settings, train, test, verbose=0)   # arrays or a stream of batches

The data comes from ``cnnlab.data`` (``training_data``), the recipes and weights from
``cnnlab.zoo``.
"""

from __future__ import annotations

import numpy as np

from cnnlab import config, losses, optimizers, seeding, zoo
from cnnlab.data import datasets
from cnnlab.data.folders import files_digest
from cnnlab.data.splits import FOLDER_VALIDATION_SPLIT, preparation, training_data
from cnnlab.errors import ConfigError
from cnnlab.graph.functional import Functional
from cnnlab.models import with_new_head
from cnnlab.training.callbacks import Callback

#: a run's settings when nothing is given: what the run trains on, and how (``zoo.Recipe``'s
#: defaults, the only place those are written)
DEFAULTS = {"model": "article", "data": datasets.DEFAULT, "seed": 0, "color_mode": "rgb",
            "pretrained": None, "fine_tune": 0, "dtype_policy": "float32",
            **zoo.Recipe().settings()}
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
    try:
        name, weights, stored = zoo.stored_weights(given["pretrained"], given.get("model"))
    except ConfigError as exc:
        raise ConfigError(f"--pretrained: {exc}") from None
    height, _, channels = stored.input_shape
    # the backbone's own augmentation, if any (flips suit photos, not digits)
    augment = bool(stored.metadata.get("train_settings", {}).get("augment"))
    recipe = {**zoo.TRANSFER_RECIPE.settings(), "image_size": height, "augment": augment,
              "color_mode": "grayscale" if channels == 1 else "rgb"}
    return {**_merged(given, recipe), "model": name, "pretrained": weights}


def total_epochs(settings: dict) -> int:
    """The epochs of a run: the recipe's, then any fine-tuning ones."""
    return settings["epochs"] + (settings.get("fine_tune") or 0)


def new_run(settings: dict):
    """Load the data, build and compile the zoo model: ``(model, train, test)``. The model's
    metadata records the settings, the class names and how inputs were prepared. Called inside
    ``seeding.seeded(settings["seed"])``, with ``fit_run`` in the same block, so that the run
    repeats exactly and no generator outside it is touched; a ConfigError otherwise."""
    if seeding.current_seed() != settings["seed"]:
        raise ConfigError(f"new_run draws the run's weights and shuffling from its seed: call it "
                          f"inside `with cnnlab.seeding.seeded({settings['seed']}):` (with "
                          f"fit_run in the same block). Current seeded block: "
                          f"{seeding.current_seed()}.")
    train, test, input_shape, names = training_data(settings)
    with config.dtype_policy_scope(settings.get("dtype_policy") or DEFAULTS["dtype_policy"]):
        if settings.get("pretrained"):
            base = zoo.get(settings["model"], weights=settings["pretrained"], include_top=False,
                           input_shape=tuple(input_shape))
            base.trainable = False
            model = with_new_head(base, len(names), augment=settings["augment"])
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
        model.metadata["validation_split"] = FOLDER_VALIDATION_SPLIT
        model.metadata["validation_files"] = {
            "count": len(test.source.file_paths),
            "sha256": files_digest(test.source.file_paths, settings["data"])}
    return model, train, test


def training_bytes(model, batch_size: int) -> int:
    """About what one training step holds: every node's output for the batch, and as much
    again for the gradients flowing back (caches and workspace come on top)."""
    elements = sum(int(np.prod(node.outputs[0].shape[1:])) for node in model.nodes)
    return 2 * elements * batch_size * np.dtype(model.dtype).itemsize


def check_memory(model, batch_size: int) -> None:
    """Refuse, with the numbers, a run whose activations alone exceed the machine's memory
    (2000x2000 images once asked NumPy for 118 GiB, mid-way, with a traceback)."""
    needed = training_bytes(model, batch_size)
    available = config.physical_memory()
    if available is None:
        return
    if needed > available:
        height, width = model.input_shape[:2]
        raise ConfigError(f"Training {model.name} on {height}x{width} images at batch size "
                          f"{batch_size} needs about {needed / 2**30:,.1f} GiB for its "
                          f"activations; this machine has {available / 2**30:,.1f} GiB. Use a "
                          f"smaller --image-size or --batch-size.")


def make_optimizer(settings: dict, steps_per_epoch: int):
    """The run's optimizer: its learning rate constant, or a one-cycle schedule over every step
    of the run; decoupled weight decay."""
    lr = settings["lr"]
    if settings["schedule"] == "onecycle":
        lr = optimizers.schedules.OneCycle(lr, total_steps=total_epochs(settings)
                                           * steps_per_epoch)
    elif settings["schedule"] != "constant":
        raise ConfigError(f"Unknown schedule {settings['schedule']!r}; expected 'constant' or "
                          f"'onecycle'.")
    elif settings.get("fine_tune"):              # the fine-tuning epochs at a tenth of the rate
        lr = optimizers.schedules.PiecewiseConstantDecay(
            [settings["epochs"] * steps_per_epoch], [lr, lr * zoo.FINE_TUNE_FACTOR])
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
