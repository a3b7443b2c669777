"""The zoo's architectures, by name: each a function ``(input_shape, num_classes, augment)``
that builds a fresh, seeded model.

    article, lenet5, simple_convnet        the article's CNN and two classics, for digits
    face_net                               a small face / not-face classifier made to slide
    resnet20, cifar_vgg, cifar_vgg_wide,   modern CNNs for colour photos (32x32 and up)
    mobilenet_small
"""

from __future__ import annotations

import difflib

from cnnlab import layers
from cnnlab.errors import ConfigError
from cnnlab.models.model import Model
from cnnlab.models.sequential import Sequential
from cnnlab.models.transfer import photo_augmentation


def article_cnn(input_shape=(28, 28, 1), num_classes: int = 10) -> Sequential:
    """The article's network: Conv2D(32, 5x5, s1, relu) -> MaxPool(2x2, s2) -> Conv2D(64, 5x5,
    relu) -> MaxPool(2x2) -> Flatten -> Dense(1000, relu) -> Dense(num_classes, softmax)."""
    return Sequential([
        layers.Input(input_shape),
        layers.Conv2D(32, kernel_size=(5, 5), strides=(1, 1), activation="relu", name="conv1"),
        layers.MaxPooling2D(pool_size=(2, 2), strides=(2, 2), name="pool1"),
        layers.Conv2D(64, (5, 5), activation="relu", name="conv2"),
        layers.MaxPooling2D(pool_size=(2, 2), name="pool2"),
        layers.Flatten(name="flatten"),
        layers.Dense(1000, activation="relu", name="features"),
        layers.Dense(num_classes, activation="softmax", name="predictions"),
    ], name="article_cnn")


def lenet5(input_shape=(28, 28, 1), num_classes: int = 10) -> Sequential:
    """LeNet-5 (LeCun et al., 1998) for 28x28 inputs: the first conv pads by 2 to recreate the
    original 32x32 input; tanh activations and average pooling as in the paper."""
    return Sequential([
        layers.Input(input_shape),
        layers.Conv2D(6, 5, padding=2, activation="tanh", name="c1"),     # 28x28x6
        layers.AveragePooling2D(2, name="s2"),                             # 14x14x6
        layers.Conv2D(16, 5, activation="tanh", name="c3"),               # 10x10x16
        layers.AveragePooling2D(2, name="s4"),                             # 5x5x16
        layers.Flatten(name="flatten"),
        layers.Dense(120, activation="tanh", name="c5"),
        layers.Dense(84, activation="tanh", name="features"),              # F6
        layers.Dense(num_classes, activation="softmax", name="predictions"),
    ], name="lenet5")


def simple_convnet(input_shape=(28, 28, 1), num_classes: int = 10) -> Sequential:
    """Keras' "Simple MNIST convnet" example: two 3x3 conv blocks, dropout 0.5, softmax."""
    return Sequential([
        layers.Input(input_shape),
        layers.Conv2D(32, 3, activation="relu", name="conv1"),
        layers.MaxPooling2D(2, name="pool1"),
        layers.Conv2D(64, 3, activation="relu", name="conv2"),
        layers.MaxPooling2D(2, name="pool2"),
        layers.Flatten(name="features"),
        layers.Dropout(0.5, name="dropout"),
        layers.Dense(num_classes, activation="softmax", name="predictions"),
    ], name="simple_convnet")


