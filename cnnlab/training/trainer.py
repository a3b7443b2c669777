"""``compile``, ``fit``, ``evaluate``, ``predict``: Keras' training surface over any graph.

The pieces live beside this module: a batch enters training in ``training.step.run_batch``
(forward, losses, backward, on every core); data comes through ``training.adapter``; the epoch
loop is ``training.loop``; where a run is, for checkpoints and resume, is ``training.progress``.
This module checks Keras' arguments and puts those pieces together.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np

from cnnlab import seeding
from cnnlab.engine import arrays, devices
from cnnlab.errors import ConfigError, DataError, NotBuiltError
from cnnlab.graph import execute
from cnnlab.layers.normalization import warn_if_statistics_unsettled
from cnnlab.training import losses as losses_module
from cnnlab.training import metrics as metrics_module
from cnnlab.training import optimizers as optimizers_module
from cnnlab.training import progress, step, workers
from cnnlab.training.adapter import Adapter, ArrayEpochs, StreamEpochs, split_validation
from cnnlab.training.callbacks import CallbackList, History, ProgbarLogger
from cnnlab.training.data import check_batch_size, is_batches
from cnnlab.training.loop import FitLoop


def _resolve_verbose(verbose) -> int:
    if verbose == "auto":
        interactive = sys.stdout.isatty() or "ipykernel" in sys.modules
        return 1 if interactive else 2
    if verbose not in (0, 1, 2):
        raise ConfigError(f"verbose must be 'auto', 0, 1 or 2. Received: verbose={verbose!r}")
    return int(verbose)


def _per_output(value, names: list[str], what: str, default=None) -> list:
    """A compile argument given once, as a list, or as a dict by output name -> one per output."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ConfigError(f"compile: {what} names outputs {unknown}; the model's outputs are "
                              f"{names}.")
        return [value.get(n, default) for n in names]
    if isinstance(value, (list, tuple)):
        if len(value) != len(names):
            raise ConfigError(f"compile: {what} has {len(value)} entries; the model has "
                              f"{len(names)} outputs {names}.")
        return list(value)
    return [value] * len(names)


