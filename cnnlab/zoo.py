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
def _augmentation(inputs, augment: bool):
    """The CIFAR recipe's augmentation, inside the model (active only in training): a horizontal
    flip and a random crop of the image padded by 4 pixels (He et al., 2016)."""
    if not augment:
        return inputs
    h, w = inputs.shape[1:3]
    x = layers.RandomFlip("horizontal", seed=0, name="augment_flip")(inputs)
    x = layers.ZeroPadding2D(4, name="augment_pad")(x)
    return layers.RandomCrop(h, w, seed=1, name="augment_crop")(x)


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
    x = _conv_bn_relu(_augmentation(inputs, augment), 16, "stem")
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


def cifar_vgg(input_shape=(32, 32, 3), num_classes: int = 10, augment: bool = False) -> Model:
    """A BatchNorm VGG-style net in the spirit of airbench (Jordan, 2024): a 3x3 stem, then three
    blocks of conv -> max-pool -> BN -> ReLU -> conv -> BN -> ReLU, global max pooling. Widths
    32 / 64 / 128 (airbench uses 64 / 256 / 256 on a GPU): 0.30 M parameters and 24 M
    multiply-adds an image at 32x32, sized for a 2-core CPU."""
    inputs = layers.Input(input_shape, name="input")
    x = _conv_bn_relu(_augmentation(inputs, augment), 24, "stem")
    for block, filters in enumerate((32, 64, 128), start=1):
        name = f"block{block}"
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False,
                          kernel_initializer="he_normal", name=f"{name}_1_conv")(x)
        x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
        x = layers.BatchNormalization(name=f"{name}_1_bn")(x)
        x = layers.ReLU(name=f"{name}_1_relu")(x)
        x = _conv_bn_relu(x, filters, f"{name}_2")
    features = layers.GlobalMaxPooling2D(name="features")(x)
    return _classifier(inputs, features, num_classes, "cifar_vgg")


def mobilenet_small(input_shape=(32, 32, 3), num_classes: int = 10,
                    augment: bool = False) -> Model:
    """Depthwise-separable blocks as in MobileNet (Howard et al., 2017): each a 3x3 depthwise
    conv -> BN -> ReLU, then a 1x1 conv -> BN -> ReLU; widths 64 to 256, three of them
    halving the map: 0.21 M parameters, 18 M multiply-adds an image at 32x32."""
    inputs = layers.Input(input_shape, name="input")
    x = _conv_bn_relu(_augmentation(inputs, augment), 32, "stem")
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


#: the learning rate each optimizer starts from when a run chooses it over its recipe's own and
#: names no rate
OPTIMIZER_LR = {"sgd": 0.05, "adam": 0.001, "adamw": 0.001, "rmsprop": 0.001}


@dataclass(frozen=True)
class Recipe:
    """How a zoo model trains by default; `cnnlab train` options override any of it. The one
    source of the training settings' defaults: the command line, its help, the web app and
    ``runs.run_settings`` all read them from here. ``schedule``: 'constant', or 'onecycle'
    (``optimizers.schedules.OneCycle`` over the run, peaking at ``lr``); ``augment``: flips
    and pad-4 random crops inside the model."""

    optimizer: str = "sgd"
    lr: float = OPTIMIZER_LR["sgd"]
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
                 f"{self.epochs} epoch{'s' * (self.epochs != 1)}", f"batch {self.batch_size}"]
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
          "face_net": face_net,
          "resnet20": resnet20, "cifar_vgg": cifar_vgg, "mobilenet_small": mobilenet_small}
# The usual CIFAR recipe (SGD, momentum 0.9, L2 5e-4) in Keras 3's decoupled form: torch's L2
# term is amplified by momentum to lr * 5e-4 / (1 - 0.9) per step, which decoupled decay
# matches with weight_decay = 5e-3.
_PHOTOS = dict(optimizer="sgd", momentum=0.9, schedule="onecycle", weight_decay=5e-3,
               label_smoothing=0.1, augment=True, batch_size=128, image_size=32)
RECIPES = {"article": Recipe(), "lenet5": Recipe(), "simple_convnet": Recipe(),
           "face_net": Recipe(optimizer="adam", lr=2e-3, epochs=40, batch_size=32, augment=True,
                              image_size=25),
           "resnet20": Recipe(lr=0.2, epochs=30, **_PHOTOS),
           "cifar_vgg": Recipe(lr=0.2, epochs=20, **_PHOTOS),
           "mobilenet_small": Recipe(lr=0.2, epochs=30, **_PHOTOS)}
#: ``--pretrained``: a new head on a frozen backbone learns fast, from few images, with Adam;
#: ``--fine-tune N`` then trains every layer N more epochs at a tenth of the rate
TRANSFER_RECIPE = Recipe(optimizer="adam", lr=1e-3, epochs=15, batch_size=32, augment=True)
FINE_TUNE_EPOCHS = 10
FINE_TUNE_FACTOR = 0.1
ALIASES = {"article_cnn": "article", "lenet": "lenet5", "lenet-5": "lenet5"}
_AUGMENTABLE = {"resnet20", "cifar_vgg", "mobilenet_small", "face_net"}
#: the model ``cnnlab train --data NAME`` trains when no --model is given, where it is not the
#: article's
DATASET_MODELS = {"lfw_faces": "face_net"}


