"""``compile``, ``fit``, ``evaluate``, ``predict``: the training loop, Keras semantics.

One training step is: forward through every layer, the loss, backward through every layer in
reverse, then one optimizer update over all ``(param, grad)`` pairs. When the model ends in a
softmax and the loss is cross-entropy, the softmax is skipped on the way forward and the loss
takes the logits: the fused gradient ``(p - y) / N`` is exact and never divides by a probability.
"""

from __future__ import annotations

import copy
import functools
import sys
import warnings

import numpy as np

from cnnlab import losses as losses_module
from cnnlab import metrics as metrics_module
from cnnlab import optimizers as optimizers_module
from cnnlab import seeding
from cnnlab.callbacks import CallbackList, History, ProgbarLogger
from cnnlab.errors import ConfigError, DataError, NotBuiltError
from cnnlab.models import checkpoint, parallel
from cnnlab.models.data import (
    as_float,
    batch_slices,
    check_batch_size,
    check_inputs,
    check_pair,
    is_batches,
    split_validation,
)


def _resolve_verbose(verbose) -> int:
    if verbose == "auto":
        interactive = sys.stdout.isatty() or "ipykernel" in sys.modules
        return 1 if interactive else 2
    if verbose not in (0, 1, 2):
        raise ConfigError(f"verbose must be 'auto', 0, 1 or 2. Received: verbose={verbose!r}")
    return int(verbose)


