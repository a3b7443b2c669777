"""The functional API's contract (Keras names and semantics): symbolic inputs, Model, nested
models, feature extractors that share weights, changes that take effect at once, files, and one
clear error for each kind of misuse."""

import json

import numpy as np
import pytest

import cnnlab
from cnnlab import Input, Model, Sequential, layers
from cnnlab.errors import ConfigError, ModelFileError, ShapeError


def small_resnet(name="small_resnet"):
    inputs = Input((8, 8, 1), name="pixels")
    x = layers.Conv2D(4, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = layers.ReLU(name="stem_relu")(layers.BatchNormalization(name="stem_bn")(x))
    y = layers.Conv2D(4, 3, padding="same", activation="relu", name="block_conv")(x)
    x = layers.Add(name="block_add")([x, y])
    x = layers.GlobalAveragePooling2D(name="features")(x)
    return Model(inputs, layers.Dense(3, activation="softmax", name="head")(x), name=name)


def data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 8, 8, 1)).astype(np.float32), rng.integers(0, 3, n)


def test_symbolic_tensors_and_the_model_surface():
    x = Input((28, 28, 1))
    assert x.shape == (None, 28, 28, 1) and x.dtype == np.float32
    assert layers.Input is cnnlab.Input and cnnlab.models.Model is Model
    y = layers.Conv2D(8, 3)(x)
    assert y.shape == (None, 26, 26, 8)
    model = small_resnet()
    assert model.input is model.inputs[0] and model.output is model.outputs[0]
    assert [layer.name for layer in model.layers] == [
        "pixels", "stem", "stem_bn", "stem_relu", "block_conv", "block_add", "features", "head"]
    assert model.get_layer("head") is model.layers[-1] and model.get_layer(index=1).name == "stem"
    assert model.get_layer("block_add").input == [model.get_layer("stem_relu").output,
                                                 model.get_layer("block_conv").output]


def test_sequential_builds_the_same_graph():
    model = Sequential([layers.Input((8, 8, 1)), layers.Conv2D(2, 3, name="c"),
                        layers.Flatten(name="f"), layers.Dense(3, name="d")])
    assert [node.layer.name for node in model.nodes] == ["c", "f", "d"]
    assert model.get_layer("f").input is model.get_layer("c").output
    functional = Model(model.input, model.output)
    x = data()[0]
    np.testing.assert_array_equal(functional.predict(x, verbose=0), model.predict(x, verbose=0))
    model.pop()
    assert model.output_shape == (None, 72) and model.get_layer("f").output is model.output


def test_calling_a_layer_on_data_still_computes_at_once():
    out = layers.Conv2D(8, 3)(np.zeros((2, 10, 10, 1)))
    assert isinstance(out, np.ndarray) and out.shape == (2, 8, 8, 8)


def test_feature_extractor_shares_weights_and_models_nest():
    model = small_resnet()
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = data()
    extractor = Model(model.input, model.get_layer("features").output)
    before = extractor.predict(x, verbose=0)
    model.fit(x, y, epochs=1, verbose=0)
    after = extractor.predict(x, verbose=0)
    assert before.shape == (24, 4) and not np.allclose(before, after)   # the same weights
    # a model called on a symbolic tensor is a layer of another model
    inputs = Input((8, 8, 1))
    outer = Model(inputs, layers.Dense(2, activation="softmax", name="new_head")(
        extractor(inputs)))
    assert outer.get_layer(extractor.name) is extractor
    np.testing.assert_allclose(layers.Dense.__call__(outer.get_layer("new_head"), after),
                               outer.predict(x, verbose=0), rtol=1e-5)
    outer.compile("sgd", "sparse_categorical_crossentropy")
    extractor.trainable = False                                # frozen backbone
    frozen = [w.copy() for w in extractor.get_weights()]
    head = outer.get_layer("new_head").get_weights()
    outer.fit(x, y % 2, epochs=1, verbose=0)
    for a, b in zip(frozen, extractor.get_weights()):
        np.testing.assert_array_equal(a, b)                    # BN statistics included
    assert not np.array_equal(head[0], outer.get_layer("new_head").get_weights()[0])
    summary = []
    outer.summary(print_fn=summary.append)
    assert f"Trainable params: {2 * 4 + 2:,}" in summary[0]


def test_a_layer_frozen_at_build_and_unfrozen_later_trains():
    """Regression: the model decided once, at build time, which layers had gradients, so a layer
    frozen then and unfrozen later (layer.trainable = True) never trained."""
    model = Sequential([layers.Input((8, 8, 1)), layers.Conv2D(2, 3, trainable=False, name="c"),
                        layers.Flatten(), layers.Dense(3, activation="softmax", name="d")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    x, y = data()
    model.fit(x, y, epochs=1, verbose=0)
    kernel = model.get_layer("c").get_weights()[0]
    model.get_layer("c").trainable = True
    model.fit(x, y, epochs=1, verbose=0)
    assert not np.array_equal(kernel, model.get_layer("c").get_weights()[0])
    model.get_layer("c").trainable = False                     # and frozen again: not touched
    kernel = model.get_layer("c").get_weights()[0]
    model.fit(x, y, epochs=1, verbose=0)
    np.testing.assert_array_equal(kernel, model.get_layer("c").get_weights()[0])


def test_graph_files_round_trip_by_name(tmp_path):
    model = small_resnet()
    inputs = Input((8, 8, 1), name="outer_in")
    outer = Model(inputs, layers.Dense(2, name="outer_head")(model(inputs)), name="outer")
    outer.compile("adam", "mse")
    x = data()[0]
    outer.fit(x, np.zeros((24, 2)), epochs=1, verbose=0)
    outer.save(tmp_path / "outer.cnnlab")
    loaded = cnnlab.load_model(tmp_path / "outer.cnnlab")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), outer.predict(x, verbose=0))
    assert loaded.get_config() == outer.get_config()
    assert [n for n, _ in loaded.named_variables()] == [n for n, _ in outer.named_variables()]
    assert "small_resnet/stem_bn/moving_mean" in dict(loaded.named_variables())
    assert sorted(loaded.optimizer.state_arrays()) == sorted(outer.optimizer.state_arrays())


