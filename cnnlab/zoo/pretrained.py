"""Weights that ship inside the package, and ``get``: a zoo model fresh or with weights, as
``keras.applications`` gives one. ``stored_weights`` is the one place a weights name, ``'auto'``
or a ``.cnnlab`` path is turned into a model to copy from (``get(weights=)`` and
``cnnlab train --pretrained`` both use it)."""

from __future__ import annotations

import os

from cnnlab.errors import ConfigError
from cnnlab.models.model import Model
from cnnlab.models.transfer import backbone
from cnnlab.zoo.architectures import AUGMENTABLE, MODELS, resolve

#: Weights that ship inside the package, trained by cnnlab with ``recipes/pretrain.py`` (each
#: file's metadata says how, on what, and how well): (model, weights name) -> file in
#: ``cnnlab/weights``.
PRETRAINED = {("article", "digits"): "article-digits.cnnlab",
              ("cifar_vgg", "cifar10"): "cifar_vgg-cifar10.cnnlab",
              ("face_net", "faces"): "face_net-faces.cnnlab",
              ("face_net", "web_faces"): "face_net-web_faces.cnnlab"}


def pretrained_path(name: str, weights: str):
    """The shipped file of ``weights`` for zoo model ``name``; a clear error if none ships."""
    key = resolve(name)
    if (key, weights) not in PRETRAINED:
        shipped = ", ".join(f"{m} (weights={w!r})" for m, w in PRETRAINED)
        raise ConfigError(f"No pretrained weights {weights!r} ship for {key}; cnnlab ships: "
                          f"{shipped}. Or pass weights= the path of a .cnnlab file.")
    return str(_weights_folder().joinpath(PRETRAINED[(key, weights)]))


def _weights_folder():
    from importlib import resources
    return resources.files("cnnlab").joinpath("weights")


def shipped_file(filename: str) -> Model:
    """A model file in ``cnnlab/weights`` named by its file name alone, as a detector's file
    names the verifiers of its cascade: never a path, so a file can only point at another file
    that ships with cnnlab."""
    from cnnlab.models import load_model
    folder = _weights_folder()
    if os.path.basename(filename) != filename or not folder.joinpath(filename).is_file():
        raise ConfigError(f"{filename!r} is not a model file that ships with cnnlab.")
    return load_model(str(folder.joinpath(filename)), compile=False)


def pretrained_model(name: str, weights: str) -> Model:
    """The shipped ``weights`` of ``name`` as they were saved: the model they were trained in,
    its metadata (``pretrained``: recipe, data, accuracy) and input shape."""
    from cnnlab.models import load_model
    return load_model(pretrained_path(name, weights), compile=False)


#: the backbone a transfer run starts from when neither a model nor weights say which
DEFAULT_BACKBONE = "cifar_vgg"


def stored_weights(weights: str, name: str | None = None) -> tuple[str, str, Model]:
    """``(zoo name, weights, stored model)`` for ``weights`` given as a shipped name
    (``'cifar10'``), ``'auto'`` (``name``'s shipped weights) or the path of a ``.cnnlab`` file.
    Without ``name``, the architecture is the one the weights were trained in (the shipped
    weights' owner, the file's model name, else ``DEFAULT_BACKBONE``). A path comes back
    absolute, so that a run's record finds it from anywhere."""
    owners = {w: m for m, w in PRETRAINED}
    if weights in owners or weights == "auto":
        key = resolve(name or owners.get(weights, DEFAULT_BACKBONE))
        if weights == "auto":
            shipped = [w for m, w in PRETRAINED if m == key]
            if not shipped:
                raise ConfigError(f"No weights ship for {key}; cnnlab ships "
                                  f"{sorted(f'{m} ({w})' for m, w in PRETRAINED)}. Choose one "
                                  f"of those models, or pass the path of a .cnnlab file.")
            weights = shipped[0]
        return key, weights, pretrained_model(key, weights)
    if not os.path.isfile(weights):
        raise ConfigError(f"No file {weights!r} (expected a shipped weights name, "
                          f"{sorted(owners)}, or the path of a .cnnlab file).")
    from cnnlab.models import load_model
    stored = load_model(weights, compile=False)
    return resolve(name or stored.name), os.path.abspath(weights), stored


def get(name: str, input_shape=None, num_classes: int | None = None, augment: bool = False,
        weights: str | None = None, include_top: bool = True):
    """A zoo model, as ``keras.applications`` gives one.

    ``input_shape``   without the batch axis; default: the pretrained weights' (what they were
                      trained at), else the model's own (28x28x1 for the digit models,
                      32x32x3 for the photo models)
    ``num_classes``   the classifier's outputs (default 10, or the pretrained weights' classes)
    ``augment``       puts the recipe's flips and crops inside the model (photo models)
    ``weights``       None (fresh, seeded by ``cnnlab.utils.set_random_seed``), the name of
                      weights that ship with cnnlab (``PRETRAINED``: 'cifar10', 'digits'), or
                      the path of a ``.cnnlab`` file of the same architecture
    ``include_top``   False: the backbone only, from the input to the layer named ``features``
                      (the penultimate representation, e.g. global pooling), for a new head or
                      for embedding images

    Weights are matched by layer name, so a fully convolutional backbone takes other input
    sizes: ``get('cifar_vgg', weights='cifar10', include_top=False, input_shape=(64, 64, 3))``.
    """
    key = resolve(name)
    options = {"augment": augment} if key in AUGMENTABLE else {}
    if input_shape is not None:
        options["input_shape"] = tuple(input_shape)
    if weights is None:
        model = MODELS[key](num_classes=10 if num_classes is None else num_classes, **options)
        return model if include_top else backbone(model)
    _, _, stored = stored_weights(weights, key)
    classes = stored.output_shape[-1]
    if include_top and num_classes is not None and num_classes != classes:
        raise ConfigError(f"The weights {weights!r} of {key} classify {classes} classes; "
                          f"received num_classes={num_classes}. Pass include_top=False and put "
                          f"a head of your own on the backbone (cnnlab.zoo.with_new_head).")
    options.setdefault("input_shape", tuple(stored.input_shape))   # the size it learned at
    model = MODELS[key](num_classes=classes, **options)
    _copy_weights(stored, model, weights)
    model.metadata = dict(stored.metadata)
    return model if include_top else backbone(model)


def _copy_weights(source, target, weights) -> None:
    """Every variable of ``target`` from the one of the same name in ``source``; all checked
    before any is copied."""
    stored = dict(source.named_variables())
    pairs = []
    for name, variable in target.named_variables():
        if name not in stored:
            raise ConfigError(f"The weights {weights!r} have no {name!r}: they were saved from "
                              f"another architecture ({source.name}).")
        have, want = stored[name].value.shape, variable.value.shape
        if have != want:
            raise ConfigError(f"The weights {weights!r} hold {name!r} of shape {have}; this "
                              f"model needs {want} (input shape {target.input_shape}; the "
                              f"weights were trained on {source.input_shape}).")
        pairs.append((variable, stored[name].value))
    for variable, value in pairs:
        variable.assign(value)