class Trainer:
    """The training half of a model; ``Sequential`` supplies forward, backward and parameters."""

    def __init__(self):
        self.optimizer = None
        self.loss = None
        self.compiled_metrics: list = []
        self._metric_names: list = []
        self.stop_training = False
        self.history = None
        self._loss_mode = None
        self._replicas = None
        self._progress = None       # where fit is, for checkpoints (models.checkpoint)
        self._chief = True          # False on MPI ranks other than 0: they write no files
        self._resume = None         # a checkpoint's training record, consumed by the next fit
        self.metadata: dict = {}    # saved with the model: class names, how inputs were scaled

    # --- compile --------------------------------------------------------------------------------
    def compile(self, optimizer="adam", loss=None, metrics=None) -> None:
        """``optimizer``: 'sgd', 'adam' or an instance; ``loss``: a name, function or Loss;
        ``metrics``: e.g. ``['accuracy']``."""
        if loss is None:
            raise ConfigError("compile needs a loss, e.g. loss='categorical_crossentropy'.")
        self.optimizer = optimizers_module.get(optimizer)
        self.loss = losses_module.get(loss)
        if metrics is not None and not isinstance(metrics, (list, tuple)):
            raise ConfigError(f"metrics must be a list, e.g. ['accuracy']. Received: "
                              f"metrics={metrics!r}")
        self._metric_names = list(metrics or [])
        self.compiled_metrics = []
        self._on_structure_change()

    def _on_structure_change(self):
        self._loss_mode = None
        self.compiled_metrics = []
        self._replicas = None

    def _require_compiled(self, what: str):
        if self.loss is None:
            raise NotBuiltError(f"{what} needs a compiled model: call model.compile(optimizer=..., "
                                f"loss=...) first.")

    def _prepare(self, x, where):
        """Check x, build on first data, and resolve loss mode and metrics."""
        x = check_inputs(x, self.input_shape, where)
        if not self.built:
            self.build(x.shape[1:])
        if self.loss is not None and self._loss_mode is None:
            last = self._layers[-1] if self._layers else None
            if self.loss.fuses_softmax and self.loss.from_logits:
                self._loss_mode = "logits"
            elif self.loss.fuses_softmax and last is not None and last.activation == "softmax":
                self._loss_mode = "fused"
            else:
                self._loss_mode = "outputs"
            units = self.output_shape[-1]
            self.compiled_metrics = [metrics_module.get(m, self.loss.name, units)
                                     for m in self._metric_names]
        return x

    # --- one step -------------------------------------------------------------------------------
    def _forward_loss(self, x, y, training):
        """Returns ``(loss, output for metrics)``; keeps the loss cache for backward."""
        if self._loss_mode == "fused":
            x = self.forward(x, training, stop=len(self._layers) - 1)
            logits = self._layers[-1].forward_logits(x, training)
            loss, self._loss_cache = self.loss.forward_logits(logits, y)
            return loss, logits
        out = self.forward(x, training)
        if self._loss_mode == "logits":
            loss, self._loss_cache = self.loss.forward_logits(out, y)
        else:
            loss, self._loss_cache = self.loss.forward(out, y)
        return loss, out

    def _backward_loss(self, scale: float = 1.0):
        """Backpropagate the loss; ``scale`` weights a shard's mean loss by its share of the batch."""
        if self._loss_mode == "fused":
            grad = self.loss.backward_logits(self._loss_cache)
            if scale != 1.0:
                grad *= scale
            grad = self._layers[-1].backward_logits(grad)
            if grad is not None:
                self.backward(grad, start=len(self._layers) - 2)
        else:
            grad = (self.loss.backward_logits(self._loss_cache) if self._loss_mode == "logits"
                    else self.loss.backward(self._loss_cache))
            if scale != 1.0:
                grad *= scale
            self.backward(grad)

    # --- sharding a batch over threads (models.parallel) ----------------------------------------
    def _shard_models(self, count: int) -> list:
        """This model and ``count - 1`` replicas sharing its parameter arrays."""
        if self._replicas is None or len(self._replicas) < count:
            self._replicas = [self] + [self._replica() for _ in range(count - 1)]
        return self._replicas[:count]

    def _replica(self):
        twin = copy.copy(self)
        twin._layers = [layer.replica() for layer in self._layers]
        twin._loss_cache = None
        twin._replicas = None
        return twin

    def _shard_train(self, x, y, share: float):
        loss, out = self._forward_loss(x, y, training=True)
        self._backward_loss(share)
        return loss, out

    def _gradients(self, x, y, share: float = 1.0):
        """Forward and backward over one batch, split across threads; parameter gradients are
        left in the layers, for the mean loss of the batch times ``share`` (a rank's part of a
        distributed batch). Returns ``(mean loss of this batch, outputs)``."""
        parts = parallel.shards(len(x))
        if parts is None:
            loss, out = self._forward_loss(x, y, training=True)
            self._backward_loss(share)
            return float(loss), out
        models = self._shard_models(len(parts))
        n = len(x)
        results = parallel.run_sharded([
            functools.partial(model._shard_train, x[part], y[part],
                              share * (part.stop - part.start) / n)
            for model, part in zip(models, parts)])
        loss = sum(r[0] * (p.stop - p.start) for r, p in zip(results, parts)) / n
        for index, layer in enumerate(self._layers):      # sum the shards' gradients, in order
            for k, total in enumerate(layer.grads):
                if total is not None:
                    for twin in models[1:]:
                        total += twin._layers[index].grads[k]
        return float(loss), np.concatenate([r[1] for r in results])

    def _train_step(self, x, y):
        loss, out = self._gradients(x, y)
        if np.isfinite(loss):                  # the caller stops on a bad loss: no update
            self.optimizer.apply(self.params_and_grads())
        return loss, out

    def _loss_on_batch(self, x, y):
        """Loss and outputs for evaluation, sharded over threads like a training step."""
        parts = parallel.shards(len(x))
        if parts is None:
            loss, out = self._forward_loss(x, y, training=False)
            return float(loss), out
        models = self._shard_models(len(parts))
        results = parallel.run_sharded([
            functools.partial(model._forward_loss, x[part], y[part], False)
            for model, part in zip(models, parts)])
        loss = sum(float(r[0]) * (p.stop - p.start) for r, p in zip(results, parts)) / len(x)
        return loss, np.concatenate([r[1] for r in results])

    def _predict_batch(self, x):
        parts = parallel.shards(len(x))
        if parts is None:
            return self.forward(x, training=False)
        models = self._shard_models(len(parts))
        return np.concatenate(parallel.run_sharded([
            functools.partial(model.forward, x[part], False) for model, part in zip(models, parts)]))

    # --- the Keras surface ----------------------------------------------------------------------
    def _checked_batch(self, x, y, where):
        """A batch as the network takes it: validated inputs as floats, validated targets."""
        self._require_compiled(where)
        x = self._prepare(x, where)
        check_pair(x, y, where)
        y = self.loss.prepare_targets(y, (len(x), *self.output_shape))
        return as_float(x, self._layers[0].dtype), y

    def train_on_batch(self, x, y) -> float | list[float]:
        x, y = self._checked_batch(x, y, "train_on_batch")
        loss, out = self._train_step(x, y)
        return self._scalar_or_list(loss, y, out)

    def test_on_batch(self, x, y) -> float | list[float]:
        x, y = self._checked_batch(x, y, "test_on_batch")
        loss, out = self._loss_on_batch(x, y)
        return self._scalar_or_list(loss, y, out)

    def predict_on_batch(self, x) -> np.ndarray:
        x = self._prepare(x, "predict_on_batch")
        return self._predict_batch(as_float(x, self._layers[0].dtype))

    def _scalar_or_list(self, loss, y, out):
        if not self.compiled_metrics:
            return loss
        results = [loss]
        for metric in self.compiled_metrics:
            metric.reset()
            metric.update(y, out)
            results.append(metric.result())
        return results

    def fit(self, x=None, y=None, batch_size=32, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, initial_epoch=0,
            steps_per_epoch=None, distributed=False):
        """Train for ``epochs`` passes over ``(x, y)``; returns a ``History``.

        ``x`` may also be a dataset (``image_dataset_from_directory``) or any iterable of
        ``(x, y)`` batches, with ``y=None``; ``steps_per_epoch`` bounds an endless generator.
        ``distributed=True`` (under ``mpirun``) trains data-parallel over MPI ranks, each taking
        its shard of every global batch of ``batch_size`` (see ``cnnlab.distributed``)."""
        self._require_compiled("fit")
        batch_size = check_batch_size(batch_size)
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ConfigError(f"epochs must be a non-negative int. Received: epochs={epochs!r}")
        if not 0 <= initial_epoch <= epochs:
            raise ConfigError(f"initial_epoch must be in [0, epochs={epochs}]. Received: "
                              f"initial_epoch={initial_epoch!r}")
        streaming = is_batches(x)
        if streaming:
            if y is not None or validation_split or distributed:
                raise ConfigError("With a dataset or an iterable of (x, y) batches, pass y=None "
                                  "and validation_data= (validation_split and distributed need "
                                  "arrays).")
            validation = validation_data
        else:
            x = self._prepare(x, "fit")
            check_pair(x, y, "fit")
            y = self.loss.prepare_targets(y, (len(x), *self.output_shape))
            x, y, validation = split_validation(x, y, validation_split)
            if validation_data is not None:
                validation = (validation_data if is_batches(validation_data)
                              else self._check_validation_data(validation_data))
        verbose = _resolve_verbose(verbose)
        dtype = self._layers[0].dtype
        comm = None
        if distributed:
            from cnnlab.distributed import Communicator
            comm = Communicator()
            if self._resume is not None:
                raise ConfigError("Resuming a checkpoint in distributed training is not "
                                  "supported yet; resume it in one process.")
            comm.broadcast_weights(self)                 # every rank starts from rank 0's model
            verbose = verbose if comm.is_chief else 0
        self._chief = comm is None or comm.is_chief

        self.history = History()
        extra = [ProgbarLogger(verbose)] if verbose else []
        steps = (steps_per_epoch or (len(x) if hasattr(x, "__len__") else None)) if streaming \
            else -(-len(x) // batch_size)
        callback_list = CallbackList([self.history, *extra, *(callbacks or [])], self,
                                     {"epochs": epochs, "steps": steps, "verbose": verbose})
        rng = seeding.new_generator()
        if comm is not None:       # rank 0's shuffling everywhere: the batches one process sees
            rng.bit_generator.state = comm.broadcast(rng.bit_generator.state)
        self.stop_training = False
        self._replicas = None        # layers may have changed (trainable, weights) since last time
        resume = self._take_resume(initial_epoch)
        if resume is not None:
            self.history.history = {k: list(v) for k, v in resume["history"].items()}
            checkpoint.restore_rngs(self, resume)
        callback_list.on_train_begin()
        try:
            for epoch in range(initial_epoch, epochs):
                callback_list.on_epoch_begin(epoch)
                for metric in self.compiled_metrics:
                    metric.reset()
                epoch_start_rng = rng.bit_generator.state
                first_step, loss_sum, seen = 0, 0.0, 0
                if resume is not None:          # continue the epoch the checkpoint was in
                    rng.bit_generator.state = epoch_start_rng = resume["shuffle_rng"]
                    first_step, partial = resume["step"], resume["partial"]
                    loss_sum, seen = float(partial["loss_sum"]), int(partial["seen"])
                    for metric, (total, count) in zip(self.compiled_metrics, partial["metrics"]):
                        metric.total, metric.count = float(total), int(count)
                    resume = None
                logs = self._epoch_logs(loss_sum, seen)
                if streaming:
                    source = self._stream(x, "fit", steps_per_epoch)
                    first_step = 0       # a stream cannot be rewound: redo the epoch whole
                else:
                    order = rng.permutation(len(x)) if shuffle else None
                    source = ((None, None, index)
                              for index in batch_slices(len(x), batch_size, order))
                for step, (x_batch, y_batch, index) in enumerate(source):
                    if step < first_step:
                        continue
                    callback_list.on_train_batch_begin(step)
                    if streaming:
                        loss, out = self._train_step(x_batch, y_batch)
                        count = len(out)
                    elif comm is None:
                        y_batch = y[index]
                        loss, out = self._train_step(as_float(x[index], dtype), y_batch)
                        count = len(out)
                    else:
                        loss, out, index, count = self._distributed_step(comm, x, y, index,
                                                                         dtype)
                        y_batch = y[index]
                    if not np.isfinite(loss):
                        warnings.warn(f"Epoch {epoch + 1}, batch {step}: the loss is {loss}; "
                                      f"training stopped and the weights are those before this "
                                      f"batch. Lower the learning rate, or check the data for "
                                      f"extreme values.", RuntimeWarning, stacklevel=2)
                        self.stop_training = True
                        break
                    loss_sum += loss * count
                    seen += count
                    for metric in self.compiled_metrics:
                        before = (metric.total, metric.count)
                        metric.update(y_batch, out)
                        if comm is not None:             # add up every rank's share
                            metric.total = before[0] + comm.sum(metric.total - before[0])
                            metric.count = before[1] + int(comm.sum(metric.count - before[1]))
                    logs = self._epoch_logs(loss_sum, seen)
                    self._progress = self._position(epoch, step + 1, epoch_start_rng, loss_sum,
                                                     seen)
                    callback_list.on_train_batch_end(step, logs)
                    if self.stop_training:
                        break
                epoch_logs = dict(logs)
                if validation is not None and seen:
                    val = (self.evaluate(validation, verbose=0, return_dict=True)
                           if is_batches(validation) else
                           self.evaluate(*validation, batch_size=batch_size, verbose=0,
                                         return_dict=True))
                    epoch_logs.update({f"val_{k}": v for k, v in val.items()})
                if not self.stop_training:      # a checkpoint written now resumes next epoch
                    self._progress = self._position(epoch + 1, 0, rng.bit_generator.state, 0.0, 0,
                                                    reset_metrics=True)
                callback_list.on_epoch_end(epoch, epoch_logs)
                if self.stop_training:
                    break
            callback_list.on_train_end()
        finally:
            self._progress = None
        return self.history

    def _stream(self, batches, where, steps=None):
        """Checked ``(x, y, None)`` from an iterable of ``(x, y)`` batches (builds the model on
        the first)."""
        for step, batch in enumerate(batches):
            if steps is not None and step >= steps:
                return
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise DataError(f"{where}: each batch must be a pair (x, y); received "
                                f"{type(batch).__name__}.")
            x_batch, y_batch = batch
            x_batch = self._prepare(x_batch, where)
            check_pair(x_batch, y_batch, where)
            y_batch = self.loss.prepare_targets(y_batch, (len(x_batch), *self.output_shape))
            yield as_float(x_batch, self._layers[0].dtype), y_batch, None

    def _distributed_step(self, comm, x, y, index, dtype):
        """One global batch over MPI: this rank's shard, gradients summed over all ranks."""
        batch = np.arange(len(x))[index] if isinstance(index, slice) else index
        mine = batch[comm.shard(len(batch))]
        if len(mine):
            loss, out = self._gradients(as_float(x[mine], dtype), y[mine],
                                        share=len(mine) / len(batch))
        else:                                            # fewer samples than ranks
            loss, out = 0.0, np.zeros((0, *self.output_shape), dtype=dtype)
            for layer in self._layers:
                layer.grads = [np.zeros_like(w) for w in layer.weights]
        comm.sum_gradients(self)
        loss = comm.sum(loss * len(mine)) / len(batch)
        if np.isfinite(loss):
            self.optimizer.apply(self.params_and_grads())
        return loss, out, mine, len(batch)

    def _epoch_logs(self, loss_sum, seen) -> dict:
        if not seen:
            return {}
        return {"loss": loss_sum / seen, **{m.name: m.result() for m in self.compiled_metrics}}

    def _position(self, epoch, step, shuffle_rng, loss_sum, seen, reset_metrics=False) -> dict:
        metrics = [[0.0, 0] if reset_metrics else [m.total, m.count]
                   for m in self.compiled_metrics]
        return {"epoch": epoch, "step": step, "shuffle_rng": shuffle_rng,
                "partial": {"loss_sum": loss_sum, "seen": seen, "metrics": metrics}}

    def _take_resume(self, initial_epoch):
        """The checkpoint's record, if this fit continues from it (``initial_epoch`` matches)."""
        record, self._resume = self._resume, None
        if record is None:
            return None
        if record["epoch"] != initial_epoch:
            warnings.warn(f"This model was loaded from a checkpoint taken at epoch "
                          f"{record['epoch']}, batch {record['step']}; fit(initial_epoch="
                          f"{initial_epoch}) starts elsewhere, so it is not resumed exactly. Pass "
                          f"initial_epoch={record['epoch']} to continue where it stopped.",
                          RuntimeWarning, stacklevel=3)
            return None
        return record

    @property
    def training_state(self) -> dict | None:
        """Where a loaded checkpoint stopped: ``{'epoch': ..., 'step': ...}``, else None."""
        return None if self._resume is None else {"epoch": self._resume["epoch"],
                                                  "step": self._resume["step"]}

    def _check_validation_data(self, validation_data):
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ConfigError("validation_data must be a tuple (x_val, y_val).")
        x_val, y_val = validation_data
        x_val = check_inputs(x_val, self.input_shape, "fit(validation_data)")
        check_pair(x_val, y_val, "fit(validation_data)")
        return x_val, self.loss.prepare_targets(y_val, (len(x_val), *self.output_shape))

    def evaluate(self, x=None, y=None, batch_size=32, verbose="auto", return_dict=False,
                 callbacks=None):
        """Loss (and metrics) over ``(x, y)``: a scalar, ``[loss, metric...]`` or a dict."""
        self._require_compiled("evaluate")
        batch_size = check_batch_size(batch_size)
        if is_batches(x):
            source = ((xb, yb) for xb, yb, _ in self._stream(x, "evaluate"))
        else:
            x = self._prepare(x, "evaluate")
            check_pair(x, y, "evaluate")
            y = self.loss.prepare_targets(y, (len(x), *self.output_shape))
            dtype = self._layers[0].dtype
            source = ((as_float(x[index], dtype), y[index])
                      for index in batch_slices(len(x), batch_size))
        callback_list = CallbackList(callbacks or [], self, {})
        callback_list.on_test_begin()
        for metric in self.compiled_metrics:
            metric.reset()
        loss_sum, seen = 0.0, 0
        for step, (x_batch, y_batch) in enumerate(source):
            callback_list.on_test_batch_begin(step)
            loss, out = self._loss_on_batch(x_batch, y_batch)
            loss_sum += loss * len(out)
            seen += len(out)
            for metric in self.compiled_metrics:
                metric.update(y_batch, out)
            callback_list.on_test_batch_end(step)
        if not seen:
            raise DataError("evaluate: the data has no samples.")
        results = {"loss": loss_sum / seen,
                   **{m.name: m.result() for m in self.compiled_metrics}}
        callback_list.on_test_end(results)
        if _resolve_verbose(verbose):
            print(" - ".join(f"{k}: {v:.4f}" for k, v in results.items()))
        if return_dict:
            return results
        return results["loss"] if len(results) == 1 else list(results.values())

    def predict(self, x, batch_size=32, verbose="auto", callbacks=None) -> np.ndarray:
        """The model's outputs for every sample of ``x``, computed in batches."""
        batch_size = check_batch_size(batch_size)
        if is_batches(x):                   # batches of x, or of (x, y): the labels are unused
            source = (self._prepare(b[0] if isinstance(b, (tuple, list)) else b, "predict")
                      for b in x)
        else:
            x = self._prepare(x, "predict")
            source = (x[index] for index in batch_slices(len(x), batch_size))
        callback_list = CallbackList(callbacks or [], self, {})
        callback_list.on_predict_begin()
        outputs = []
        for step, x_batch in enumerate(source):
            callback_list.on_predict_batch_begin(step)
            outputs.append(self._predict_batch(as_float(x_batch, self._layers[0].dtype)))
            callback_list.on_predict_batch_end(step)
        callback_list.on_predict_end()
        return np.concatenate(outputs)
