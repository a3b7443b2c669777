"""Training a graph.

    trainer.py     compile / fit / evaluate / predict: the epoch loop and Keras' arguments
    step.py        where a batch enters training: forward, losses, backward on every core
    adapter.py     one data adapter for arrays, streams and MPI shards
    progress.py    where a run is, for checkpoints and an exact resume
    parallel.py, workers.py, distributed.py    threads or worker processes over a batch, MPI
                   ranks over a global batch
    losses.py, metrics.py, optimizers.py, callbacks.py    Keras' pieces (public as cnnlab.losses ...)
"""
