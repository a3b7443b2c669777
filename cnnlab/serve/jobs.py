"""Training from the browser: one run at a time, in a background thread, watched live.

A :class:`TrainingJob` trains its own model (never one the draw page is using), so predictions
go on while it runs. It records a curve point every few batches (the epoch's running mean loss
and accuracy, as Keras' progress bar shows them) and the validation scores after each epoch;
every change bumps ``version`` and wakes the threads streaming events to browsers. A stop
request takes effect after the current batch. When the run ends, stopped or not, its model is
saved and handed to ``on_finished`` so the draw page can use it.
"""

from __future__ import annotations

import os
import threading
import time

from cnnlab import seeding
from cnnlab.callbacks import Callback
from cnnlab.errors import CnnlabError
from cnnlab.serve.api import ApiError, int_field, known_fields

#: runs trained from the web app whose models are kept (and offered again); older ones are removed
KEPT_RUNS = 20
#: curve points per epoch (about); more would only make the event stream heavier
POINTS_PER_EPOCH = 40
LIMITS = {"epochs": (1, 50), "batch_size": (1, 1024)}      # a browser's run, not a week's


def parse_settings(params: dict, data_root=None) -> dict:
    """Check a train request: ``{"model", "data", "epochs", "batch_size", "lr", "optimizer"}``
    (all optional) -> settings for :func:`cnnlab.runs.run_settings`. ``data`` is the bundled
    digits or a folder under ``data_root`` (``cnnlab serve --data-root DIR``; None: no folder)."""
    from cnnlab import zoo
    known_fields(params, {"model", "data", "epochs", "batch_size", "lr", "optimizer", "seed"})
    given = {}
    model = params.get("model", "article")
    if model not in zoo.MODELS:
        raise ApiError(404, f"Unknown zoo model {model!r}; expected one of {sorted(zoo.MODELS)}.")
    given["model"] = model
    data = params.get("data", "mnist_sample")
    if not isinstance(data, str) or not data:
        raise ApiError(400, f"'data' must be 'mnist_sample' or a folder path. Received: {data!r}")
    if data != "mnist_sample":
        data = training_folder(data, data_root)
    given["data"] = data
    for name, (low, high) in LIMITS.items():
        if name in params:
            given[name] = int_field(params, name, None, low, high)
    if "lr" in params:
        lr = params["lr"]
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr <= 10:
            raise ApiError(400, f"'lr' must be a number in (0, 10]. Received: {lr!r}")
        given["lr"] = float(lr)
    if "optimizer" in params:
        if params["optimizer"] not in ("sgd", "adam"):
            raise ApiError(400, f"'optimizer' must be 'sgd' or 'adam'. "
                                f"Received: {params['optimizer']!r}")
        given["optimizer"] = params["optimizer"]
    if "seed" in params:
        given["seed"] = int_field(params, "seed", None, 0, 2**32 - 1)
    return given


def training_folder(name: str, data_root) -> str:
    """The folder ``name`` (relative to ``data_root``, or absolute inside it), resolved. A
    folder that is missing and one outside the root get the same answer, so a request learns
    nothing about what exists elsewhere on the machine."""
    if data_root is None:
        raise ApiError(403, "This server trains on the bundled digits ('mnist_sample') only; "
                            "to train on folders, start it with cnnlab serve --data-root DIR "
                            "and name a folder under DIR.")
    root = os.path.realpath(data_root)
    target = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, target]) != root or not os.path.isdir(target):
        raise ApiError(404, f"'data': no folder {name!r} under the data root; name a folder "
                            f"there (one subfolder of images per class), relative to the "
                            f"root.")
    return target


def run_files(models_dir) -> list:
    """The model files runs from the web app saved (``MODEL-N.cnnlab``), newest first."""
    import re
    from pathlib import Path

    from cnnlab import zoo
    pattern = re.compile(rf"({'|'.join(map(re.escape, zoo.MODELS))})-\d+\.cnnlab")
    found = [p for p in Path(models_dir).glob("*.cnnlab") if pattern.fullmatch(p.name)]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def prune_runs(models_dir, keep: int = KEPT_RUNS) -> list[str]:
    """Remove all but the newest ``keep`` runs' model files; the names of those removed."""
    removed = []
    for path in run_files(models_dir)[keep:]:
        path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


