"""The .cnnlab file: bitwise round trips, optimizer state, and clear errors for every kind of bad
file. Nothing is unpickled: object arrays are refused from the header."""

import io
import json
import pathlib
import zipfile

import numpy as np
import pytest

import cnnlab
from cnnlab import layers, optimizers
from cnnlab.errors import CnnlabError, ModelFileError
from cnnlab.io.files import json_array, write_archive


@pytest.fixture
def trained(tmp_path):
    x = np.random.default_rng(0).random((32, 12, 12, 1)).astype(np.float32)
    y = np.arange(32) % 4
    model = cnnlab.Sequential([
        layers.Input((12, 12, 1)),
        layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_a"),
        layers.MaxPooling2D(),
        layers.Conv2D(3, 2, padding=((1, 0), (0, 1)), dilation_rate=1, name="conv_b"),
        layers.AveragePooling2D(padding="same"),
        layers.Flatten(),
        layers.Dropout(0.2, seed=1),
        layers.Dense(4, activation="softmax", name="dense"),
    ])
    model.compile(optimizer=optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    path = tmp_path / "model.cnnlab"
    model.save(path)
    return model, x, y, path


def test_round_trip_is_bitwise(trained):
    model, x, y, path = trained
    loaded = cnnlab.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert loaded.get_config() == model.get_config()
    assert loaded.history.history == model.history.history
    assert type(loaded.optimizer) is optimizers.Adam and loaded.optimizer.learning_rate == 0.01


def test_training_resumes_identically_after_load(trained):
    model, x, y, path = trained
    loaded = cnnlab.models.load_model(path)
    dropout = next(layer.name for layer in model.layers if isinstance(layer, layers.Dropout))
    for m in (model, loaded):                 # same dropout masks on both sides
        m.get_layer(dropout).rng = np.random.default_rng(5)
    for m in (model, loaded):
        m.train_on_batch(x[:8], y[:8])
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_save_and_load_weights(trained, tmp_path):
    model, x, _, _ = trained
    model.save_weights(tmp_path / "w.cnnlab")
    clone = cnnlab.Sequential.from_config(model.get_config())
    clone.load_weights(tmp_path / "w.cnnlab")
    np.testing.assert_array_equal(clone.predict(x, verbose=0), model.predict(x, verbose=0))
    other = cnnlab.Sequential([layers.Input((12, 12, 1)), layers.Flatten(), layers.Dense(4)])
    with pytest.raises(ModelFileError, match="do not match the graph; .*unexpected"):
        other.load_weights(tmp_path / "w.cnnlab")


def rewrite(path, out, change):
    """Copy the archive at ``path`` to ``out``, letting ``change(name, bytes)`` edit members."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = change(info.filename, src.read(info.filename))
            if data is not None:
                dst.writestr(info.filename, data)
    return out


def npy_bytes(array):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def test_truncated_files_at_every_cut_give_a_cnnlab_error(trained, tmp_path):
    _, _, _, path = trained
    data = path.read_bytes()
    for cut in np.linspace(0, len(data) - 1, 40).astype(int):
        bad = tmp_path / "cut.cnnlab"
        bad.write_bytes(data[:cut])
        with pytest.raises(ModelFileError):
            cnnlab.models.load_model(bad)


def test_flipped_bytes_give_a_cnnlab_error_or_a_valid_model(trained, tmp_path):
    _, x, _, path = trained
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    for _ in range(60):
        corrupt = bytearray(data)
        for i in rng.integers(0, len(data), 3):
            corrupt[i] ^= 0xFF
        bad = tmp_path / "flip.cnnlab"
        bad.write_bytes(bytes(corrupt))
        try:
            cnnlab.models.load_model(bad)
        except CnnlabError:
            pass                       # only cnnlab errors are allowed out of load_model


@pytest.mark.parametrize("change,match", [
    (lambda n, d: None if n == "format.npy" else d, "no entry 'format'"),
    (lambda n, d: npy_bytes(json_array({"format": "other"})) if n == "format.npy" else d,
     "not a cnnlab file"),
    (lambda n, d: npy_bytes(json_array({"format": "cnnlab", "version": 99})) if n == "format.npy"
     else d, "version 99"),
    (lambda n, d: npy_bytes(np.array([{"x": 1}], dtype=object)) if n == "model.npy" else d,
     "dtype object"),
    (lambda n, d: npy_bytes(np.frombuffer(b"{not json", np.uint8)) if n == "model.npy" else d,
     "not valid JSON"),
    (lambda n, d: None if n == "weights/conv_b/bias.npy" else d,
     r"missing \['weights/conv_b/bias'\]"),
    (lambda n, d: npy_bytes(np.zeros((5, 5), np.float32)) if n == "weights/conv_a/kernel.npy"
     else d, r"has shape \(5, 5\); the model needs \(3, 3, 1, 4\)"),
    (lambda n, d: npy_bytes(np.full((4,), np.nan, np.float32)) if n == "weights/conv_a/bias.npy"
     else d, "NaN or Inf"),
    (lambda n, d: d[:-7] if n == "weights/conv_a/kernel.npy" else d, "holds only|truncated"),
    (lambda n, d: npy_bytes(json_array({"format": "cnnlab", "version": 3}))
     if n == "format.npy" else d, "version 3, written by a newer cnnlab"),
])
def test_bad_members_are_named(trained, tmp_path, change, match):
    _, _, _, path = trained
    bad = rewrite(path, tmp_path / "bad.cnnlab", change)
    with pytest.raises(ModelFileError, match=match):
        cnnlab.models.load_model(bad)


@pytest.mark.parametrize("edit,match", [
    (lambda doc: doc["config"]["layers"][0].update(class_name="os.system"), "Unknown layer class"),
    (lambda doc: doc["config"]["layers"][0]["config"].update(filters=-3), "filters must be"),
    (lambda doc: doc["config"]["layers"][0]["config"].update(evil=1), "invalid configuration"),
    (lambda doc: doc["config"].update(input_shape=[10**9, 10**9, 3]), "invalid input shape"),
    (lambda doc: doc["config"].update(input_shape=[1, 1, 1]), "graph is invalid"),
    (lambda doc: doc["config"].update(input_shape=[2, 2, 1]), r"has shape \(27, 4\)"),
    (lambda doc: doc.update(class_name="Conv2D"), "is not a model"),
    (lambda doc: doc.update(class_name="Model"), "graph is invalid"),
])
def test_malicious_or_mismatched_architectures_are_refused(trained, tmp_path, edit, match):
    _, _, _, path = trained

    def change(name, data):
        if name != "model.npy":
            return data
        document = json.loads(np.load(io.BytesIO(data)).tobytes())
        edit(document)
        return npy_bytes(json_array(document))

    with pytest.raises(ModelFileError, match=match):
        cnnlab.models.load_model(rewrite(path, tmp_path / "bad.cnnlab", change))


def test_missing_and_non_files(tmp_path):
    with pytest.raises(ModelFileError, match="No model file"):
        cnnlab.models.load_model(tmp_path / "absent.cnnlab")
    with pytest.raises(ModelFileError, match="is a folder"):
        cnnlab.models.load_model(tmp_path)
    (tmp_path / "text.cnnlab").write_text("hello")
    with pytest.raises(ModelFileError, match="not a valid model file"):
        cnnlab.models.load_model(tmp_path / "text.cnnlab")


def test_header_claiming_huge_array_is_refused_before_allocating(tmp_path):
    path = tmp_path / "huge.cnnlab"
    write_archive(path, {"format": json_array({"format": "cnnlab", "version": 1})})
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (10**6, 10**6)})
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("model.npy", header.getvalue() + b"\0" * 16)
    with pytest.raises(ModelFileError, match="claims shape"):
        cnnlab.models.load_model(path)


def test_save_is_atomic_and_leaves_no_temporary_files(trained, tmp_path):
    model, _, _, path = trained
    before = path.read_bytes()

    class BoomError(Exception):
        pass

    def failing_state():
        raise BoomError

    model.optimizer.state_arrays = failing_state
    with pytest.raises(BoomError):
        model.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.cnnlab"]


def test_a_version_1_file_still_loads():
    """tests/data/v1_model.cnnlab was written by cnnlab 0.1.0 before the graph (format version 1:
    a Sequential, weights and optimizer slots by position); the .npz beside it holds what that
    release predicted and its first momentum buffer."""
    here = pathlib.Path(__file__).parent / "data"
    model = cnnlab.models.load_model(here / "v1_model.cnnlab")
    expected = np.load(here / "v1_model_expected.npz")
    assert [layer.name for layer in model.layers] == ["conv", "pool", "flatten", "dropout", "dense"]
    # the weights load exactly (the momentum buffer below too); the predictions agree within
    # float32 rounding, since a CPU without AVX-512 sums in another order (2.98e-08 apart)
    np.testing.assert_allclose(model.predict(expected["x"], verbose=0), expected["probs"],
                               rtol=0, atol=4 * np.finfo(np.float32).eps)
    assert model.metadata["note"].startswith("written by cnnlab 0.1.0")
    slots = model.optimizer._slots
    assert sorted(slots) == ["conv/bias", "conv/kernel", "dense/bias", "dense/kernel"]
    np.testing.assert_array_equal(slots["conv/kernel"]["momentum_buffer"], expected["momentum"])
    assert model.optimizer.iterations == 8
    model.fit(expected["x"], np.arange(4) % 4, epochs=1, verbose=0)       # and trains on


@pytest.mark.parametrize("name", ["m.h5", "m.keras", "m.weights.h5", "m.zip", "m"])
def test_a_file_is_what_its_name_says(tmp_path, name):
    """model.save('m.h5') once wrote cnnlab's zip under Keras' name; Keras 3 too refuses a name
    other than its own format's."""
    model = cnnlab.zoo.get("article")
    with pytest.raises(cnnlab.errors.ConfigError, match=r"Name the file \.cnnlab"):
        model.save(tmp_path / name)
    with pytest.raises(cnnlab.errors.ConfigError, match="does not write Keras files"):
        model.save_weights(tmp_path / "w.h5")
    assert not list(tmp_path.iterdir())


def _users_dense_class(**options):
    """A layer of the user's that shares a built-in's name (made in a function, so each test
    gets a fresh class, as a re-run notebook cell would)."""
    class Dense(cnnlab.layers.Layer, **options):
        def __init__(self, units=2, **kwargs):
            super().__init__(**kwargs)
            self.units = units

        def get_config(self):
            return {**super().get_config(), "units": self.units}

        def compute_output_shape(self, input_shape):
            return (*input_shape[:-1], self.units)

        def call(self, x, ctx):
            return x[..., :self.units] * 2, None
    return Dense


def test_a_users_layer_named_as_a_built_in_never_replaces_it(tmp_path):
    """Before the fix, ``class Dense(Layer)`` took the name 'Dense' in the registry, and every
    model file with a Dense layer then loaded as the user's class."""
    from cnnlab.layers.base import LAYER_REGISTRY
    built_in = cnnlab.layers.Dense
    users = _users_dense_class()
    assert cnnlab.layers.layer_class("Dense") is built_in
    assert users.registered_name.endswith(">Dense")
    plain = cnnlab.Sequential([cnnlab.layers.Input((3,)), built_in(2)])
    plain.save(tmp_path / "plain.cnnlab")
    assert type(cnnlab.models.load_model(tmp_path / "plain.cnnlab").layers[-1]) is built_in
    mine = cnnlab.Sequential([cnnlab.layers.Input((3,)), users(2)])
    mine.save(tmp_path / "mine.cnnlab")
    loaded = cnnlab.models.load_model(tmp_path / "mine.cnnlab")
    assert type(loaded.layers[-1]) is users
    np.testing.assert_array_equal(loaded.predict(np.ones((1, 3)), verbose=0), [[2, 2]])
    try:                                 # asked for: it replaces the built-in
        replacing = _users_dense_class(replace=True)
        assert cnnlab.layers.layer_class("Dense") is replacing
    finally:
        LAYER_REGISTRY["Dense"] = built_in
