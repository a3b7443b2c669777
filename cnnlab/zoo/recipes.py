"""The recipe each zoo model trains with by default, the one source of a run's default settings:
the command line, its help texts, the web app and ``runs.run_settings`` read them from here."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cnnlab.zoo.architectures import AUGMENTATIONS, PHOTO_AUGMENTATION

#: the learning rate each optimizer starts from when a run chooses it over its recipe's own and
#: names no rate
OPTIMIZER_LR = {"sgd": 0.05, "adam": 0.001, "adamw": 0.001, "rmsprop": 0.001}


@dataclass(frozen=True)
class Recipe:
    """How a zoo model trains by default; `cnnlab train` options override any of it. The one
    source of the training settings' defaults: the command line, its help, the web app and
    ``runs.run_settings`` all read them from here. ``schedule``: 'constant', or 'onecycle'
    (``optimizers.schedules.OneCycle`` over the run, peaking at ``lr``); ``augment``: the
    model's own augmentation layers, in training only (``architectures.AUGMENTATIONS``)."""

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

    def describe(self, model: str | None = None) -> str:
        """The recipe in one line; ``model`` (a zoo name) says what its augmentation is (None:
        a new head's, the photo recipe's)."""
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
            parts.append(AUGMENTATIONS.get(model, PHOTO_AUGMENTATION))
        return ", ".join(parts) + f"; folders at {self.image_size}x{self.image_size}"

    def settings(self) -> dict:
        return asdict(self)



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
           "cifar_vgg_wide": Recipe(lr=0.2, epochs=22, **_PHOTOS),
           "mobilenet_small": Recipe(lr=0.2, epochs=30, **_PHOTOS)}
#: ``--pretrained``: a new head on a frozen backbone learns fast, from few images, with Adam;
#: ``--fine-tune N`` then trains every layer N more epochs at a tenth of the rate
TRANSFER_RECIPE = Recipe(optimizer="adam", lr=1e-3, epochs=15, batch_size=32, augment=True)
FINE_TUNE_EPOCHS = 10
FINE_TUNE_FACTOR = 0.1
#: the model ``cnnlab train --data NAME`` trains when no --model is given, where it is not the
#: article's
DATASET_MODELS = {"lfw_faces": "face_net"}
