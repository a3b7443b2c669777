"""How a network forms while it learns: a callback that records, every ``every`` training steps,
the first conv layer's filters, one fixed image's feature maps in that layer, and the feature
visualisations of a few filters of the last conv layer.

    timeline = TrainingTimeline(image, every=50)
    model.fit(x, y, callbacks=[timeline])
    timeline.save("run.timeline.npz")        # frames as plain arrays (no pickle)
    figure = plot_frame(timeline.frames[0], timeline)

The first frame is taken before the first step: the initial weights; the last, at the end.
Recording only reads the model (inference mode, its own seeded random numbers), so a run with a
timeline trains exactly the same weights as one without.

Recording costs time (a frame's visualisations are ``visual_steps`` forward and backward passes),
so frames in between are taken only while the time spent recording stays within ``budget`` (10%)
of the time spent training: a short run gets its first and last frames, a long one four an epoch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from cnnlab.errors import ConfigError, DataError
from cnnlab.training.callbacks import Callback
from cnnlab.viz import features
from cnnlab.viz.attribution import as_batch, target_node

FORMAT = "cnnlab-timeline"


@dataclass
class Frame:
    step: int                  # optimizer steps taken so far
    epoch: float               # epochs so far (fractional mid-epoch)
    kernels: np.ndarray        # the first conv layer's kernel (KH, KW, C, F)
    maps: np.ndarray           # its output for the fixed image (h, w, F)
    visuals: np.ndarray        # feature visualisations (k, H, W, C) of ``visual_filters``


class TrainingTimeline(Callback):
    """Record a :class:`Frame` before training, every ``every`` steps (default: four per
    epoch) while recording stays within ``budget`` of the training time, and at the end.
    ``image``: the fixed image (the model's input shape); ``budget=None`` records every
    ``every`` steps whatever it costs."""

    def __init__(self, image, every: int | None = None, visual_filters: int = 4,
                 visual_steps: int = 24, seed: int = 0, budget: float | None = 0.1):
        super().__init__()
        if every is not None and (not isinstance(every, int) or every < 1):
            raise ConfigError(f"every must be a positive number of steps; received {every!r}.")
        self.image, self.every, self.seed = np.asarray(image), every, seed
        self.visual_filters, self.visual_steps = visual_filters, visual_steps
        self.budget = budget
        self.recording_seconds = 0.0          # time spent in record(), so far
        self.frames: list[Frame] = []
        self.first_layer = self.last_layer = None
        self.listeners = []                  # called with each new frame (the web app's page)

    # --- the callback ---------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        from cnnlab.viz.inside import conv_layers
        names = conv_layers(self.model)                   # a nested backbone's included
        if not names:
            raise ConfigError("A training timeline needs a model with a Conv2D layer.")
        self.first_layer, self.last_layer = names[0], names[-1]
        self.batch = as_batch(self.model.flattened(), self.image)
        self.steps_per_epoch = self.params.get("steps") or 1
        self._every = self.every or max(1, self.steps_per_epoch // 4)
        self._started = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        if not self.frames:                  # before the first step (of a resumed run too)
            self.step = epoch * self.steps_per_epoch
            self.record()

    def on_train_batch_end(self, batch, logs=None):
        self.step = self.epoch * self.steps_per_epoch + batch + 1
        if self.step % self._every == 0 and self._affordable():
            self.record()

    def on_train_end(self, logs=None):
        if self.frames[-1].step != self.step:
            self.record()

    def _affordable(self) -> bool:
        """Whether one more frame (costing what the last one did) keeps the recording within
        the budget of the training time so far."""
        if self.budget is None:
            return True
        training = time.perf_counter() - self._started - self.recording_seconds
        cost = self.recording_seconds / len(self.frames)
        return self.recording_seconds + cost <= self.budget * training

    # --- frames ---------------------------------------------------------------------------
    def record(self) -> Frame:
        start = time.perf_counter()
        frame = self._frame()
        self.recording_seconds += time.perf_counter() - start
        self.frames.append(frame)
        for listener in self.listeners:
            listener(frame, self)
        return frame

    def _frame(self) -> Frame:
        model = self.model.flattened()
        kernel = model.get_layer(self.first_layer).get_weights()[0]
        node = target_node(model, self.first_layer)
        _, tape = model.run(self.batch)
        count = min(self.visual_filters, model.get_layer(self.last_layer).weights[0].shape[-1])
        visuals = features.visualise(model, self.last_layer, filters=range(count),
                                     steps=self.visual_steps, seed=self.seed)
        return Frame(self.step, self.step / self.steps_per_epoch, np.array(kernel),
                     np.array(tape.values[id(node.outputs[0])][0]), visuals)

    def save(self, path) -> str:
        """All frames in one ``.npz`` (written atomically; read back with :func:`load`)."""
        from cnnlab.atomic import atomic_write
        if not self.frames:
            raise ConfigError("The timeline has no frames yet: train with it first.")
        arrays = {"format": np.array(FORMAT),
                  "layers": np.array([self.first_layer, self.last_layer]),
                  "steps": np.array([f.step for f in self.frames]),
                  "epochs": np.array([f.epoch for f in self.frames]),
                  "kernels": np.stack([f.kernels for f in self.frames]),
                  "maps": np.stack([f.maps for f in self.frames]),
                  "visuals": np.stack([f.visuals for f in self.frames]),
                  "image": self.batch[0]}
        with atomic_write(path, "wb") as handle:
            np.savez_compressed(handle, **arrays)
        return str(path)


def timeline_for(model, held_out) -> TrainingTimeline | None:
    """A timeline of a run (four frames an epoch) on its first held-out image (``held_out``:
    ``(x, y)`` arrays or a stream of such batches), or None for a model without a conv layer
    (nothing to show)."""
    from cnnlab.viz.inside import conv_layers
    if not conv_layers(model):
        return None
    x = held_out[0] if isinstance(held_out, tuple) else next(iter(held_out))[0]
    return TrainingTimeline(x[0])


def load(path) -> TrainingTimeline:
    """A timeline saved by :meth:`TrainingTimeline.save` (its frames; not attached to a model)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"Cannot read the timeline {str(path)!r} ({exc}).") from None
    needed = {"format", "layers", "steps", "epochs", "kernels", "maps", "visuals", "image"}
    if str(arrays.get("format", "")) != FORMAT or not needed <= arrays.keys():
        raise DataError(f"{str(path)!r} is not a cnnlab training timeline (expected arrays "
                        f"{sorted(needed)}).")
    timeline = TrainingTimeline(arrays["image"])
    timeline.first_layer, timeline.last_layer = (str(v) for v in arrays["layers"])
    timeline.batch = arrays["image"][None]
    timeline.frames = [Frame(int(s), float(e), k, m, v) for s, e, k, m, v in zip(
        arrays["steps"], arrays["epochs"], arrays["kernels"], arrays["maps"], arrays["visuals"])]
    return timeline


