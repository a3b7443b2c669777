"""Promise: a training run killed at any moment (even mid-checkpoint) and resumed ends with the
same weights, bit for bit, as a run that was never interrupted."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import cnnlab
from cnnlab import callbacks
from cnnlab.errors import ModelFileError


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    (x, y), (xt, yt) = cnnlab.datasets.mnist_sample.load_data()
    path = tmp_path_factory.mktemp("data") / "small.npz"
    np.savez(path, x_train=x[:3072], y_train=y[:3072], x_test=xt[:200], y_test=yt[:200])
    return str(path)


def train_command(data, out, *extra):
    return [sys.executable, "-m", "cnnlab", "train", *extra, "--out", str(out), "--verbose", "0"] + (
        [] if "--resume" in extra else ["--model", "simple_convnet", "--data", data, "--epochs",
                                        "3", "--batch-size", "32", "--seed", "7"])


def weights(path):
    return cnnlab.models.load_model(path).get_weights()


def run_killing_at_random(command, rng, max_kills, window) -> int:
    """Run ``command()`` again and again, SIGKILLing the first ``max_kills`` runs at a random
    moment in ``window`` seconds (checkpoints are written after every batch, so some kills land
    mid-write), until a run completes. Returns how many runs were killed."""
    kills = 0
    for _attempt in range(40):
        process = subprocess.Popen(command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills < max_kills:
            time.sleep(rng.uniform(*window))
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                kills += 1
        _, err = process.communicate(timeout=300)
        if process.returncode == 0:
            return kills
        assert process.returncode == -signal.SIGKILL, err.decode()[-2000:]
    pytest.fail("training never completed")


def test_sigkill_at_random_moments_then_resume_gives_identical_weights(small_data, tmp_path):
    reference = tmp_path / "reference.cnnlab"
    subprocess.run(train_command(small_data, reference), check=True, timeout=300)

    checkpoints, out = tmp_path / "ck", tmp_path / "resumed.cnnlab"
    fresh = train_command(small_data, out, "--checkpoint-dir", str(checkpoints),
                          "--checkpoint-every", "1")
    resume = train_command(small_data, out, "--resume", str(checkpoints))
    kills = run_killing_at_random(
        lambda: resume if (checkpoints / "checkpoint.cnnlab").exists() else fresh,
        random.Random(1234), max_kills=6, window=(0.3, 1.5))
    assert kills >= 3
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint.cnnlab"]   # no debris
    for ours, theirs in zip(weights(out), weights(reference)):
        np.testing.assert_array_equal(ours, theirs)


def _model_and_data():
    cnnlab.utils.set_random_seed(5)
    model = cnnlab.zoo.get("simple_convnet")
    model.compile(optimizer=cnnlab.optimizers.Adam(), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    (x, y), _ = cnnlab.datasets.mnist_sample.load_data()
    return model, cnnlab.datasets.as_model_input(x[:160]), y[:160]


class CrashAt(callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.at = (epoch, batch)
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise KeyboardInterrupt("simulated crash")


@pytest.mark.parametrize("crash", [(0, 2), (1, 4), (2, 0)])
def test_load_checkpoint_and_fit_from_initial_epoch_is_exact(tmp_path, crash):
    model, x, y = _model_and_data()
    uninterrupted = model.fit(x, y, batch_size=32, epochs=3, verbose=0)
    expected, expected_history = model.get_weights(), uninterrupted.history

    model, x, y = _model_and_data()
    path = tmp_path / "ckpt.cnnlab"
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[
            callbacks.ModelCheckpoint(path, save_freq=1), CrashAt(*crash)])
    restored = cnnlab.models.load_model(path)
    state = restored.training_state
    assert (state["epoch"], state["step"]) == (crash[0], crash[1] + 1)
    history = restored.fit(x, y, batch_size=32, epochs=3, verbose=0,
                           initial_epoch=state["epoch"])
    for a, b in zip(restored.get_weights(), expected):
        np.testing.assert_array_equal(a, b)
    assert history.history == expected_history          # the logged losses are exact too


def test_a_crash_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, x, y = _model_and_data()
    path = tmp_path / "ckpt.cnnlab"
    model.fit(x, y, batch_size=32, epochs=1, verbose=0,
              callbacks=[callbacks.ModelCheckpoint(path)])
    before = path.read_bytes()

    import numpy.lib.format as npy_format
    real_write = npy_format.write_array
    calls = []

    def dying_write(*args, **kwargs):         # dies after a few arrays of the next checkpoint
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt("killed mid-write")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(npy_format, "write_array", dying_write)
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0,
                  callbacks=[callbacks.ModelCheckpoint(path)])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.cnnlab"]   # no debris
    assert cnnlab.models.load_model(path).training_state == {"epoch": 1, "step": 0}


def test_resume_needs_a_checkpoint(tmp_path, capsys):
    from cnnlab.cli import main
    assert main(["train", "--resume", str(tmp_path)]) == 1
    assert "No checkpoint to resume" in capsys.readouterr().err


def test_a_truncated_checkpoint_is_refused_not_trusted(tmp_path):
    model, x, y = _model_and_data()
    path = tmp_path / "ckpt.cnnlab"
    model.fit(x, y, batch_size=32, epochs=1, verbose=0,
              callbacks=[callbacks.ModelCheckpoint(path)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError):
        cnnlab.models.load_model(path)


RESNET_SCRIPT = """
import os, sys
import numpy as np
import cnnlab
from cnnlab import callbacks, layers