def test_model_file_with_a_dangling_reference_is_refused(tmp_path):
    from cnnlab.io.files import ArchiveReader, json_array, write_archive
    model = small_resnet()
    model.save(tmp_path / "m.cnnlab")
    with ArchiveReader(tmp_path / "m.cnnlab") as reader:
        arrays = {name: reader.array(name) for name in reader.names()}
    for edit, match in [
            (lambda cfg: cfg["layers"][5]["inbound_nodes"][0].__setitem__(0, ["ghost", 0, 0]),
             "layer 'ghost' that is not in the model"),
            (lambda cfg: cfg.__setitem__("input_layers", [["nowhere", 0, 0]]),
             "'nowhere' that is not in the model"),
            (lambda cfg: cfg["layers"][5]["inbound_nodes"][0].__setitem__(0, ["stem", 3, 0]),
             "never come")]:
        document = json.loads(arrays["model"].tobytes())
        edit(document["config"])
        write_archive(tmp_path / "bad.cnnlab", {**arrays, "model": json_array(document)})
        with pytest.raises(ModelFileError, match=match):
            cnnlab.load_model(tmp_path / "bad.cnnlab")


def test_misuse_gets_one_clear_error():
    a, b = Input((4, 4, 3), name="a"), Input((4, 4, 5), name="b")
    with pytest.raises(ShapeError, match=r"add.*input 0 \(None, 4, 4, 3\), input 1 \(None, 4, 4, 5\)"):
        layers.Add(name="add")([a, b])
    stray = Input((4, 4, 3), name="stray")
    with pytest.raises(ConfigError, match="not connected to the model's inputs.*'stray'"):
        Model(a, layers.Add()([a, stray]))
    with pytest.raises(ConfigError, match="must be symbolic tensors.*data"):
        Model(np.zeros((1, 4, 4, 3)), a)
    with pytest.raises(ShapeError, match="holds no data"):
        Model(a, layers.Flatten()(a)).predict(a)
    with pytest.raises(ShapeError, match="mix of symbolic tensors and data"):
        layers.Add()([a, np.zeros((1, 4, 4, 3))])
    x = layers.Conv2D(3, 1, name="twin")(a)
    with pytest.raises(ConfigError, match=r"\['twin'\] are used by more than one layer"):
        Model(a, layers.Conv2D(3, 1, name="twin")(x))
    conv = layers.Conv2D(2, 1)
    conv(a)
    with pytest.raises(ShapeError, match="was built for inputs .*called on"):
        conv(b)


def test_threads_give_the_result_of_one_thread_with_batch_norm():
    """Sharding a batch over 2 threads sums BatchNormalization's statistics across the shards:
    the weights after training equal one thread's (within float rounding)."""
    cnnlab.config.set_floatx("float64")
    x, y = data(64, seed=3)
    runs = []
    for threads in (1, 2):
        cnnlab.config.set_threads(threads)
        cnnlab.utils.set_random_seed(5)
        model = small_resnet(name=f"resnet_{threads}")
        model.compile(cnnlab.optimizers.SGD(0.1, momentum=0.9), "sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=32, epochs=2, verbose=0, shuffle=False)
        runs.append(model.get_weights())
    for a, b in zip(*runs):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def _bn_model(momentum):
    inputs = Input((6, 6, 2))
    x = layers.BatchNormalization(momentum=momentum, name="bn")(layers.Conv2D(3, 3)(inputs))
    model = Model(inputs, layers.Dense(2, activation="softmax")(layers.Flatten()(x)))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


def test_unsettled_batch_norm_statistics_are_named_once_with_what_to_do(tmp_path):
    """20 steps at Keras' momentum 0.99 leave 82% of the initial statistics: evaluating (or
    saving) says so once, with the steps needed; the count survives a save; fit's own
    validation and momentum 0.9 over enough steps stay silent."""
    import warnings
    rng = np.random.default_rng(0)
    x, y = rng.normal(3.0, 2.0, (40, 6, 6, 2)), rng.integers(0, 2, 40)
    model = _bn_model(0.99)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                   # fit's validation: no warning
        model.fit(x, y, batch_size=20, epochs=10, verbose=0, validation_data=(x, y))
    with pytest.warns(UserWarning, match=r"'bn'.* 20 training steps.* momentum 0.99.* 82% their "
                                         r"initial values.*at least 230 steps.*momentum=0.9"):
        model.evaluate(x, y, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                   # once per model
        model.evaluate(x, y, verbose=0)
        model.save(tmp_path / "m.cnnlab")
    loaded = cnnlab.models.load_model(tmp_path / "m.cnnlab")
    with pytest.warns(UserWarning, match="20 training steps"):
        loaded.save(tmp_path / "again.cnnlab")
    settled = _bn_model(0.9)
    settled.fit(x, y, batch_size=2, epochs=2, verbose=0)       # 40 steps: 0.9^40 = 1.5%
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        settled.evaluate(x, y, verbose=0)
