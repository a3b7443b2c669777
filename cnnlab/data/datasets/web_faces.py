"""Caltech 10,000 Web Faces as 36 x 36 grey crops, and photos of scenes without people: the
face-detection training set ``faces-train.tar.gz`` (its README says where each part comes from).
It does not ship with cnnlab; point :func:`read` at the archive or the folder it extracts to.

    data = read("faces-train.tar.gz")      # .faces uint8 (6713, 36, 36), .scenes grey (H, W)
    train, held_out = split(data)          # by file name: the same on every machine
    photos = pasted_photos(held_out.faces, held_out.scenes, seed=TEST_SEED)   # boxes known

The held-out part is what a detector is scored on (``benchmarks/detect.py``) and where its
score threshold is chosen (``recipes/pretrain.py``): held-out faces pasted at random scales and
places into held-out scenes, so every face's box is known and none of it was trained on.
"""

from __future__ import annotations

import io
import os
import tarfile
import zlib
from typing import NamedTuple

import numpy as np

from cnnlab.errors import DataError

FACES, SCENES = "faces", "non-face-scenes"
SIZE = 36
HELD_OUT_SHARE = 0.15
#: the seeds of :func:`pasted_photos` for choosing a detector's threshold (validation) and for
#: scoring it (test): the same held-out faces and scenes, arranged apart
VALIDATION_SEED, TEST_SEED = 0, 1


class Part(NamedTuple):
    """Faces ``(N, 36, 36)`` and scenes (a list of ``(H, W)``), grey uint8, with their file
    names."""
    faces: np.ndarray
    scenes: list
    face_names: list
    scene_names: list


def _members(path: str):
    """``(relative name, bytes)`` of every image under ``path``: a .tar.gz or a folder."""
    if os.path.isdir(path):
        for root, _, files in os.walk(path):
            for name in sorted(files):
                with open(os.path.join(root, name), "rb") as handle:
                    yield os.path.relpath(os.path.join(root, name), path), handle.read()
        return
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                if member.isfile():          # read, never extracted: no path in it is trusted
                    yield member.name, archive.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"Cannot read {path!r} as the faces archive ({exc}); expected "
                        f"faces-train.tar.gz or the folder it extracts to.") from None


def read(path: str) -> Part:
    """Every face crop and scene under ``path`` (``faces-train.tar.gz`` or its folder), grey,
    sorted by name. A missing, truncated or corrupt file is a DataError naming it."""
    from PIL import Image, UnidentifiedImageError
    if not os.path.exists(path):
        raise DataError(f"No faces data at {path!r}: expected faces-train.tar.gz (or the folder "
                        f"it extracts to), with {FACES}/ and {SCENES}/ inside.")
    found = {FACES: [], SCENES: []}
    for name, data in _members(path):
        parts = name.replace("\\", "/").split("/")
        kind = parts[-2] if len(parts) >= 2 else None
        if kind not in found or not parts[-1].lower().endswith((".jpg", ".jpeg", ".png")):
            continue
        try:
            with Image.open(io.BytesIO(data)) as picture:
                grey = np.asarray(picture.convert("L"))
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{path}: {name} is not a readable image ({exc}).") from None
        if kind == FACES and grey.shape != (SIZE, SIZE):
            raise DataError(f"{path}: {name} is {grey.shape[::-1]}; face crops are "
                            f"{SIZE}x{SIZE}.")
        found[kind].append((parts[-1], grey))
    if not found[FACES] or not found[SCENES]:
        raise DataError(f"{path} holds {len(found[FACES])} face crops and {len(found[SCENES])} "
                        f"scenes; expected both folders, {FACES}/ and {SCENES}/.")
    faces, scenes = (sorted(found[k], key=lambda item: item[0]) for k in (FACES, SCENES))
    return Part(np.stack([g for _, g in faces]), [g for _, g in scenes],
                [n for n, _ in faces], [n for n, _ in scenes])


def _held_out(name: str, share: float) -> bool:
    """A file's side of the split, from its name alone (CRC-32), so adding files moves none."""
    return zlib.crc32(name.encode()) % 1000 < share * 1000


def split(data: Part, share: float = HELD_OUT_SHARE) -> tuple[Part, Part]:
    """``(train, held_out)``: about ``share`` of the faces and of the scenes held out."""
    parts = []
    for keep in (False, True):
        faces = [k for k, n in enumerate(data.face_names) if _held_out(n, share) == keep]
        scenes = [k for k, n in enumerate(data.scene_names) if _held_out(n, share) == keep]
        parts.append(Part(data.faces[faces], [data.scenes[k] for k in scenes],
                          [data.face_names[k] for k in faces],
                          [data.scene_names[k] for k in scenes]))
    return parts[0], parts[1]


def pasted_photos(faces: np.ndarray, scenes: list, seed: int = 0, per_scene: tuple = (1, 4),
                  sizes: tuple = (24, 160), min_side: int = 320):
    """Validation photos with known boxes: each scene (enlarged so its shorter side is at least
    ``min_side``) with ``per_scene`` faces pasted at random sizes (``sizes``, in pixels, not
    past a third of the scene's shorter side) and places, none overlapping another.

    Returns ``[(grey float32 (H, W) in [0, 1], [(x0, y0, x1, y1), ...])]``; a box is the pasted
    crop's square, as the detector's window frames a crop."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(faces))
    used, photos = 0, []
    for scene in scenes:
        picture = Image.fromarray(scene)
        grow = max(1.0, min_side / min(picture.size))
        if grow > 1:
            picture = picture.resize((round(picture.width * grow), round(picture.height * grow)),
                                     Image.BILINEAR)
        boxes = []
        largest = min(sizes[1], min(picture.size) // 3)
        for _ in range(int(rng.integers(per_scene[0], per_scene[1] + 1))):
            for _attempt in range(20):
                side = int(round(np.exp(rng.uniform(np.log(sizes[0]), np.log(largest)))))
                left = int(rng.integers(0, picture.width - side + 1))
                top = int(rng.integers(0, picture.height - side + 1))
                box = (left, top, left + side, top + side)
                if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1]
                       for b in boxes):
                    face = Image.fromarray(faces[order[used % len(order)]])
                    used += 1
                    picture.paste(face.resize((side, side), Image.BILINEAR), box[:2])
                    boxes.append(box)
                    break
        photos.append((np.asarray(picture, np.float32) / 255, boxes))
    return photos
