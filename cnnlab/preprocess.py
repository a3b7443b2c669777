"""``cnnlab.preprocess``: a picture made into a model's input. It lives in
``cnnlab.data.pictures``; these are the same functions."""

from cnnlab.data.pictures import MAX_IMAGE_PIXELS, image_to_input, open_image, to_gray

__all__ = ["MAX_IMAGE_PIXELS", "image_to_input", "open_image", "to_gray"]
