"""Models: ``Sequential`` and ``load_model``."""

from cnnlab.models.saving import load_model
from cnnlab.models.sequential import Sequential

__all__ = ["Sequential", "load_model"]