def face_net(input_shape=(25, 25, 1), num_classes: int = 2, augment: bool = False) -> Model:
    """A small face / not-face classifier for 25x25 greyscale crops (``lfw_faces``), made to
    slide: 'valid' convolutions and a Flatten -> Dense head, which ``tasks.detect`` rewrites as
    convolutions to score every window of a photo in one pass. 48 k parameters."""
    inputs = layers.Input(input_shape, name="input")
    x = inputs
    if augment:      # a face a few pixels off, a little larger, tilted or lit otherwise is a face
        x = layers.RandomFlip("horizontal", seed=0, name="augment_flip")(x)
        x = layers.RandomTranslation(0.1, 0.1, seed=1, name="augment_shift")(x)
        x = layers.RandomZoom(0.15, seed=2, name="augment_zoom")(x)
        x = layers.RandomRotation(0.03, seed=3, name="augment_rotate")(x)
        # lfw's faces are mostly of men in dim light (mean grey 0.45); a face lit as a studio
        # portrait (the astronaut's: 0.61) is as much a face
        x = layers.RandomBrightness(0.25, value_range=(0, 1), seed=5, name="augment_brightness")(x)
        x = layers.RandomContrast(0.3, value_range=(0, 1), seed=4, name="augment_contrast")(x)
    x = layers.Conv2D(24, 3, activation="relu", name="conv1")(x)         # 23x23
    x = layers.MaxPooling2D(2, name="pool1")(x)                           # 11x11
    x = layers.Conv2D(48, 3, activation="relu", name="conv2")(x)         # 9x9
    x = layers.MaxPooling2D(2, name="pool2")(x)                           # 4x4
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(48, activation="relu", name="features")(x)
    return _classifier(inputs, layers.Dropout(0.3, name="dropout")(x), num_classes, "face_net")



# --- modern CNNs for colour photos -------------------------------------------------------------
def _conv_bn_relu(x, filters, name, strides=1, relu=True):
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                      kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _classifier(inputs, features, num_classes, name) -> Model:
    """The top every photo model shares: the ``features`` tensor (what ``include_top=False``
    keeps) into a softmax layer named ``predictions``."""
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(features)
    return Model(inputs, outputs, name=name)


def resnet20(input_shape=(32, 32, 3), num_classes: int = 10, augment: bool = False) -> Model:
    """He et al. 2016's CIFAR ResNet v1 with n = 3 (20 layers, 0.27 M parameters): a 3x3 conv,
    then three stages of three basic blocks (16, 32 and 64 filters, the last two starting with
    stride 2 and a 1x1 projection shortcut), global average pooling and a softmax. 41 M
    multiply-adds an image at 32x32."""
    inputs = layers.Input(input_shape, name="input")
    x = _conv_bn_relu(photo_augmentation(inputs, augment), 16, "stem")
    for stage, filters in enumerate((16, 32, 64), start=1):
        for block in range(1, 4):
            name = f"stage{stage}_block{block}"
            strides = 2 if stage > 1 and block == 1 else 1
            y = _conv_bn_relu(x, filters, f"{name}_1", strides)
            y = _conv_bn_relu(y, filters, f"{name}_2", relu=False)
            if strides != 1:
                x = layers.Conv2D(filters, 1, strides=strides, use_bias=False,
                                  kernel_initializer="he_normal", name=f"{name}_shortcut_conv")(x)
                x = layers.BatchNormalization(name=f"{name}_shortcut_bn")(x)
            x = layers.Add(name=f"{name}_add")([x, y])
            x = layers.ReLU(name=f"{name}_out")(x)
    features = layers.GlobalAveragePooling2D(name="features")(x)
    return _classifier(inputs, features, num_classes, "resnet20")


def _airbench_vgg(input_shape, num_classes, augment, stem, widths, name) -> Model:
    """A 3x3 stem of ``stem`` filters, then per width a block of conv -> max-pool -> BN -> ReLU
    -> conv -> BN -> ReLU, and global max pooling (airbench's layout, Jordan 2024)."""
    inputs = layers.Input(input_shape, name="input")
    x = _conv_bn_relu(photo_augmentation(inputs, augment), stem, "stem")
    for block, filters in enumerate(widths, start=1):
        block_name = f"block{block}"
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False,
                          kernel_initializer="he_normal", name=f"{block_name}_1_conv")(x)
        x = layers.MaxPooling2D(2, name=f"{block_name}_pool")(x)
        x = layers.BatchNormalization(name=f"{block_name}_1_bn")(x)
        x = layers.ReLU(name=f"{block_name}_1_relu")(x)
        x = _conv_bn_relu(x, filters, f"{block_name}_2")
    features = layers.GlobalMaxPooling2D(name="features")(x)
    return _classifier(inputs, features, num_classes, name)


def cifar_vgg(input_shape=(32, 32, 3), num_classes: int = 10, augment: bool = False) -> Model:
    """A BatchNorm VGG-style net in the spirit of airbench (Jordan, 2024): a 3x3 stem, then three
    blocks of conv -> max-pool -> BN -> ReLU -> conv -> BN -> ReLU, global max pooling. Widths
    32 / 64 / 128 (airbench uses 64 / 256 / 256 on a GPU): 0.30 M parameters and 24 M
    multiply-adds an image at 32x32, sized for a 2-core CPU."""
    return _airbench_vgg(input_shape, num_classes, augment, 24, (32, 64, 128), "cifar_vgg")


