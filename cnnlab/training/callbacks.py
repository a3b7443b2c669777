"""Callbacks with Keras' hook names, called by ``Sequential.fit``/``evaluate``/``predict``.

>>> class Recorder(Callback):
...     def on_epoch_end(self, epoch, logs=None):
...         print(epoch, sorted(logs))
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time

import numpy as np

from cnnlab.errors import ConfigError

#: what ``cnnlab.callbacks`` (the public module) exports
__all__ = ["Callback", "CallbackList", "History", "ProgbarLogger", "CSVLogger", "EarlyStopping",
           "LearningRateScheduler", "ModelCheckpoint", "ReduceLROnPlateau", "TerminateOnNaN"]


class Callback:
    """Base class: override the hooks you need. ``self.model`` is set before training begins."""

    def __init__(self):
        self.model = None
        self.params: dict = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params: dict):
        self.params = params

    def on_train_begin(self, logs=None): ...
    def on_train_end(self, logs=None): ...
    def on_epoch_begin(self, epoch, logs=None): ...
    def on_epoch_end(self, epoch, logs=None): ...
    def on_train_batch_begin(self, batch, logs=None): ...
    def on_train_batch_end(self, batch, logs=None): ...
    def on_test_begin(self, logs=None): ...
    def on_test_end(self, logs=None): ...
    def on_test_batch_begin(self, batch, logs=None): ...
    def on_test_batch_end(self, batch, logs=None): ...
    def on_predict_begin(self, logs=None): ...
    def on_predict_end(self, logs=None): ...
    def on_predict_batch_begin(self, batch, logs=None): ...
    def on_predict_batch_end(self, batch, logs=None): ...


class CallbackList:
    """Fans each hook out to every callback."""

    def __init__(self, callbacks, model, params):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            cb.set_model(model)
            cb.set_params(params)

    def __getattr__(self, hook):
        if not hook.startswith("on_"):
            raise AttributeError(hook)

        def call_all(*args, **kwargs):
            for cb in self.callbacks:
                getattr(cb, hook)(*args, **kwargs)
        return call_all


class History(Callback):
    """Records every epoch's logs: ``history.history['loss']`` etc. ``fit`` returns it."""

    def __init__(self):
        super().__init__()
        self.epoch: list[int] = []
        self.history: dict[str, list[float]] = {}

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)


def _format_logs(logs) -> str:
    return " - ".join(f"{k}: {v:.4f}" for k, v in logs.items() if isinstance(v, (int, float)))


class ProgbarLogger(Callback):
    """Progress output. ``verbose=1``: a tqdm bar per epoch with ETA, loss and metrics, redrawn
    in place at most ~3 times a second (so logs and notebooks are not flooded); ``verbose=2``:
    one line per epoch."""

    def __init__(self, verbose: int = 1, stream=None):
        super().__init__()
        self.verbose = verbose
        self.stream = stream or sys.stdout
        self._bar = None
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        total_epochs = self.params.get("epochs", 1)
        if self.verbose == 1:
            from tqdm.auto import tqdm
            # In a terminal the bar is redrawn in place; in a log file every redraw stays, so
            # redraw rarely there.
            interactive = getattr(self.stream, "isatty", lambda: False)()
            self._bar = tqdm(total=self.params.get("steps"), desc=f"Epoch {epoch + 1}/{total_epochs}",
                             unit="batch", file=self.stream, mininterval=0.3 if interactive else 10,
                             dynamic_ncols=True, leave=True)

    def on_train_batch_end(self, batch, logs=None):
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix({k: f"{v:.4f}" for k, v in (logs or {}).items()}, refresh=False)

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4f}" for k, v in (logs or {}).items()}, refresh=False)
            self._bar.close()
            self._bar = None
        elif self.verbose == 2:
            print(f"Epoch {epoch + 1}/{self.params.get('epochs', 1)} - {seconds:.1f}s - "
                  f"{_format_logs(logs or {})}", file=self.stream, flush=True)

    def on_train_end(self, logs=None):
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _improved(mode: str, current: float, best: float, min_delta: float) -> bool:
    return current < best - min_delta if mode == "min" else current > best + min_delta


