"""Transfer learning's two moves on any model: ``backbone`` (the model up to its features) and
``with_new_head`` (a backbone, frozen or not, under a new classifier), with the photo recipe's
augmentation that a new head may put in front."""

from __future__ import annotations

from cnnlab import layers
from cnnlab.models.model import Model


def photo_augmentation(inputs, augment: bool):
    """The CIFAR recipe's augmentation, inside the model (active only in training): a horizontal
    flip and a random crop of the image padded by 4 pixels (He et al., 2016)."""
    if not augment:
        return inputs
    h, w = inputs.shape[1:3]
    x = layers.RandomFlip("horizontal", seed=0, name="augment_flip")(inputs)
    x = layers.ZeroPadding2D(4, name="augment_pad")(x)
    return layers.RandomCrop(h, w, seed=1, name="augment_crop")(x)


def with_new_head(base, num_classes: int, augment: bool = False, name: str | None = None):
    """Transfer learning's model: ``base`` (a backbone, e.g. ``zoo.get(..., include_top=False)``)
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
    features = base(photo_augmentation(inputs, augment), training=False)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(features)
    model = Model(inputs, outputs, name=name or f"{base.name.removesuffix('_backbone')}_transfer")
    model.metadata = {k: v for k, v in base.metadata.items() if k != "class_names"}
    return model



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
