"""The epoch loop of ``fit``: batches from the data adapter, one training step each, callbacks,
running sums for the logs, validation after each epoch, and the position a checkpoint records
(``training.progress``) after every batch.
"""

from __future__ import annotations

import warnings

import numpy as np

from cnnlab.training import progress
from cnnlab.training.data import is_batches


class FitLoop:
    """One call of ``fit``.

    ``epochs`` gives each epoch's batches from the state it starts at (``adapter.ArrayEpochs``,
    ``adapter.StreamEpochs``), which a checkpoint keeps; ``comm`` is the MPI communicator of a
    distributed run (None: one process), and ``batch_norm_comm`` the one BatchNormalization
    sums its statistics over."""

    def __init__(self, model, epochs, callbacks, validation=None, batch_size=32, comm=None,
                 batch_norm_comm=None):
        self.model, self.epochs, self.callbacks = model, epochs, callbacks
        self.validation, self.batch_size = validation, batch_size
        self.comm, self.batch_norm_comm = comm, batch_norm_comm

    def run(self, initial_epoch: int, epochs: int, resume: dict | None) -> None:
        model = self.model
        model.stop_training = False
        self.callbacks.on_train_begin()
        try:
            for epoch in range(initial_epoch, epochs):
                self._epoch(epoch, resume)
                resume = None
                if model.stop_training:
                    break
            self.callbacks.on_train_end()
        finally:
            model.fit_position = None

    def _epoch(self, epoch: int, resume: dict | None) -> None:
        model = self.model
        self.callbacks.on_epoch_begin(epoch)
        for _, metric in model.compiled_metrics:
            metric.reset()
        start = self.epochs.state()
        first_step, loss_sum, seen = 0, 0.0, 0
        output_sums = [0.0] * len(model.outputs)
        if resume is not None:                        # continue the epoch the checkpoint was in
            start = resume["shuffle_rng"]
            first_step, partial = resume["step"], resume["partial"]
            loss_sum, seen = float(partial["loss_sum"]), int(partial["seen"])
            for (_, metric), (total, count) in zip(model.compiled_metrics, partial["metrics"]):
                metric.total, metric.count = float(total), int(count)
        logs = model.epoch_logs(loss_sum, seen)
        for batch in self.epochs.batches(start, first_step):
            self.callbacks.on_train_batch_begin(batch.step)
            result = model.train_batch(batch.xs, batch.ys, len(batch.xs[0]) / batch.size,
                                       self.comm, self.batch_norm_comm)
            if not np.isfinite(result.loss):
                warnings.warn(f"Epoch {epoch + 1}, batch {batch.step}: the loss is {result.loss}; "
                              f"training stopped and the weights are those before this batch. "
                              f"Lower the learning rate, or check the data for extreme values.",
                              RuntimeWarning, stacklevel=4)
                model.stop_training = True
                break
            loss_sum += result.loss * batch.size
            output_sums = [s + v * batch.size for s, v in zip(output_sums, result.losses)]
            seen += batch.size
            model.update_metrics(batch.ys, result.outputs, self.comm)
            logs = model.epoch_logs(loss_sum, seen, output_sums)
            model.fit_position = progress.position(model, epoch, batch.step + 1, start,
                                                loss_sum, seen)
            self.callbacks.on_train_batch_end(batch.step, logs)
            if model.stop_training:
                break
        logs = dict(logs)
        if self.validation is not None and seen:
            logs.update({f"val_{k}": v for k, v in self._validate().items()})
        if not model.stop_training:                   # a checkpoint written now resumes next epoch
            model.fit_position = progress.position(model, epoch + 1, 0, self.epochs.state(), 0.0,
                                                0, reset_metrics=True)
        self.callbacks.on_epoch_end(epoch, logs)

    def _validate(self) -> dict:
        if is_batches(self.validation):
            return self.model.evaluate(self.validation, verbose=0, return_dict=True)
        return self.model.evaluate(*self.validation, batch_size=self.batch_size, verbose=0,
                                   return_dict=True)
