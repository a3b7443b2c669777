"""Ready-made networks by name: their architectures, the recipe each trains with by default, and
the weights that ship for some of them. ``find`` is the one resolver every command and task
uses for "a model by name or path".

    architectures.py   article, lenet5, simple_convnet, face_net, resnet20, cifar_vgg,
                       cifar_vgg_wide, mobilenet_small; their aliases and ``resolve``
    recipes.py         ``Recipe``: how each trains by default (the settings' one source)
    pretrained.py      the shipped weights, ``get`` (fresh or pretrained) and ``stored_weights``

>>> model = get('article')
>>> [type(layer).__name__ for layer in model.layers][:4]
['Conv2D', 'MaxPooling2D', 'Conv2D', 'MaxPooling2D']
>>> round(get('resnet20', input_shape=(32, 32, 3)).count_params() / 1e6, 2)
0.27
"""

from __future__ import annotations

import os

from cnnlab.errors import ConfigError
from cnnlab.models.transfer import backbone, with_new_head
from cnnlab.zoo.architectures import (
    ALIASES,
    AUGMENTABLE,
    AUGMENTATIONS,
    MODELS,
    article_cnn,
    cifar_vgg,
    cifar_vgg_wide,
    face_net,
    lenet5,
    mobilenet_small,
    resnet20,
    resolve,
    simple_convnet,
)
from cnnlab.zoo.architectures import closest as _closest
from cnnlab.zoo.pretrained import (
    DEFAULT_BACKBONE,
    PRETRAINED,
    get,
    pretrained_model,
    pretrained_path,
    shipped_file,
    stored_weights,
)
from cnnlab.zoo.recipes import (
    DATASET_MODELS,
    FINE_TUNE_EPOCHS,
    FINE_TUNE_FACTOR,
    OPTIMIZER_LR,
    RECIPES,
    TRANSFER_RECIPE,
    Recipe,
)

__all__ = ["ALIASES", "AUGMENTABLE", "AUGMENTATIONS", "DATASET_MODELS", "DEFAULT_BACKBONE",
           "FINE_TUNE_EPOCHS", "FINE_TUNE_FACTOR", "MODELS", "OPTIMIZER_LR", "PRETRAINED",
           "RECIPES", "TRANSFER_RECIPE", "Recipe", "article_cnn", "backbone", "cifar_vgg",
           "cifar_vgg_wide", "face_net", "find", "get", "lenet5", "load", "mobilenet_small",
           "model_help", "pretrained_model", "pretrained_path", "resnet20", "resolve",
           "shipped_file", "simple_convnet", "stored_weights", "with_new_head"]


def find(spec: str, trained: bool = True, compile: bool = False):
    """A model named the way every command and task names one, the one resolver for it:

    - the path of a ``.cnnlab`` file: that model (``compile``: with its training setup);
    - shipped weights, ``'digits'``, ``'cifar10'``, ``'faces'``: the zoo model they ship for,
      trained;
    - a zoo architecture, ``'resnet20'``, ``'article'`` and their aliases: the model with fresh
      weights, only where ``trained`` is False (``cnnlab summary``); elsewhere it has learned
      nothing to predict with, and the error says how to train it.

    Anything else is one ConfigError, the same from every command, with a did-you-mean."""
    from cnnlab.models import load_model
    shipped = {weights: name for name, weights in PRETRAINED}
    if spec in shipped:
        return get(shipped[spec], weights=spec)
    if os.path.exists(spec) or spec.endswith(".cnnlab"):
        return load_model(spec, compile=compile)           # a missing file: its own error
    try:
        key = resolve(spec)
    except ConfigError:
        key = None
    if key is not None and not trained:
        return get(key)
    if key is not None:
        raise ConfigError(f"{spec!r} is an architecture with fresh weights: it has learned "
                          f"nothing yet. Train it first (cnnlab train --model {key}), or use "
                          f"shipped weights: {_shipped_list()}.")
    hint = _closest(spec.lower(), [*shipped, *MODELS, *ALIASES] if not trained else shipped)
    raise ConfigError(f"No model {spec!r}: it is not a .cnnlab file, nor shipped weights "
                      f"({_shipped_list()})"
                      + ("" if trained else f", nor a zoo architecture ({sorted(MODELS)})")
                      + (f". Did you mean {hint!r}?" if hint else "."))


def _shipped_list() -> str:
    return ", ".join(f"{weights!r} ({name})" for name, weights in PRETRAINED)


def model_help(trained: bool = True) -> str:
    """What a command's model argument takes (``find``), for its help text."""
    shipped = ", ".join(weights for _, weights in PRETRAINED)
    return (f"a .cnnlab file or shipped weights ({shipped})"
            + ("" if trained else f", or a zoo architecture ({', '.join(MODELS)})"))


def load(spec: str):
    """A trained model by shipped weights' name or ``.cnnlab`` path: ``find(spec)``, under the
    name the sequel's scripts and tests use."""
    return find(spec)