def _resolve_mode(mode: str, monitor: str, owner: str) -> str:
    if mode not in ("auto", "min", "max"):
        raise ConfigError(f"{owner}: mode must be 'auto', 'min' or 'max'. Received: mode={mode!r}")
    if mode == "auto":
        return "max" if ("acc" in monitor or monitor.startswith("fmeasure")) else "min"
    return mode


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs."""

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=False, start_from_epoch=0):
        super().__init__()
        self.monitor, self.min_delta, self.patience = monitor, abs(min_delta), patience
        self.verbose, self.baseline = verbose, baseline
        self.restore_best_weights, self.start_from_epoch = restore_best_weights, start_from_epoch
        self.mode = _resolve_mode(mode, monitor, "EarlyStopping")
        self.stopped_epoch = 0

    def on_train_begin(self, logs=None):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = self.baseline if self.baseline is not None else (
            math.inf if self.mode == "min" else -math.inf)
        self.best_weights = None
        self.best_epoch = 0

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()
        self.wait += 1
        if _improved(self.mode, current, self.best, self.min_delta):
            self.best, self.best_epoch, self.wait = current, epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True
            if self.restore_best_weights and self.best_weights is not None:
                self.model.set_weights(self.best_weights)
            if self.verbose:
                print(f"Epoch {epoch + 1}: early stopping; best {self.monitor} "
                      f"{self.best:.4f} at epoch {self.best_epoch + 1}")


class ModelCheckpoint(Callback):
    """Save the model during training; ``filepath`` may use ``{epoch}`` and log keys, e.g.
    ``'ckpt-{epoch:02d}-{val_loss:.2f}.cnnlab'``.

    ``save_freq='epoch'`` saves after every epoch, an int after every that many batches. A full
    save (``save_weights_only=False``) is a checkpoint: weights, optimizer state, the epoch and
    batch position and every random generator's state, so ``load_model`` followed by
    ``fit(..., initial_epoch=model.training_state['epoch'])`` continues exactly where it was.
    Writes are atomic: a crash mid-save leaves the previous file intact.
    """

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False,
                 save_weights_only=False, mode="auto", save_freq="epoch"):
        super().__init__()
        self.filepath, self.monitor, self.verbose = os.fspath(filepath), monitor, verbose
        self.save_best_only, self.save_weights_only = save_best_only, save_weights_only
        self.mode = _resolve_mode(mode, monitor, "ModelCheckpoint")
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(save_freq, int)
                                     or save_freq <= 0):
            raise ConfigError(f"ModelCheckpoint: save_freq must be 'epoch' or a positive number "
                              f"of batches. Received: save_freq={save_freq!r}")
        self.save_freq = save_freq
        self.best = math.inf if self.mode == "min" else -math.inf
        self._batches = 0
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        self._batches += 1
        if self._batches >= self.save_freq:
            self._batches = 0
            self._save(self._epoch, logs or {})

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch, logs or {})

    def _save(self, epoch, logs):
        if not getattr(self.model, "_chief", True):      # distributed: rank 0 writes
            return
        if self.save_best_only:
            current = logs.get(self.monitor)
            if current is None or not _improved(self.mode, current, self.best, 0.0):
                return
            self.best = current
        path = self.filepath.format(epoch=epoch + 1, **logs)
        # the folder is part of the path the user gave (Keras makes it too)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)
        if self.verbose:
            print(f"Epoch {epoch + 1}: saved {path}")


class CSVLogger(Callback):
    """One row of logs per epoch in a CSV file, rewritten atomically after every epoch (a crash
    never leaves half a row)."""

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.filename, self.separator, self.append = os.fspath(filename), separator, append
        self._rows: list[list[str]] = []

    def on_train_begin(self, logs=None):
        self._rows = []
        if self.append and os.path.exists(self.filename):
            with open(self.filename, newline="") as handle:
                self._rows = list(csv.reader(handle, delimiter=self.separator))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not self._rows:
            self._rows.append(["epoch", *sorted(logs)])
        keys = self._rows[0][1:]
        self._rows.append([str(epoch), *(str(logs.get(k, "")) for k in keys)])
        if not getattr(self.model, "_chief", True):      # distributed: rank 0 writes
            return
        from cnnlab.atomic import atomic_write
        with atomic_write(self.filename, "w") as handle:
            csv.writer(handle, delimiter=self.separator, lineterminator="\n").writerows(self._rows)


class LearningRateScheduler(Callback):
    """``schedule(epoch, lr) -> new lr``, applied at the start of every epoch."""

    def __init__(self, schedule, verbose=0):
        super().__init__()
        self.schedule, self.verbose = schedule, verbose

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self.model.optimizer
        lr = float(self.schedule(epoch, _settable_learning_rate(optimizer,
                                                                "LearningRateScheduler")))
        if not np.isfinite(lr) or lr <= 0:
            raise ConfigError(f"LearningRateScheduler: the schedule returned learning rate {lr} "
                              f"for epoch {epoch}; expected a positive finite number.")
        optimizer.learning_rate = lr
        if self.verbose:
            print(f"Epoch {epoch + 1}: learning rate {lr:.6g}")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = self.model.optimizer.current_learning_rate()


def _settable_learning_rate(optimizer, owner: str) -> float:
    """The optimizer's learning rate, when it is a number a callback may change."""
    from cnnlab.training.schedules import LearningRateSchedule
    if isinstance(optimizer.learning_rate, LearningRateSchedule):
        raise ConfigError(f"{owner} sets the learning rate, but this optimizer's comes from a "
                          f"schedule ({type(optimizer.learning_rate).__name__}); use one or the "
                          f"other.")
    return float(optimizer.learning_rate)


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` has not improved by
    ``min_delta`` for ``patience`` epochs, then wait ``cooldown`` epochs before counting again;
    never below ``min_lr``. Keras' rule, step for step."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto",
                 min_delta=1e-4, cooldown=0, min_lr=0.0):
        super().__init__()
        if not 0 < factor < 1:
            raise ConfigError(f"ReduceLROnPlateau: factor must be in (0, 1). Received: "
                              f"factor={factor!r}")
        self.monitor, self.factor, self.patience = monitor, float(factor), int(patience)
        self.verbose, self.min_delta = verbose, abs(min_delta)
        self.cooldown, self.min_lr = int(cooldown), float(min_lr)
        self.mode = _resolve_mode(mode, monitor, "ReduceLROnPlateau")

    def on_train_begin(self, logs=None):
        self.wait = self.cooldown_counter = 0
        self.best = math.inf if self.mode == "min" else -math.inf

    def on_epoch_end(self, epoch, logs=None):
        optimizer = self.model.optimizer
        lr = _settable_learning_rate(optimizer, "ReduceLROnPlateau")
        logs = logs if logs is not None else {}
        logs["learning_rate"] = lr
        current = logs.get(self.monitor)
        if current is None:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if _improved(self.mode, current, self.best, self.min_delta):
            self.best, self.wait = current, 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            if self.wait >= self.patience and lr > self.min_lr:
                optimizer.learning_rate = max(lr * self.factor, self.min_lr)
                self.cooldown_counter, self.wait = self.cooldown, 0
                if self.verbose:
                    print(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing the learning rate "
                          f"to {optimizer.learning_rate:.6g}.")


class TerminateOnNaN(Callback):
    """Stop training as soon as a batch loss is NaN or infinite."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            print(f"Batch {batch}: invalid loss {loss}, terminating training")
            self.model.stop_training = True
