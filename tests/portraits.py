"""Two portraits that ship inside cnnlab's dependencies, each with its face's box drawn by hand
(eyebrows to chin, ear to ear; x0, y0, x1, y1 in the picture's pixels): what face detection is
tested on (tests/test_detect.py) and measured on (benchmarks/detect.py).

- scikit-image's ``astronaut.png``: the issue's target.
- matplotlib's ``grace_hopper.jpg`` (its sample data): a second frontal portrait; its box was
  drawn before the shipped model was trained (only the model before it had been run on her).

Neither is in ``lfw_faces``' training data (``NEGATIVE_IMAGES`` leaves people out).
"""

from __future__ import annotations

from PIL import Image


def astronaut() -> Image.Image:
    from skimage import data
    return Image.fromarray(data.astronaut())


def grace_hopper() -> Image.Image:
    from matplotlib import cbook
    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as photo:
        return photo.convert("RGB")


PORTRAITS = {"astronaut": (astronaut, (175, 70, 270, 180)),
             "grace_hopper": (grace_hopper, (160, 160, 370, 335))}