def resolve(name: str) -> str:
    """A zoo model's name from any spelling or alias; a clear error otherwise."""
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key not in MODELS:
        hint = _closest(key, [*MODELS, *ALIASES])
        raise ConfigError(f"Unknown model {name!r}. Available: {sorted(MODELS)}"
                          + (f"; did you mean {hint!r}?" if hint else "."))
    return key


def _closest(name: str, names) -> str | None:
    """The likeliest meant of ``names``, as its real name (never an alias); None if none is
    close."""
    hint = difflib.get_close_matches(name, list(names), n=1)
    return ALIASES.get(hint[0], hint[0]) if hint else None


#: Weights that ship inside the package, trained by cnnlab with ``recipes/pretrain.py`` (each
#: file's metadata says how, on what, and how well): (model, weights name) -> file in
#: ``cnnlab/weights``.
PRETRAINED = {("article", "digits"): "article-digits.cnnlab",
              ("cifar_vgg", "cifar10"): "cifar_vgg-cifar10.cnnlab",
              ("face_net", "faces"): "face_net-faces.cnnlab"}


def pretrained_path(name: str, weights: str):
    """The shipped file of ``weights`` for zoo model ``name``; a clear error if none ships."""
    from importlib import resources
    key = resolve(name)
    if (key, weights) not in PRETRAINED:
        shipped = ", ".join(f"{m} (weights={w!r})" for m, w in PRETRAINED)
        raise ConfigError(f"No pretrained weights {weights!r} ship for {key}; cnnlab ships: "
                          f"{shipped}. Or pass weights= the path of a .cnnlab file.")
    return str(resources.files("cnnlab").joinpath("weights", PRETRAINED[(key, weights)]))


def pretrained_model(name: str, weights: str) -> Model:
    """The shipped ``weights`` of ``name`` as they were saved: the model they were trained in,
    its metadata (``pretrained``: recipe, data, accuracy) and input shape."""
    from cnnlab.models import load_model
    return load_model(pretrained_path(name, weights), compile=False)


def get(name: str, input_shape=None, num_classes: int | None = None, augment: bool = False,
        weights: str | None = None, include_top: bool = True):
    """A zoo model, as ``keras.applications`` gives one.

    ``input_shape``   without the batch axis; default: the model's own (28x28x1 for the digit
                      models, 32x32x3 for the photo models)
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
    from cnnlab.models import load_model
    key = resolve(name)
    options = {"augment": augment} if key in _AUGMENTABLE else {}
    if input_shape is not None:
        options["input_shape"] = tuple(input_shape)
    if weights is None:
        model = MODELS[key](num_classes=10 if num_classes is None else num_classes, **options)
        return model if include_top else backbone(model)
    shipped = weights in {w for _, w in PRETRAINED}
    stored = load_model(pretrained_path(key, weights) if shipped else weights, compile=False)
    classes = stored.output_shape[-1]
    if include_top and num_classes is not None and num_classes != classes:
        raise ConfigError(f"The weights {weights!r} of {key} classify {classes} classes; "
                          f"received num_classes={num_classes}. Pass include_top=False and put "
                          f"a head of your own on the backbone (cnnlab.zoo.with_new_head).")
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
        variable.value[...] = value


def with_new_head(base, num_classes: int, augment: bool = False, name: str | None = None):
    """Transfer learning's model: ``base`` (a backbone, e.g. ``get(..., include_top=False)``)
    called in inference mode, so its BatchNormalization keeps the statistics it was trained with
    even once it is unfrozen for fine-tuning, under a new softmax layer ``predictions``.
    ``augment`` puts the photo recipe's flips and crops in front. Freezing is the caller's
    (``base.trainable = False``). Keras' idiom, which this is::

        inputs = cnnlab.Input(base.input_shape)
        x = base(inputs, training=False)
        outputs = layers.Dense(num_classes, activation="softmax")(x)
        model = cnnlab.Model(inputs, outputs)
    """
    inputs = layers.Input(base.input_shape, name="input")
    features = base(_augmentation(inputs, augment), training=False)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(features)
    model = Model(inputs, outputs, name=name or f"{base.name.removesuffix('_backbone')}_transfer")
    model.metadata = {k: v for k, v in base.metadata.items() if k != "class_names"}
    return model


def find(spec: str, trained: bool = True, compile: bool = False):
    """A model named the way every command and task names one, the one resolver for it:

    - the path of a ``.cnnlab`` file: that model (``compile``: with its training setup);
    - shipped weights, ``'digits'``, ``'cifar10'``, ``'faces'``: the zoo model they ship for,
      trained;
    - a zoo architecture, ``'resnet20'``, ``'article'`` and their aliases: the model with fresh
      weights, only where ``trained`` is False (``cnnlab summary``); elsewhere it has learned
      nothing to predict with, and the error says how to train it.

    Anything else is one ConfigError, the same from every command, with a did-you-mean."""
    import os

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


def backbone(model) -> Model:
    """``model`` from its input to the layer named ``features``: its penultimate representation,
    sharing the weights. The zoo's models name it; for another model, the input of its last
    layer."""
    names = [layer.name for layer in model.layers]
    if "features" in names:
        features = model.get_layer("features").output
    else:
        features = model.outputs[0].node.inbound[0]
    trunk = Model(model.input, features, name=f"{model.name}_backbone")
    trunk.metadata = {k: v for k, v in model.metadata.items() if k != "class_names"}
    return trunk
