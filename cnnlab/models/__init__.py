"""Models: ``Model`` (the functional API), ``Sequential`` (a builder of the same graph) and
``load_model``."""

from cnnlab.io.saving import load_model
from cnnlab.models.model import Model
from cnnlab.models.sequential import Sequential

__all__ = ["Model", "Sequential", "load_model"]
