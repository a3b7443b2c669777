"""Ready-made networks by name: the article's CNN and LeNet-5.

>>> model = get('article')
>>> [type(layer).__name__ for layer in model.layers][:4]
['Conv2D', 'MaxPooling2D', 'Conv2D', 'MaxPooling2D']
"""

from __future__ import annotations

import difflib

from cnnlab import layers
from cnnlab.errors import ConfigError
from cnnlab.models.sequential import Sequential


def article_cnn(input_shape=(28, 28, 1), num_classes: int = 10) -> Sequential:
    """The article's network: Conv2D(32, 5x5, s1, relu) -> MaxPool(2x2, s2) -> Conv2D(64, 5x5,
    relu) -> MaxPool(2x2) -> Flatten -> Dense(1000, relu) -> Dense(num_classes, softmax)."""
    return Sequential([
        layers.Input(input_shape),
        layers.Conv2D(32, kernel_size=(5, 5), strides=(1, 1), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2), strides=(2, 2)),
        layers.Conv2D(64, (5, 5), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Flatten(),
        layers.Dense(1000, activation="relu"),
        layers.Dense(num_classes, activation="softmax"),
    ], name="article_cnn")


def lenet5(input_shape=(28, 28, 1), num_classes: int = 10) -> Sequential:
    """LeNet-5 (LeCun et al., 1998) for 28x28 inputs: the first conv pads by 2 to recreate the
    original 32x32 input; tanh activations and average pooling as in the paper."""
    return Sequential([
        layers.Input(input_shape),
        layers.Conv2D(6, 5, padding=2, activation="tanh"),        # C1: 28x28x6
        layers.AveragePooling2D(2),                                # S2: 14x14x6
        layers.Conv2D(16, 5, activation="tanh"),                  # C3: 10x10x16
        layers.AveragePooling2D(2),                                # S4: 5x5x16
        layers.Flatten(),
        layers.Dense(120, activation="tanh"),                      # C5
        layers.Dense(84, activation="tanh"),                       # F6
        layers.Dense(num_classes, activation="softmax"),
    ], name="lenet5")


def simple_convnet(input_shape=(28, 28, 1), num_classes: int = 10) -> Sequential:
    """Keras' "Simple MNIST convnet" example: two 3x3 conv blocks, dropout 0.5, softmax."""
    return Sequential([
        layers.Input(input_shape),
        layers.Conv2D(32, 3, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(64, 3, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dropout(0.5),
        layers.Dense(num_classes, activation="softmax"),
    ], name="simple_convnet")


MODELS = {"article": article_cnn, "lenet5": lenet5, "simple_convnet": simple_convnet}
ALIASES = {"article_cnn": "article", "lenet": "lenet5", "lenet-5": "lenet5"}


def get(name: str, input_shape=(28, 28, 1), num_classes: int = 10) -> Sequential:
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key not in MODELS:
        hint = difflib.get_close_matches(key, [*MODELS, *ALIASES], n=1)
        hint = [ALIASES.get(h, h) for h in hint]          # suggest the real name, not an alias
        raise ConfigError(f"Unknown model {name!r}. Available: {sorted(MODELS)}"
                          + (f"; did you mean {hint[0]!r}?" if hint else "."))
    return MODELS[key](input_shape=input_shape, num_classes=num_classes)