def cifar_vgg_wide(input_shape=(32, 32, 3), num_classes: int = 10,
                   augment: bool = False) -> Model:
    """cifar_vgg at airbench's own widths, 64 / 256 / 256 after a stem of 32: 1.98 M parameters
    and 152 M multiply-adds an image at 32x32. Its recipe (22 epochs) reached 90.11-90.50% on
    CIFAR-10's held-out 10,000 with flip-translate test-time augmentation (89.06-89.14% without)
    in 2,886-3,094 s of training on 2 cores, seeds 0-2, where cifar_vgg's reaches 85.62% in
    718 s (one run each, README)."""
    return _airbench_vgg(input_shape, num_classes, augment, 32, (64, 256, 256),
                         "cifar_vgg_wide")


def mobilenet_small(input_shape=(32, 32, 3), num_classes: int = 10,
                    augment: bool = False) -> Model:
    """Depthwise-separable blocks as in MobileNet (Howard et al., 2017): each a 3x3 depthwise
    conv -> BN -> ReLU, then a 1x1 conv -> BN -> ReLU; widths 64 to 256, three of them
    halving the map: 0.21 M parameters, 18 M multiply-adds an image at 32x32."""
    inputs = layers.Input(input_shape, name="input")
    x = _conv_bn_relu(photo_augmentation(inputs, augment), 32, "stem")
    for block, (filters, strides) in enumerate(
            ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (256, 2)), start=1):
        name = f"block{block}"
        x = layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False,
                                   name=f"{name}_dw")(x)
        x = layers.ReLU(name=f"{name}_dw_relu")(layers.BatchNormalization(name=f"{name}_dw_bn")(x))
        x = layers.Conv2D(filters, 1, use_bias=False, kernel_initializer="he_normal",
                          name=f"{name}_pw")(x)
        x = layers.ReLU(name=f"{name}_pw_relu")(layers.BatchNormalization(name=f"{name}_pw_bn")(x))
    features = layers.GlobalAveragePooling2D(name="features")(x)
    return _classifier(inputs, layers.Dropout(0.2, name="dropout")(features), num_classes,
                       "mobilenet_small")


MODELS = {"article": article_cnn, "lenet5": lenet5, "simple_convnet": simple_convnet,
          "face_net": face_net,
          "resnet20": resnet20, "cifar_vgg": cifar_vgg, "cifar_vgg_wide": cifar_vgg_wide,
          "mobilenet_small": mobilenet_small}
ALIASES = {"article_cnn": "article", "lenet": "lenet5", "lenet-5": "lenet5"}
#: the architectures that take ``augment``, and what it puts in front of them, in words (the
#: others are for digits, which are not flipped)
#: (``PHOTO_AUGMENTATION``: ``models.transfer.photo_augmentation``'s, which a new head has too)
PHOTO_AUGMENTATION = "flip + pad-4 crop augmentation"
AUGMENTATIONS = {"resnet20": PHOTO_AUGMENTATION, "cifar_vgg": PHOTO_AUGMENTATION,
                 "cifar_vgg_wide": PHOTO_AUGMENTATION, "mobilenet_small": PHOTO_AUGMENTATION,
                 "face_net": "flip, shift, zoom, rotation, brightness and contrast augmentation"}
AUGMENTABLE = frozenset(AUGMENTATIONS)


def resolve(name: str) -> str:
    """A zoo model's name from any spelling or alias; a clear error otherwise."""
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key not in MODELS:
        hint = closest(key, [*MODELS, *ALIASES])
        raise ConfigError(f"Unknown model {name!r}. Available: {sorted(MODELS)}"
                          + (f"; did you mean {hint!r}?" if hint else "."))
    return key


def closest(name: str, names) -> str | None:
    """The likeliest meant of ``names``, as its real name (never an alias); None if none is
    close."""
    hint = difflib.get_close_matches(name, list(names), n=1)
    return ALIASES.get(hint[0], hint[0]) if hint else None

