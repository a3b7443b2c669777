"""Turning a person's picture into what a model was trained on.

MNIST digits are white on black, 28 x 28, the digit scaled into a 20 x 20 box and centred by its
centre of mass. A photo or drawing of a digit is usually dark on light, any size, off centre. For
single-channel models :func:`image_to_input` repeats MNIST's preparation; for colour models it
only resizes. Pixel values become floats in [0, 1], the scale ``cnnlab train`` uses.
"""

from __future__ import annotations

import numpy as np

from cnnlab.errors import DataError, ImageFormatError

MAX_IMAGE_PIXELS = 64_000_000     # refuse decompression bombs before decoding


def open_image(path, name: str | None = None, max_pixels: int = MAX_IMAGE_PIXELS):
    """Open an image file (a path, or a binary file object such as ``io.BytesIO``) with Pillow,
    applying EXIF rotation; errors name the file (``name``, or else the path).

    Images over ``max_pixels`` are refused from their header, before they are decoded. Nothing of
    Pillow's global state changes (its own ``Image.MAX_IMAGE_PIXELS``, the warnings filters): the
    user's other Pillow code keeps the settings the user chose.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError
    label = repr(name) if name is not None else repr(str(path))
    try:
        with Image.open(path) as img:                 # reads the header only
            if img.width * img.height > max_pixels:
                raise DataError(f"{label} is {img.width} x {img.height} pixels; the limit is "
                                f"{max_pixels:,} pixels.")
            img.load()
            return ImageOps.exif_transpose(img)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"No image file at {label}.") from None
    except IsADirectoryError:
        raise DataError(f"{label} is a folder; expected an image file.") from None
    except UnidentifiedImageError:
        raise ImageFormatError(f"{label} is not an image Pillow can read (PNG, JPEG, BMP, GIF, "
                               f"WebP ...).") from None
    except Image.DecompressionBombError as exc:       # over twice Pillow's own limit
        raise DataError(f"{label} is too large to decode safely ({exc}).") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{label} is corrupt or truncated ({exc}).") from None


def _centre_like_mnist(gray: np.ndarray, size: int) -> np.ndarray:
    """Crop to the ink, fit it in a box of 20/28 of ``size``, centre by centre of mass."""
    from PIL import Image
    ink = np.argwhere(gray > 0.1)
    if ink.size == 0:
        return np.zeros((size, size), dtype=np.float32)
    (top, left), (bottom, right) = ink.min(axis=0), ink.max(axis=0) + 1
    crop = gray[top:bottom, left:right]
    box = max(1, round(size * 20 / 28))
    scale = box / max(crop.shape)
    new_hw = (max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale)))
    resized = np.asarray(Image.fromarray((crop * 255).astype(np.uint8)).resize(
        (new_hw[1], new_hw[0]), Image.LANCZOS), dtype=np.float32) / 255
    canvas = np.zeros((size, size), dtype=np.float32)
    total = resized.sum()
    cy, cx = ((np.indices(resized.shape) * resized).sum(axis=(1, 2)) / total
              if total > 0 else (resized.shape[0] / 2, resized.shape[1] / 2))
    y0 = int(np.clip(round(size / 2 - cy), 0, size - new_hw[0]))
    x0 = int(np.clip(round(size / 2 - cx), 0, size - new_hw[1]))
    canvas[y0:y0 + new_hw[0], x0:x0 + new_hw[1]] = resized
    return canvas


def to_gray(image) -> np.ndarray:
    """Any Pillow mode -> greyscale floats in [0, 1], ``(H, W)``.

    16-bit and 32-bit images are scaled by their bit depth (Pillow's own conversion to 8 bits
    would clip them); transparent images are laid on white paper first; palette, CMYK and the
    rest go through Pillow's conversions.
    """
    from PIL import Image
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        return np.clip(values / top, 0, 1).astype(np.float32)
    if image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        top = values.max(initial=0)
        return np.clip(values / (top if top > 1 else 1), 0, 1).astype(np.float32)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, rgba)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255


def image_to_input(image, input_shape, invert="auto", centre: bool = True) -> np.ndarray:
    """A PIL image (or array) -> one model input ``(H, W, C)`` of floats in [0, 1].

    ``invert``: ``'auto'`` inverts single-channel images whose border is light (dark ink on
    paper), so they match MNIST's white-on-black; ``True``/``False`` force it.
    """
    from PIL import Image
    if len(input_shape) != 3:
        raise DataError(f"image_to_input needs an image model input (H, W, C); the model takes "
                        f"{tuple(input_shape)}.")
    h, w, channels = input_shape
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if channels == 1:
        gray = to_gray(image)
        border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
        if invert is True or (invert == "auto" and border.mean() > 0.5):
            gray = 1 - gray
        if centre and h == w:
            return _centre_like_mnist(gray, h)[..., None]
        img = Image.fromarray((gray * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
        return (np.asarray(img, dtype=np.float32) / 255)[..., None]
    mode = {3: "RGB", 4: "RGBA"}.get(channels)
    if mode is None:
        raise DataError(f"Models with {channels} input channels cannot take images; expected 1, "
                        f"3 or 4.")
    if image.mode.startswith("I") or image.mode == "F":     # high bit depth: via greyscale
        gray = Image.fromarray((to_gray(image) * 255).astype(np.uint8))
        image = gray.convert(mode)
    img = image.convert(mode).resize((w, h), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255


def class_names(model) -> list[str]:
    """A model's class names as its run recorded them, else '0', '1', ..."""
    names = model.metadata.get("class_names")
    return [str(n) for n in names] if names else [str(k) for k in range(model.output_shape[-1])]


def image_for_model(model, image, invert="auto") -> np.ndarray:
    """One picture -> the model's input ``(H, W, C)`` in [0, 1], prepared as its training data
    was: a model trained on a folder saw plain resized images; digit models saw MNIST's
    preparation (white on black, centred by centre of mass)."""
    plain = model.metadata.get("preprocessing") in ("resize", "plain")
    return image_to_input(image, model.input_shape, invert=False if plain else invert,
                          centre=not plain)
