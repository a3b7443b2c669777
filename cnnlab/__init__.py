"""cnnlab: convolutional neural networks from scratch on NumPy, with a Keras-compatible API.

The packages, each importing only those above it:

    engine/      pure NumPy ops, forward and backward side by side (conv, pool, batchnorm, ...)
    layers/      Keras-named layers that hold variables and call the engine; symbolic tensors
    graph/       a graph of layer calls: topological order, the forward tape and its backward walk,
                 the fusions, the summary
    training/    the step, the epoch loop and its data adapter, progress and resume; losses,
                 metrics, optimizers, callbacks, thread and MPI parallelism
    models/      Model and Sequential: a graph that trains
    io/          the .cnnlab file, checkpoints, ONNX / PyTorch / Keras converters
    viz/, serve/, cli   pictures and reports, the web app, the command line
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
from cnnlab.models import Model, Sequential, load_model  # noqa: E402

__all__ = ["Model", "Sequential", "Input", "load_model", "layers", "models", "optimizers",
           "losses", "metrics", "callbacks", "utils", "datasets", "zoo", "config", "seeding",
           "CnnlabError", "__version__"]
