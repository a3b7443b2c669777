"""Sequential's Keras surface: compile/fit/evaluate/predict, History, validation, callbacks,
summary, determinism, and the refusal of bad data."""

import csv

import numpy as np
import pytest

import cnnlab
from cnnlab import callbacks, layers, optimizers
from cnnlab.errors import NotBuiltError


def small_model(**compile_kwargs):
    model = cnnlab.Sequential([
        layers.Input((8, 8, 1)),
        layers.Conv2D(4, 3, activation="relu"),
        layers.MaxPooling2D(),
        layers.Flatten(),
        layers.Dense(3, activation="softmax"),
    ])
    model.compile(**{"optimizer": optimizers.SGD(0.1, momentum=0.9),
                     "loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"],
                     **compile_kwargs})
    return model


def toy_data(n=60, seed=0):
    """Three classes that differ by where the bright square is: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 0.1, (n, 8, 8, 1)).astype(np.float32)
    for i, label in enumerate(y):
        x[i, 2 * label:2 * label + 3, 2:5, 0] += 1.0
    return x, y


def test_fit_returns_history_and_learns():
    x, y = toy_data()
    model = small_model()
    history = model.fit(x, y, batch_size=16, epochs=8, verbose=0, validation_split=0.25)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(history.history["loss"]) == 8 and history.epoch == list(range(8))
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert history.history["accuracy"][-1] > 0.9
    loss, accuracy = model.evaluate(x, y, verbose=0)
    assert accuracy > 0.9 and np.isfinite(loss)


def test_validation_split_takes_the_last_fraction():
    x, y = toy_data(40)
    model = small_model()
    model.fit(x, y, epochs=1, verbose=0, validation_split=0.25, shuffle=False)
    expected = model.evaluate(x[30:], y[30:], verbose=0, return_dict=True)
    assert model.history.history["val_loss"][0] == pytest.approx(expected["loss"], rel=1e-6)


def test_evaluate_shapes_of_results():
    x, y = toy_data(20)
    model = small_model(metrics=None)
    assert isinstance(model.evaluate(x, y, verbose=0), float)
    model = small_model()
    assert len(model.evaluate(x, y, verbose=0)) == 2
    assert set(model.evaluate(x, y, verbose=0, return_dict=True)) == {"loss", "accuracy"}


def test_one_hot_targets_and_batch_methods():
    x, y = toy_data(20)
    model = small_model(loss="categorical_crossentropy")
    onehot = cnnlab.utils.to_categorical(y, 3)
    loss, acc = model.train_on_batch(x, onehot)
    assert np.isfinite(loss) and 0 <= acc <= 1
    assert len(model.test_on_batch(x, onehot)) == 2
    probs = model.predict_on_batch(x)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    # another batch size changes BLAS's blocking, hence the last bits
    np.testing.assert_allclose(model.predict(x, batch_size=7, verbose=0), probs, rtol=1e-5)


def test_mse_and_from_logits_paths_train():
    x, y = toy_data(30)
    regression = cnnlab.Sequential([layers.Input((8, 8, 1)), layers.Flatten(), layers.Dense(3)])
    regression.compile(optimizer="adam", loss="mse")
    target = cnnlab.utils.to_categorical(y, 3)
    h = regression.fit(x, target, epochs=5, verbose=0)
    assert h.history["loss"][-1] < h.history["loss"][0]
    logits_model = cnnlab.Sequential([layers.Input((8, 8, 1)), layers.Flatten(), layers.Dense(3)])
    logits_model.compile(optimizer="adam",
                         loss=cnnlab.losses.SparseCategoricalCrossentropy(from_logits=True))
    h = logits_model.fit(x, y, epochs=5, verbose=0)
    assert h.history["loss"][-1] < h.history["loss"][0]


def test_deferred_build_from_data():
    model = cnnlab.Sequential([layers.Conv2D(2, 3), layers.Flatten(), layers.Dense(2)])
    with pytest.raises(NotBuiltError, match="no input shape"):
        model.summary()
    assert model.predict(np.zeros((3, 5, 5, 1)), verbose=0).shape == (3, 2)
    assert model.count_params() == 3 * 3 * 2 + 2 + 18 * 2 + 2


def test_summary_shows_formula_and_warns_when_floor_drops_pixels(capsys):
    model = cnnlab.Sequential([layers.Input((28, 28, 1)), layers.Conv2D(8, 5, strides=2),
                               layers.MaxPooling2D(2)])
    model.summary()
    text = capsys.readouterr().out
    assert "12 = floor((28 - 5 + 2*0) / 2) + 1" in text
    assert "floor drops the last 1 rows" in text
    assert "Total params: 208" in text


def test_callbacks_hooks_and_keras_callbacks(tmp_path):
    x, y = toy_data()
    seen = []

    class Recorder(callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.append("train_begin")

        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch, round(logs["accuracy"], 6)))

        def on_train_batch_end(self, batch, logs=None):
            assert "loss" in logs

    model = small_model()
    model.fit(x, y, epochs=3, batch_size=20, verbose=0, validation_split=0.2, callbacks=[
        Recorder(),
        callbacks.LearningRateScheduler(lambda epoch, lr: 0.05 / (epoch + 1)),
        callbacks.CSVLogger(tmp_path / "log.csv"),
        callbacks.ModelCheckpoint(str(tmp_path / "ckpt-{epoch:02d}.cnnlab"), monitor="val_loss"),
    ])
    assert seen[0] == "train_begin" and [s[0] for s in seen[1:]] == [0, 1, 2]
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"] and "val_accuracy" in rows[0]
    assert float(rows[2]["learning_rate"]) == pytest.approx(0.05 / 3)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == \
        ["ckpt-01.cnnlab", "ckpt-02.cnnlab", "ckpt-03.cnnlab"]


def test_early_stopping_restores_best_weights():
    x, y = toy_data()
    model = small_model(optimizer=optimizers.SGD(0.1))
    stopper = callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=10.0,
                                      restore_best_weights=True)
    history = model.fit(x, y, epochs=10, verbose=0, callbacks=[stopper])
    assert len(history.history["loss"]) == 2 and stopper.stopped_epoch == 1


def test_progress_output_modes(capsys):
    x, y = toy_data(20)
    model = small_model()
    model.fit(x, y, epochs=2, verbose=2)
    out = capsys.readouterr().out
    assert out.count("Epoch") == 2 and "loss:" in out
    model.fit(x, y, epochs=1, verbose=0)
    assert capsys.readouterr().out == ""


def test_terminate_on_nan_stops_at_the_first_bad_batch(capsys):
    x, y = toy_data()

    class PoisonAfter(callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                logs["loss"] = float("nan")

    model = small_model()
    history = model.fit(x, y, epochs=5, batch_size=10, verbose=0,
                        callbacks=[PoisonAfter(), callbacks.TerminateOnNaN()])
    assert model.stop_training and len(history.history["loss"]) == 1
    assert "invalid loss" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["fit", "train_on_batch", "evaluate", "test_on_batch"])
def test_a_model_without_an_input_shape_builds_on_its_first_data(method):
    model = cnnlab.Sequential([layers.Conv2D(2, 3), layers.Flatten(),
                               layers.Dense(3, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = np.random.default_rng(0).random((8, 6, 6, 1)), np.arange(8) % 3
    kwargs = {"verbose": 0} if method in ("fit", "evaluate") else {}
    getattr(model, method)(x, y, **kwargs)
    assert model.input_shape == (6, 6, 1) and model.output_shape == (None, 3)


@pytest.mark.parametrize("name", ["optimizers", "losses", "metrics", "callbacks", "export"])
def test_the_public_modules_export_their_api_and_nothing_they_import(name):
    """Before ``__all__``, ``from cnnlab.optimizers import *`` brought ``np``, ``difflib`` and
    ``functools`` with it, and ``cnnlab.optimizers.schedules`` existed only through that leak."""
    import importlib
    import types
    public = importlib.import_module(f"cnnlab.{name}")
    names = {k for k in vars(public) if not k.startswith("_")}
    assert names == set(public.__all__), names ^ set(public.__all__)
    leaked = {k for k in names if isinstance(getattr(public, k), types.ModuleType)}
    assert leaked <= {"schedules"}, leaked
    if name == "optimizers":
        assert public.schedules.OneCycle and public.SGD and "np" not in names


def test_clear_session_lets_a_rebuilt_unnamed_model_take_its_saved_weights(tmp_path):
    """Without it the second build is named conv2d_1 ..., and load_weights (matched by name)
    refuses the file written by the first."""
    def build():
        return cnnlab.Sequential([cnnlab.layers.Input((6, 6, 1)), cnnlab.layers.Conv2D(2, 3),
                                  cnnlab.layers.Flatten(), cnnlab.layers.Dense(2)])
    cnnlab.utils.clear_session()
    first = build()
    first.save_weights(tmp_path / "w.weights.cnnlab")
    cnnlab.utils.clear_session()
    second = build()
    assert [layer.name for layer in second.layers] == [layer.name for layer in first.layers]
    second.load_weights(tmp_path / "w.weights.cnnlab")
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)