checkpoint, out = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
x, y = rng.random((3072, 16, 16, 3)).astype("float32"), rng.integers(0, 4, 3072)
save = callbacks.ModelCheckpoint(checkpoint, save_freq=1)
if os.path.exists(checkpoint):
    model = cnnlab.load_model(checkpoint)
    start = model.training_state["epoch"]
else:
    cnnlab.utils.set_random_seed(3)
    inputs = cnnlab.Input((16, 16, 3))
    h = layers.RandomFlip("horizontal", seed=2)(inputs)
    h = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(8, 3, padding="same")(h)))
    r = layers.BatchNormalization()(layers.Conv2D(8, 3, padding="same")(h))
    h = layers.ReLU()(layers.Add()([h, r]))
    h = layers.Dropout(0.2, seed=4)(layers.GlobalAveragePooling2D()(h))
    model = cnnlab.Model(inputs, layers.Dense(4, activation="softmax")(h))
    model.compile(cnnlab.optimizers.Adam(0.01), "sparse_categorical_crossentropy", ["accuracy"])
    start = 0
model.fit(x, y, batch_size=32, epochs=3, verbose=0, initial_epoch=start,
          callbacks=[save] if out != "-" else [])
np.savez(out if out != "-" else sys.argv[3], *model.get_weights(),
         loss=np.array(model.history.history["loss"]))
"""


def test_sigkill_and_resume_is_bit_exact_for_a_resnet_with_batch_norm(tmp_path):
    """A graph with BatchNormalization (moving statistics), a shortcut, Dropout and augmentation:
    killed at random moments, resumed from its checkpoint, it ends where an uninterrupted run
    ends, bit for bit, history included."""
    script = tmp_path / "train.py"
    script.write_text(RESNET_SCRIPT)
    # the uninterrupted run is timed once Numba's cache holds its kernels: on a fresh machine
    # the first run also compiles them (seconds), the killed runs after it do not, and a window
    # scaled to the first run let a resumed run finish before its second kill (CI, session 34)
    for _ in range(2):
        began = time.perf_counter()
        subprocess.run([sys.executable, str(script), str(tmp_path / "none.cnnlab"), "-",
                        str(tmp_path / "reference.npz")], check=True, timeout=300)
        whole_run = time.perf_counter() - began
    checkpoint, out = tmp_path / "ck.cnnlab", tmp_path / "resumed.npz"
    # the kills fall in the first half of an uninterrupted run, however fast this machine is
    # (a fixed window in seconds let a quick machine finish before the second kill)
    kills = run_killing_at_random(lambda: [sys.executable, str(script), str(checkpoint), str(out)],
                                  random.Random(99), max_kills=4,
                                  window=(0.15 * whole_run, 0.5 * whole_run))
    assert kills >= 2
    reference, resumed = np.load(tmp_path / "reference.npz"), np.load(out)
    assert sorted(reference.files) == sorted(resumed.files)
    for name in reference.files:
        np.testing.assert_array_equal(resumed[name], reference[name], err_msg=name)
