"""Faces and not-faces, 25 x 25 greyscale, from what scikit-image's wheel ships (offline).

- Faces: the 100 face crops of ``skimage.data.lfw_subset()`` (Labeled Faces in the Wild, Huang
  et al., 2007).
- Not faces: its 100 other crops, and ``NEGATIVES_PER_IMAGE`` squares cut at random places and
  sizes (25 to 160 pixels, shrunk to 25) from each of scikit-image's bundled pictures that show
  no person (``NEGATIVE_IMAGES``: coffee, a cat, a rocket, coins, text, textures ...). A
  detector slides over whole photos, so it must see more of the world than 100 flat patches.
  The astronaut and the cameraman are left out: they are where detection is tested.

The split is fixed and stratified: a fifth of each kind is the test set (its faces repeated
in the training split, see ``BALANCE``). Class 0 is
``not_face``, class 1 ``face``. Needs scikit-image (``pip install 'cnnlab[faces]'``).

    (x_train, y_train), (x_test, y_test) = load_data()   # uint8 (N, 25, 25), labels 0 / 1
"""

from __future__ import annotations

import numpy as np

from cnnlab.errors import ConfigError

CLASS_NAMES = ["not_face", "face"]
PREPROCESSING = "plain"          # photos are only resized, never inverted or centred like digits
#: the training faces are repeated (the model's augmentation flips and shifts each copy its own
#: way) so that faces and not-faces weigh alike in the loss
BALANCE = True
SIZE = 25
NEGATIVE_IMAGES = ("coffee", "chelsea", "rocket", "coins", "horse", "page", "text", "moon",
                   "brick", "grass", "gravel", "hubble_deep_field",
                   "immunohistochemistry", "retina", "cell", "logo", "clock", "colorwheel",
                   "checkerboard", "shepp_logan_phantom")
NEGATIVES_PER_IMAGE = 300
TEST_SHARE = 0.2


def _skimage_data():
    try:
        from skimage import data
    except ImportError:
        raise ConfigError("The lfw_faces dataset comes from scikit-image's bundled images: pip "
                          "install 'cnnlab[faces]' (scikit-image).") from None
    return data


def _grey(image) -> np.ndarray:
    """Any skimage picture -> float greyscale in [0, 1] (ITU-R 601 luma, as Pillow's 'L')."""
    image = np.asarray(image, dtype=np.float64)
    if image.max() > 1.0:
        image = image / 255.0
    if image.ndim == 3:
        image = image[..., :3] @ np.array([0.299, 0.587, 0.114])
    return image


def not_face_pictures() -> list[np.ndarray]:
    """``NEGATIVE_IMAGES`` as greyscale ``(H, W)`` floats in [0, 1]: where the not-faces are cut
    from (and where a detector's false positives are mined, ``recipes/pretrain.py``)."""
    data = _skimage_data()
    return [_grey(getattr(data, name)()) for name in NEGATIVE_IMAGES]


def random_squares(image: np.ndarray, count: int, rng, size: int = SIZE) -> np.ndarray:
    """``count`` squares cut at random places and sizes (``size`` to 160 pixels) from a
    greyscale ``image``, each shrunk to ``size`` x ``size`` (bilinear): uint8."""
    from PIL import Image
    picture = Image.fromarray((image * 255).round().astype(np.uint8))
    largest = min(160, *image.shape)
    out = np.empty((count, size, size), np.uint8)
    for k in range(count):
        side = int(rng.integers(size, largest + 1))
        top = int(rng.integers(0, image.shape[0] - side + 1))
        left = int(rng.integers(0, image.shape[1] - side + 1))
        crop = picture.crop((left, top, left + side, top + side))
        out[k] = np.asarray(crop.resize((size, size), Image.BILINEAR))
    return out


def crops() -> tuple[np.ndarray, np.ndarray]:
    """``(faces, others)``: scikit-image's 100 face crops and its 100 other crops, uint8
    ``(100, 25, 25)`` each (``lfw_subset`` holds the faces first)."""
    both = (_skimage_data().lfw_subset() * 255).round().astype(np.uint8)    # (200, 25, 25)
    return both[:100], both[100:]


def load_data(seed: int = 0):
    """``((x_train, y_train), (x_test, y_test))``: uint8 ``(N, 25, 25)``, uint8 labels (1 face)."""
    faces, others = crops()
    rng = np.random.default_rng(seed)
    cut = [random_squares(picture, NEGATIVES_PER_IMAGE, rng) for picture in not_face_pictures()]
    negatives = np.concatenate([others, *cut])
    splits = []
    for images, label in ((negatives, 0), (faces, 1)):
        order = rng.permutation(len(images))
        test = int(round(len(images) * TEST_SHARE))
        splits.append(((images[order[test:]], label), (images[order[:test]], label)))
    parts = []
    for which in (0, 1):                                     # train, test
        kinds = [split[which][0] for split in splits]
        if which == 0 and BALANCE:
            kinds[1] = np.repeat(kinds[1], max(1, round(len(kinds[0]) / len(kinds[1]))), axis=0)
        x = np.concatenate(kinds)
        y = np.concatenate([np.full(len(images), label, np.uint8)
                            for images, label in zip(kinds, (0, 1))])
        order = rng.permutation(len(x))
        parts.append((x[order], y[order]))
    return tuple(parts)
