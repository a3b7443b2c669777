"""Models: ``Model`` (the functional API), ``Sequential`` (a builder of the same graph),
``load_model``, and transfer learning's ``backbone`` and ``with_new_head``."""

from cnnlab.io import saving
from cnnlab.models.model import Model
from cnnlab.models.sequential import Sequential
from cnnlab.models.transfer import backbone, with_new_head


def load_model(filepath, compile: bool = True):
    """Rebuild a model saved with ``model.save``: graph, weights, optimizer state (Keras'
    ``load_model``). Never runs code from the file: every class it names must be a layer or
    model cnnlab or the user's own code has registered."""
    return saving.load_model(filepath, compile,
                             model_classes={"Model": Model, "Sequential": Sequential})

__all__ = ["Model", "Sequential", "backbone", "load_model", "with_new_head"]