class Trainer:
    """The training half of a model; the graph half (``graph.Functional``) runs it."""

    def _init_training(self):
        self.optimizer = None
        self.loss = None
        self.compiled_losses: list = []
        self.loss_weights: list[float] = []
        self.compiled_metrics: list = []           # (output index, metric), once resolved
        self._metric_names: list = []
        self.stop_training = False
        self.history = None
        #: where ``fit`` is (the next batch, the epoch's sums so far; ``training.progress``):
        #: set by the fit loop after every batch, None outside ``fit``
        self.fit_position = None
        self._chief = True          # False on MPI ranks other than 0: they write no files
        self._resume = None         # a checkpoint's training record, consumed by the next fit
        self.metadata: dict = {}    # saved with the model: class names, how inputs were scaled
        #: scratch buffers (im2col columns, kernel spectra) kept between steps, per thread and
        #: call site; the training step and the model's own calls hand them to every layer
        self.workspaces = execute.Workspaces()

    # --- compile --------------------------------------------------------------------------------
    def compile(self, optimizer="adam", loss=None, metrics=None, loss_weights=None) -> None:
        """``optimizer``: 'sgd', 'adam' or an instance; ``loss``: a name, function or Loss (or
        one per output: a list, or a dict by output name); ``metrics``: e.g. ``['accuracy']``;
        ``loss_weights``: per output, for the total loss."""
        if loss is None:
            raise ConfigError("compile needs a loss, e.g. loss='categorical_crossentropy'.")
        if metrics is not None and not isinstance(metrics, (list, tuple, dict)):
            raise ConfigError(f"metrics must be a list, e.g. ['accuracy']. Received: "
                              f"metrics={metrics!r}")
        self.optimizer = optimizers_module.get(optimizer)
        self.loss = loss if isinstance(loss, (list, tuple, dict)) else losses_module.get(loss)
        self._loss_spec, self._weights_spec = loss, loss_weights
        self._metric_names = list(metrics) if isinstance(metrics, (list, tuple)) else (
            metrics or [])
        self.compiled_losses, self.compiled_metrics = [], []

    def _require_compiled(self, what: str):
        if self.loss is None:
            raise NotBuiltError(f"{what} needs a compiled model: call model.compile(optimizer=..., "
                                f"loss=...) first.")

    def _resolve_compile(self):
        """Losses, weights and metrics per output, once the outputs are known (a Sequential
        without an input shape knows them after its first data)."""
        if self.compiled_losses or self.loss is None or not self.built:
            return
        names = self.output_names
        specs = _per_output(self._loss_spec, names, "loss")
        self.compiled_losses = [None if s is None else losses_module.get(s) for s in specs]
        if all(s is None for s in self.compiled_losses):
            raise ConfigError("compile: every output's loss is None; at least one needs a loss.")
        weights = _per_output(self._weights_spec if self._weights_spec is not None else 1.0,
                              names, "loss_weights", 1.0)
        self.loss_weights = [float(w) for w in weights]
        metric_lists = (_per_output(self._metric_names, names, "metrics", [])
                        if isinstance(self._metric_names, dict) else
                        [self._metric_names] * len(names))
        self.compiled_metrics = []
        for index, (loss, shape, wanted) in enumerate(zip(self.compiled_losses,
                                                          self.output_shapes, metric_lists)):
            for name in (wanted if isinstance(wanted, (list, tuple)) else [wanted]):
                metric = metrics_module.get(name, loss.name if loss else "", shape[-1])
                if len(names) > 1:
                    metric.name = f"{names[index]}_{metric.name}"
                self.compiled_metrics.append((index, metric))

    def _adapter(self, where: str) -> Adapter:
        device = devices.resolve()           # device 'gpu' where there is none: say so first
        self._resolve_compile()
        return Adapter(self, where, device)

    # --- one batch: the step API the fit loop (``training.loop``) and evaluate use -----------
    def train_batch(self, xs, ys, share: float = 1.0, comm=None, batch_norm_comm=None):
        """Gradients of the batch's mean loss (over MPI ranks too), then one update."""
        result = step.run_batch(self, xs, ys, training=True, share=share, comm=batch_norm_comm)
        if comm is not None:
            comm.sum_gradients(result.grads, [v for _, v in self.named_trainable_params()])
            result.loss = comm.sum(result.loss * share)
        if np.isfinite(result.loss):                 # the caller stops on a bad loss: no update
            step.apply_update(self, result)
        return result

    def epoch_logs(self, loss_sum, seen, output_sums=None) -> dict:
        """The logs callbacks see: the mean loss over ``seen`` samples (and each output's), and
        every metric's result so far."""
        if not seen:
            return {}
        logs = {"loss": loss_sum / seen}
        if len(self.outputs) > 1 and output_sums is not None:
            logs.update({f"{name}_loss": total / seen
                         for name, total in zip(self.output_names, output_sums)})
        logs.update({m.name: m.result() for _, m in self.compiled_metrics})
        return logs

    def update_metrics(self, ys, outputs, comm=None):
        """Add a batch to every compiled metric (and, over MPI, every rank's share of it)."""
        for index, metric in self.compiled_metrics:
            before = (metric.total, metric.count)
            metric.update(ys[index], outputs[index])
            if comm is not None:                          # add up every rank's share
                metric.total = before[0] + comm.sum(metric.total - before[0])
                metric.count = before[1] + int(comm.sum(metric.count - before[1]))

    def _scalar_or_list(self, result, ys):
        if not self.compiled_metrics and len(self.outputs) == 1:
            return result.loss
        values = [result.loss]
        if len(self.outputs) > 1:
            values += result.losses
        for index, metric in self.compiled_metrics:
            metric.reset()
            metric.update(ys[index], result.outputs[index])
            values.append(metric.result())
        return values

    def loss_and_gradients(self, x, y, training: bool = True):
        """One batch's mean loss, the outputs the metrics read (logits where a softmax went into
        the loss) and ``{parameter name: gradient}``, without updating anything: what
        ``train_on_batch`` would apply, for checks and custom loops."""
        self._require_compiled("loss_and_gradients")
        adapter = self._adapter("loss_and_gradients")
        xs = adapter.inputs(x)
        ys = adapter.targets(y, len(xs[0]))
        result = step.run_batch(self, adapter.floats(xs, slice(None)), ys, training=training,
                                want_grads=True)
        outputs = result.outputs[0] if len(result.outputs) == 1 else result.outputs
        return result.loss, outputs, {name: arrays.to_host(result.grads[v])
                                      for name, v in self.named_trainable_params()
                                      if v in result.grads}

    def train_on_batch(self, x, y):
        self._require_compiled("train_on_batch")
        adapter = self._adapter("train_on_batch")
        xs = adapter.inputs(x)
        ys = adapter.targets(y, len(xs[0]))
        return self._scalar_or_list(self.train_batch(adapter.floats(xs, slice(None)), ys), ys)

    def test_on_batch(self, x, y):
        self._require_compiled("test_on_batch")
        adapter = self._adapter("test_on_batch")
        xs = adapter.inputs(x)
        ys = adapter.targets(y, len(xs[0]))
        result = step.run_batch(self, adapter.floats(xs, slice(None)), ys, training=False)
        return self._scalar_or_list(result, ys)

    def predict_on_batch(self, x):
        adapter = self._adapter("predict_on_batch")
        outputs = step.predict_batch(self, adapter.floats(adapter.inputs(x), slice(None)))
        return outputs[0] if len(outputs) == 1 else outputs

    # --- fit ------------------------------------------------------------------------------------
    def fit(self, x=None, y=None, batch_size=32, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, initial_epoch=0,
            steps_per_epoch=None, distributed=False, sync_batch_norm=True):
        """Train for ``epochs`` passes over ``(x, y)``; returns a ``History``.

        ``x`` may also be a dataset (``image_dataset_from_directory``) or any iterable of
        ``(x, y)`` batches, with ``y=None``; ``steps_per_epoch`` bounds an endless generator.
        ``distributed=True`` (under ``mpirun``) trains data-parallel over MPI ranks, each taking
        its shard of every global batch of ``batch_size`` (see ``training.distributed``);
        BatchNormalization then uses the whole global batch's statistics, or, with
        ``sync_batch_norm=False``, each rank's own (faster; PyTorch DDP's default)."""
        self._require_compiled("fit")
        batch_size = check_batch_size(batch_size)
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ConfigError(f"epochs must be a non-negative int. Received: epochs={epochs!r}")
        if not 0 <= initial_epoch <= epochs:
            raise ConfigError(f"initial_epoch must be in [0, epochs={epochs}]. Received: "
                              f"initial_epoch={initial_epoch!r}")
        adapter = self._adapter("fit")
        streaming = is_batches(x)
        if streaming:
            if y is not None or validation_split or distributed:
                raise ConfigError("With a dataset or an iterable of (x, y) batches, pass y=None "
                                  "and validation_data= (validation_split and distributed need "
                                  "arrays).")
            validation = validation_data
        else:
            xs = adapter.inputs(x)
            ys = adapter.targets(y, len(xs[0]))
            xs, ys, validation = split_validation(xs, ys, validation_split)
            if validation_data is not None:
                validation = (validation_data if is_batches(validation_data)
                              else self._validation_arrays(validation_data))
        verbose = _resolve_verbose(verbose)
        comm = None
        if distributed:
            if adapter.device == "gpu":
                raise ConfigError("Distributed training runs on the CPU only for now; pass "
                                  "--device cpu (cnnlab.config.set_device('cpu')) with it.")
            from cnnlab.training.distributed import Communicator
            comm = Communicator()
            if self._resume is not None:
                raise ConfigError("Resuming a checkpoint in distributed training is not "
                                  "supported yet; resume it in one process.")
            comm.broadcast_arrays(self.weights)          # every rank starts from rank 0's model
            comm.own_random_streams(step.random_layers(self))
            verbose = verbose if comm.is_chief else 0
        self._chief = comm is None or comm.is_chief

        self.history = History()
        extra = [ProgbarLogger(verbose)] if verbose else []
        steps = (steps_per_epoch or (len(x) if hasattr(x, "__len__") else None)) if streaming \
            else -(-len(xs[0]) // batch_size)
        callback_list = CallbackList([self.history, *extra, *(callbacks or [])], self,
                                     {"epochs": epochs, "steps": steps, "verbose": verbose})
        rng = seeding.new_generator()
        if comm is not None:       # rank 0's shuffling everywhere: the batches one process sees
            rng.bit_generator.state = comm.broadcast(rng.bit_generator.state)

        epochs_source = (StreamEpochs(adapter, x, steps_per_epoch) if streaming
                         else ArrayEpochs(adapter, xs, ys, batch_size, shuffle, rng, comm))

        resume = self._take_resume(initial_epoch)
        if resume is not None:
            self.history.history = {k: list(v) for k, v in resume["history"].items()}
            progress.restore_generators(self, resume)
        try:
            FitLoop(self, epochs_source, callback_list, validation, batch_size, comm,
                    comm if sync_batch_norm else None).run(initial_epoch, epochs, resume)
        finally:
            # the free lists and call sites' buffers (a step's outputs, ``engine.arrays.
            # FreeList``; Winograd's kept tiles; im2col's columns) are a step's worth of memory: kept
            # between the steps of a fit, handed back at its end; so are the shard workers'
            self.workspaces = execute.Workspaces()
            workers.close(self)
        if comm is not None and not sync_batch_norm:      # one set of moving statistics
            comm.broadcast_arrays([v.value for v in self.variables if v.kind == "state"])
        return self.history

    def _validation_arrays(self, validation_data):
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ConfigError("validation_data must be a tuple (x_val, y_val).")
        adapter = self._adapter("fit(validation_data)")
        xs = adapter.inputs(validation_data[0])
        return xs, adapter.targets(validation_data[1], len(xs[0]))

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

    # --- evaluate and predict -------------------------------------------------------------------
    def evaluate(self, x=None, y=None, batch_size=32, verbose="auto", return_dict=False,
                 callbacks=None):
        """Loss (and metrics) over ``(x, y)``: a scalar, ``[loss, ...]`` or a dict."""
        self._require_compiled("evaluate")
        batch_size = check_batch_size(batch_size)
        if self.fit_position is None:          # not fit's own validation: training is over
            warn_if_statistics_unsettled(self)
        adapter = self._adapter("evaluate")
        if is_batches(x):
            source = adapter.stream_epoch(x)
        else:
            xs = adapter.inputs(x)
            ys = adapter.targets(y, len(xs[0]))
            source = adapter.array_epoch(xs, ys, batch_size)
        callback_list = CallbackList(callbacks or [], self, {})
        callback_list.on_test_begin()
        for _, metric in self.compiled_metrics:
            metric.reset()
        loss_sum, seen, output_sums = 0.0, 0, [0.0] * len(self.outputs)
        for batch in source:
            callback_list.on_test_batch_begin(batch.step)
            result = step.run_batch(self, batch.xs, batch.ys, training=False)
            loss_sum += result.loss * batch.size
            output_sums = [s + v * batch.size for s, v in zip(output_sums, result.losses)]
            seen += batch.size
            self.update_metrics(batch.ys, result.outputs)
            callback_list.on_test_batch_end(batch.step)
        if not seen:
            raise DataError("evaluate: the data has no samples.")
        results = self.epoch_logs(loss_sum, seen, output_sums)
        callback_list.on_test_end(results)
        if _resolve_verbose(verbose):
            print(" - ".join(f"{k}: {v:.4f}" for k, v in results.items()))
        if return_dict:
            return results
        return results["loss"] if len(results) == 1 else list(results.values())

    def predict(self, x, batch_size=32, verbose="auto", callbacks=None):
        """The model's outputs for every sample of ``x``, computed in batches (a list of arrays
        for a model with several outputs)."""
        batch_size = check_batch_size(batch_size)
        adapter = self._adapter("predict")
        if is_batches(x):                   # batches of x, or of (x, y): the labels are unused
            source = adapter.stream_epoch(x, with_targets=False)
        else:
            xs = adapter.inputs(x)
            source = adapter.array_epoch(xs, [], batch_size)
        callback_list = CallbackList(callbacks or [], self, {})
        callback_list.on_predict_begin()
        outputs = []
        for batch in source:
            callback_list.on_predict_batch_begin(batch.step)
            outputs.append(step.predict_batch(self, batch.xs))
            callback_list.on_predict_batch_end(batch.step)
        callback_list.on_predict_end()
        merged = [np.concatenate([o[i] for o in outputs]) for i in range(len(self.outputs))]
        return merged[0] if len(merged) == 1 else merged
