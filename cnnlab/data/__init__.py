"""Data in, the one home for it: named datasets, image folders, single pictures, video frames,
and a run's training and evaluation data from its recorded settings.

    datasets/    named datasets with Keras' ``load_data()`` (mnist, cifar10, ...), the bundled
                 digits, downloads; ``datasets.load(spec)``: a name or an ``.npz``
    folders.py   "a data-set of your own": ``image_dataset_from_directory``, streamed
    pictures.py  one picture -> a model's input (``open_image``, ``image_for_model``)
    video.py     the frames of a video (PyAV)
    splits.py    ``training_data(settings)`` and ``evaluation_data(model, ...)``: what a run
                 trains on, and exactly what it held out

Feeding batches to a training step is ``training.adapter``'s, one floor down.
"""

from cnnlab.data import datasets
from cnnlab.data.folders import ImageDataset, image_dataset_from_directory
from cnnlab.data.pictures import class_names, image_for_model, image_to_input, open_image
from cnnlab.data.splits import (
    FOLDER_VALIDATION_SPLIT,
    Evaluation,
    evaluation_data,
    materialise,
    preparation,
    training_data,
)

__all__ = ["FOLDER_VALIDATION_SPLIT", "Evaluation", "ImageDataset", "class_names", "datasets",
           "evaluation_data", "image_dataset_from_directory", "image_for_model",
           "image_to_input", "materialise", "open_image", "preparation", "training_data"]
