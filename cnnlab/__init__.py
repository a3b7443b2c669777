"""cnnlab: convolutional neural networks from scratch on NumPy, with a Keras-compatible API.

The floors, bottom first; each imports only floors below it, lazily or not (``lint-imports``
checks it in CI, against the contract in pyproject.toml):

    config, errors, atomic, seeding, outputs, version   settings, errors, safe file writes
    engine/      NumPy ops (Numba kernels beside them), forward and backward side by side
    layers/      Keras-named layers that hold variables and call the engine; symbolic tensors
    graph/       a graph of layer calls: topological order, the forward tape and its backward walk,
                 the fusions, the summary
    training/    the step, the epoch loop and its data adapter, progress and resume; losses,
                 metrics, optimizers, callbacks, thread and MPI parallelism
    io/          the .cnnlab file, checkpoints, ONNX / PyTorch / Keras converters
    models/      Model and Sequential: a graph that trains, saves and loads; transfer learning
    callbacks, losses, metrics, optimizers, export   the public names of training/ and io/
    mixed_precision  Keras' names for config's dtype policy
    data/        data in: named datasets, image folders, pictures, video frames, a run's data
    zoo/         architectures, recipes and shipped weights; ``find``, a model by any name
                 (``datasets``, ``utils``, ``preprocess``: Keras' names for parts of data/)
    runs         a training run from its settings
    viz/, tasks/ pictures and reports; detection, search, video
    serve/       the web app
    cli/         the command line
"""

from cnnlab import (
    callbacks,
    config,
    datasets,
    layers,
    losses,
    metrics,
    mixed_precision,
    models,
    optimizers,
    seeding,
    utils,
    zoo,
)
from cnnlab.errors import CnnlabError
from cnnlab.layers import Input
from cnnlab.models import Model, Sequential, load_model
from cnnlab.version import __version__

__all__ = ["Model", "Sequential", "Input", "load_model", "layers", "models", "optimizers",
           "losses", "metrics", "mixed_precision", "callbacks", "utils", "datasets", "zoo",
           "config", "seeding", "CnnlabError", "__version__"]
