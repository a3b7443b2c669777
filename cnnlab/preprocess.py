"""Turning a person's picture into what a model was trained on.

MNIST digits are white on black, 28 x 28, the digit scaled into a 20 x 20 box and centred by its
centre of mass. A photo or drawing of a digit is usually dark on light, any size, off centre. For
single-channel models :func:`image_to_input` repeats MNIST's preparation; for colour models it
only resizes. Pixel values become floats in [0, 1], the scale ``cnnlab train`` uses.
"""

from __future__ import annotations

import numpy as np

from cnnlab.errors import DataError

MAX_IMAGE_PIXELS = 64_000_000     # refuse decompression bombs before decoding


def open_image(path):
    """Open an image file with Pillow, applying EXIF rotation; errors name the file."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with Image.open(path) as img:
            img.load()
            return ImageOps.exif_transpose(img)
    except FileNotFoundError:
        raise DataError(f"No image file at {str(path)!r}.") from None
    except IsADirectoryError:
        raise DataError(f"{str(path)!r} is a folder; expected an image file.") from None
    except UnidentifiedImageError:
        raise DataError(f"{str(path)!r} is not an image Pillow can read (PNG, JPEG, BMP, GIF, "
                        f"WebP ...).") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{str(path)!r} is too large to decode safely ({exc}).") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{str(path)!r} is corrupt or truncated ({exc}).") from None


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
        gray = np.asarray(image.convert("L"), dtype=np.float32) / 255
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
    img = image.convert(mode).resize((w, h), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255