class _Recorder(Callback):
    """Feeds the job's curve, and asks the model to stop when the job was told to."""

    def __init__(self, job: TrainingJob):
        super().__init__()
        self.job = job

    def on_train_begin(self, logs=None):
        self.steps = self.params.get("steps")             # batches per epoch, as fit counts them
        self.every = max(1, (self.steps or 100) // POINTS_PER_EPOCH)
        self.job._update(state="running", steps=self.steps)

    def on_epoch_begin(self, epoch, logs=None):
        self.job._update(epoch=epoch + 1, step=0)

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        if (batch + 1) % self.every == 0 or batch + 1 == self.steps:
            point = {"epoch": self.job.epoch - 1 + (batch + 1) / (self.steps or batch + 1),
                     "loss": float(logs.get("loss", float("nan"))),
                     "accuracy": float(logs.get("accuracy", float("nan")))}
            self.job._update(step=batch + 1, point=point)
        if self.job.stop_requested.is_set():
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if "val_loss" in logs:
            # where the run is (mid-epoch when it was stopped)
            where = self.job.points[-1]["epoch"] if self.job.points else epoch + 1
            self.job._update(validation={"epoch": where, "loss": float(logs["val_loss"]),
                                         "accuracy": float(logs.get("val_accuracy", "nan"))})


class TrainingJob(threading.Thread):
    """One training run. ``status()`` is what the API and the event stream send."""

    def __init__(self, given: dict, number: int, models_dir, on_finished):
        super().__init__(name=f"cnnlab-train-{number}", daemon=True)
        from cnnlab.runs import run_settings
        self.settings = run_settings(**given)
        self.model_name = f"{self.settings['model']}-{number}"
        self.models_dir, self.on_finished = models_dir, on_finished
        self.state, self.error, self.saved_to = "starting", None, None
        self.removed: list[str] = []        # older runs' files removed to keep KEPT_RUNS
        self.epoch, self.step, self.steps = 0, 0, None
        self.points, self.validation = [], []
        self.frames: list[bytes] = []     # the training timeline's frames, as PNG
        self.started = time.time()
        self.seconds = 0.0
        self.version = 0
        self.changed = threading.Condition()
        self.stop_requested = threading.Event()

    @property
    def finished(self) -> bool:
        return self.state in ("done", "stopped", "failed")

    def _update(self, point=None, validation=None, **fields):
        with self.changed:
            for name, value in fields.items():
                setattr(self, name, value)
            if point is not None:
                self.points.append(point)
            if validation is not None:
                self.validation.append(validation)
            self.seconds = time.time() - self.started
            self.version += 1
            self.changed.notify_all()

    def stop(self) -> None:
        self.stop_requested.set()
        if not self.finished:
            self._update(state="stopping")

    def status(self, points_from: int = 0, validation_from: int = 0) -> dict:
        """The run's state and its curves; ``points``/``validation`` hold the entries from
        ``points_from``/``validation_from`` on (the event stream sends only what is new: a long
        run has thousands of points, and a status goes out every few batches)."""
        with self.changed:
            return {"state": self.state, "model": self.model_name, "settings": self.settings,
                    "epoch": self.epoch, "epochs": self.settings["epochs"], "step": self.step,
                    "steps": self.steps, "points_from": points_from,
                    "points": self.points[points_from:], "validation_from": validation_from,
                    "validation": self.validation[validation_from:],
                    "seconds": round(self.seconds, 2), "error": self.error,
                    "saved_to": self.saved_to, "kept_runs": KEPT_RUNS,
                    "removed": self.removed, "frames": len(self.frames),
                    "version": self.version}

    def frame(self, number: int) -> bytes | None:
        with self.changed:
            return self.frames[number] if 0 <= number < len(self.frames) else None

    def _add_frame(self, frame, timeline) -> None:
        """A new timeline frame, drawn once as PNG for the Train page, on the drawing thread:
        training does not wait for matplotlib (half a second a frame)."""
        self._drawing.submit(self._draw_frame, frame, timeline)

    def _draw_frame(self, frame, timeline) -> None:
        import io

        from cnnlab.viz.timeline import plot_frame
        buffer = io.BytesIO()
        plot_frame(frame, timeline).savefig(buffer, format="png", dpi=80, bbox_inches="tight")
        with self.changed:
            self.frames.append(buffer.getvalue())
        self._update()

    def wait_for_change(self, seen_version: int, timeout: float) -> bool:
        """Block until ``version`` passes ``seen_version`` (True) or ``timeout`` (False)."""
        with self.changed:
            return self.changed.wait_for(lambda: self.version > seen_version, timeout)

    def run(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from cnnlab.runs import fit_run, new_run
        self._drawing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnnlab-frames")
        try:
            from cnnlab.viz.timeline import timeline_for
            with seeding.seeded(self.settings["seed"]):  # this thread's run only
                model, train, test = new_run(self.settings)
                callbacks = [_Recorder(self)]
                timeline = timeline_for(model, test)       # "watch the filters form"
                if timeline is not None:
                    timeline.listeners.append(self._add_frame)
                    callbacks.append(timeline)
                fit_run(model, self.settings, train, test, verbose=0, callbacks=callbacks)
            self._drawing.shutdown(wait=True)            # every frame drawn before "done"
            path = os.path.join(self.models_dir, f"{self.model_name}.cnnlab")
            os.makedirs(self.models_dir, exist_ok=True)
            model.save(path)
            removed = prune_runs(self.models_dir)
            self.on_finished(self.model_name, model, path)
            self._update(state="stopped" if self.stop_requested.is_set() else "done",
                         saved_to=os.path.basename(path), removed=removed)
        except CnnlabError as exc:
            self._update(state="failed", error=str(exc))
        except Exception as exc:        # noqa: BLE001 - shown on the page; the server goes on
            self._update(state="failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            self._drawing.shutdown(wait=False)
