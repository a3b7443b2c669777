"""cnnlab: convolutional neural networks from scratch on NumPy, with a Keras-compatible API.

    engine/      pure NumPy ops, forward and backward side by side (conv, pool, dense, ...)
    layers/      Keras-named layers that hold parameters and call the engine
    models/      Sequential, the training loop, summary, the .cnnlab file format
    optimizers, losses, metrics, callbacks, utils, datasets, zoo, cli
"""

__version__ = "0.1.0"

from cnnlab import (  # noqa: E402
                    callbacks,
                    config,
                    datasets,
                    layers,
                    losses,
                    metrics,
                    models,  # noqa: E402,I001
                    optimizers,
                    seeding,
                    utils,
                    zoo,
)
from cnnlab.errors import CnnlabError  # noqa: E402
from cnnlab.layers import Input  # noqa: E402
from cnnlab.models import Sequential, load_model  # noqa: E402

__all__ = ["Sequential", "Input", "load_model", "layers", "models", "optimizers", "losses", "metrics",
           "callbacks", "utils", "datasets", "zoo", "config", "seeding", "CnnlabError",
           "__version__"]