def plot_frame(frame: Frame, timeline: TrainingTimeline, path=None):
    """One frame: the first layer's filters, the fixed image's maps in it, and the last conv
    layer's feature visualisations, titled with the step and epoch."""
    from cnnlab.viz.grids import feature_map_grid, kernel_grid
    from cnnlab.viz.inside import INPUT_RANGE_NOTE, _show
    from cnnlab.viz.plots import _figure, _finish
    fig = _figure(11, 3.6)
    fig.set_layout_engine("constrained")
    parts = fig.subfigures(1, 3, width_ratios=[1, 1.2, 1.4])
    kh, kw, c, f = frame.kernels.shape
    ax = parts[0].subplots()
    grid = kernel_grid(frame.kernels)
    if grid.ndim == 3:
        ax.imshow(np.nan_to_num(grid, nan=1.0), interpolation="nearest")
    else:
        ax.imshow(grid, cmap="RdBu_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(f"{timeline.first_layer}: {f} filters {kh}x{kw}\n(red +, blue -, "
                 f"white 0)", fontsize=8)
    ax.axis("off")
    ax = parts[1].subplots()
    h, w, maps = frame.maps.shape
    ax.imshow(feature_map_grid(frame.maps), cmap="viridis", vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_title(f"{timeline.first_layer} on the fixed image: {maps} maps {h}x{w}\n(each "
                 f"scaled to its own min .. max)", fontsize=8)
    ax.axis("off")
    count = len(frame.visuals)
    axes = np.atleast_1d(parts[2].subplots(1, count, squeeze=False)).ravel()
    for k, (ax, image) in enumerate(zip(axes, frame.visuals)):
        _show(ax, image)
        ax.set_title(f"filter {k}", fontsize=8)
    parts[2].suptitle(f"{timeline.last_layer}: what filters look for\n({INPUT_RANGE_NOTE})",
                      fontsize=8)
    fig.suptitle(f"Step {frame.step:,} (epoch {frame.epoch:.2f})", fontsize=10)
    return _finish(fig, path)
