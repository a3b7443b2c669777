"""One exception family for everything cnnlab refuses.

Each class also derives from the builtin a Keras user would catch (``ValueError``, ``OSError``),
so ``except ValueError`` keeps working while ``except CnnlabError`` catches all of ours.
"""


class CnnlabError(Exception):
    """Base class of every error cnnlab raises on purpose."""


class ShapeError(CnnlabError, ValueError):
    """An array has the wrong rank, shape or size for the layer or op that received it."""


class ConfigError(CnnlabError, ValueError):
    """An argument or configuration value is out of range or unknown."""


class DataError(CnnlabError, ValueError):
    """Training or evaluation data is unusable: NaN, labels out of range, empty, wrong dtype."""


class ImageFormatError(DataError):
    """A file is not an image in a format Pillow can read (the web app answers 415)."""


class LimitError(DataError):
    """An input is larger than the bound its caller set on work or memory (pixels, frames); the
    web app answers 413."""


class ModelFileError(CnnlabError, ValueError):
    """A model or weights file is missing, truncated, corrupt, or does not match the model."""


class NotBuiltError(CnnlabError, RuntimeError):
    """A layer or model was used before its input shape was known."""


class OutOfMemoryError(CnnlabError, MemoryError):
    """A batch did not fit in memory, this machine's or the GPU's (NumPy's and CuPy's
    allocation errors are both MemoryErrors); the message names the batch size to try."""
