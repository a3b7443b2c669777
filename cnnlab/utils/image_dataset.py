"""``cnnlab.utils.image_dataset``: image folders. They live in ``cnnlab.data.folders``; these are
the same names."""

from cnnlab.data.folders import (
    IMAGE_EXTENSIONS,
    ImageDataset,
    conversion_notes,
    decode,
    files_digest,
    image_dataset_from_directory,
)

__all__ = ["IMAGE_EXTENSIONS", "ImageDataset", "conversion_notes", "decode", "files_digest",
           "image_dataset_from_directory"]
