"""Ready-made networks by name, each with the recipe it trains with by default.

    article, lenet5, simple_convnet        the article's CNN and two classics, for digits
    resnet20, cifar_vgg, mobilenet_small   modern CNNs for colour photos (32x32 and up)

>>> model = get('article')
>>> [type(layer).__name__ for layer in model.layers][:4]
['Conv2D', 'MaxPooling2D', 'Conv2D', 'MaxPooling2D']
>>> round(get('resnet20', input_shape=(32, 32, 3)).count_params() / 1e6, 2)
0.27
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass

from cnnlab import layers
from cnnlab.errors import ConfigError
from cnnlab.models.model import Model
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


# --- modern CNNs for colour photos -------------------------------------------------------------
def _augmentation(inputs, augment: bool):
    """The CIFAR recipe's augmentation, inside the model (active only in training): a horizontal
    flip and a random crop of the image padded by 4 pixels (He et al., 2016)."""
    if not augment:
        return inputs
    h, w = inputs.shape[1:3]
    x = layers.RandomFlip("horizontal", seed=0)(inputs)
    return layers.RandomCrop(h, w, seed=1)(layers.ZeroPadding2D(4)(x))


def _conv_bn_relu(x, filters, strides=1, relu=True):
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                      kernel_initializer="he_normal")(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x) if relu else x


def resnet20(input_shape=(32, 32, 3), num_classes: int = 10, augment: bool = False) -> Model:
    """He et al. 2016's CIFAR ResNet v1 with n = 3 (20 layers, 0.27 M parameters): a 3x3 conv,
    then three stages of three basic blocks (16, 32 and 64 filters, the last two starting with
    stride 2 and a 1x1 projection shortcut), global average pooling and a softmax. 41 M
    multiply-adds an image at 32x32."""
    inputs = layers.Input(input_shape)
    x = _conv_bn_relu(_augmentation(inputs, augment), 16)
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(3):
            strides = 2 if stage > 0 and block == 0 else 1
            y = _conv_bn_relu(x, filters, strides)
            y = _conv_bn_relu(y, filters, relu=False)
            if strides != 1:
                x = layers.BatchNormalization()(layers.Conv2D(
                    filters, 1, strides=strides, use_bias=False,
                    kernel_initializer="he_normal")(x))
            x = layers.ReLU()(layers.Add()([x, y]))
    x = layers.GlobalAveragePooling2D(name="features")(x)
    return Model(inputs, layers.Dense(num_classes, activation="softmax")(x), name="resnet20")


def cifar_vgg(input_shape=(32, 32, 3), num_classes: int = 10, augment: bool = False) -> Model:
    """A BatchNorm VGG-style net in the spirit of airbench (Jordan, 2024): a 3x3 stem, then three
    blocks of conv -> max-pool -> BN -> ReLU -> conv -> BN -> ReLU, global max pooling. Widths
    32 / 64 / 128 (airbench uses 64 / 256 / 256 on a GPU): 0.30 M parameters and 24 M
    multiply-adds an image at 32x32, sized for a 2-core CPU."""
    inputs = layers.Input(input_shape)
    x = _conv_bn_relu(_augmentation(inputs, augment), 24)
    for filters in (32, 64, 128):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False,
                          kernel_initializer="he_normal")(x)
        x = layers.ReLU()(layers.BatchNormalization()(layers.MaxPooling2D(2)(x)))
        x = _conv_bn_relu(x, filters)
    x = layers.GlobalMaxPooling2D(name="features")(x)
    return Model(inputs, layers.Dense(num_classes, activation="softmax")(x), name="cifar_vgg")


def mobilenet_small(input_shape=(32, 32, 3), num_classes: int = 10,
                    augment: bool = False) -> Model:
    """Depthwise-separable blocks as in MobileNet (Howard et al., 2017): each a 3x3 depthwise
    conv -> BN -> ReLU, then a 1x1 conv -> BN -> ReLU; widths 64 to 256, three of them
    halving the map: 0.21 M parameters, 18 M multiply-adds an image at 32x32."""
    inputs = layers.Input(input_shape)
    x = _conv_bn_relu(_augmentation(inputs, augment), 32)
    for filters, strides in ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (256, 2)):
        x = layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False)(x)
        x = layers.ReLU()(layers.BatchNormalization()(x))
        x = layers.Conv2D(filters, 1, use_bias=False, kernel_initializer="he_normal")(x)
        x = layers.ReLU()(layers.BatchNormalization()(x))
    x = layers.Dropout(0.2)(layers.GlobalAveragePooling2D(name="features")(x))
    return Model(inputs, layers.Dense(num_classes, activation="softmax")(x),
                 name="mobilenet_small")


@dataclass(frozen=True)
class Recipe:
    """How a zoo model trains by default; `cnnlab train` options override any of it.
    ``schedule``: 'constant', or 'onecycle' (``optimizers.schedules.OneCycle`` over the run,
    peaking at ``lr``); ``augment``: flips and pad-4 random crops inside the model."""

    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    epochs: int = 5
    batch_size: int = 128
    schedule: str = "constant"
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    augment: bool = False
    image_size: int = 64                 # what a folder's images are resized to

    def describe(self) -> str:
        parts = [f"{self.optimizer} lr {self.lr:g}"
                 + (f" momentum {self.momentum:g}" if self.optimizer == "sgd" else ""),
                 f"{self.epochs} epochs", f"batch {self.batch_size}"]
        if self.schedule != "constant":
            parts.append(f"{self.schedule} schedule")
        if self.weight_decay:
            parts.append(f"weight decay {self.weight_decay:g}")
        if self.label_smoothing:
            parts.append(f"label smoothing {self.label_smoothing:g}")
        if self.augment:
            parts.append("flip + crop augmentation")
        return ", ".join(parts) + f"; folders at {self.image_size}x{self.image_size}"

    def settings(self) -> dict:
        return asdict(self)


MODELS = {"article": article_cnn, "lenet5": lenet5, "simple_convnet": simple_convnet,
          "resnet20": resnet20, "cifar_vgg": cifar_vgg, "mobilenet_small": mobilenet_small}
# The usual CIFAR recipe (SGD, momentum 0.9, L2 5e-4) in Keras 3's decoupled form: torch's L2
# term is amplified by momentum to lr * 5e-4 / (1 - 0.9) per step, which decoupled decay
# matches with weight_decay = 5e-3.
_PHOTOS = dict(optimizer="sgd", momentum=0.9, schedule="onecycle", weight_decay=5e-3,
               label_smoothing=0.1, augment=True, batch_size=128, image_size=32)
RECIPES = {"article": Recipe(), "lenet5": Recipe(), "simple_convnet": Recipe(),
           "resnet20": Recipe(lr=0.2, epochs=30, **_PHOTOS),
           "cifar_vgg": Recipe(lr=0.2, epochs=20, **_PHOTOS),
           "mobilenet_small": Recipe(lr=0.2, epochs=30, **_PHOTOS)}
ALIASES = {"article_cnn": "article", "lenet": "lenet5", "lenet-5": "lenet5"}
_AUGMENTABLE = {"resnet20", "cifar_vgg", "mobilenet_small"}


def resolve(name: str) -> str:
    """A zoo model's name from any spelling or alias; a clear error otherwise."""
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key not in MODELS:
        hint = difflib.get_close_matches(key, [*MODELS, *ALIASES], n=1)
        hint = [ALIASES.get(h, h) for h in hint]          # suggest the real name, not an alias
        raise ConfigError(f"Unknown model {name!r}. Available: {sorted(MODELS)}"
                          + (f"; did you mean {hint[0]!r}?" if hint else "."))
    return key


def get(name: str, input_shape=(28, 28, 1), num_classes: int = 10, augment: bool = False):
    """A fresh zoo model; ``augment`` puts its recipe's augmentation inside it (photo models)."""
    key = resolve(name)
    options = {"augment": augment} if key in _AUGMENTABLE else {}
    return MODELS[key](input_shape=input_shape, num_classes=num_classes, **options)
