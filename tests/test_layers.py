"""The layer contract: callable on arrays, Keras weight shapes, grads in get_weights order,
get_config/from_config round trips, dtype handling, and errors that name the layer."""

import numpy as np
import pytest

import cnnlab
from cnnlab import layers
from cnnlab.errors import ConfigError, ShapeError
from cnnlab.layers.base import CallContext

ALL_LAYERS = [
    lambda: layers.Conv2D(4, 3, strides=2, padding="same", dilation_rate=1, activation="relu"),
    lambda: layers.Conv2D(2, (2, 3), padding=((1, 0), (0, 2)), use_bias=False,
                          kernel_initializer="he_normal"),
    lambda: layers.MaxPooling2D(3, strides=1, padding="same"),
    lambda: layers.AveragePooling2D((2, 1)),
    lambda: layers.GlobalAveragePooling2D(),
    lambda: layers.Flatten(),
    lambda: layers.Dense(5, activation="softmax"),
    lambda: layers.Dropout(0.25, seed=3),
    lambda: layers.Activation("tanh"),
    lambda: layers.ReLU(),
    lambda: layers.Softmax(),
]


def input_for(layer, seed):
    """A float32 batch the layer accepts: images, flattened for Dense."""
    x = np.random.default_rng(seed).standard_normal((2, 6, 5, 3)).astype(np.float32)
    return x.reshape(2, -1) if isinstance(layer, layers.Dense) else x


@pytest.mark.parametrize("make", ALL_LAYERS)
def test_layers_are_callable_and_round_trip_their_config(make):
    layer = make()
    x = input_for(layer, 0)
    out = layer(x)
    assert out.dtype == np.float32
    assert (None, *out.shape[1:]) == layer.output_shape          # Keras': batch axis first
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    clone.build(layer.input_shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone(x), out)


@pytest.mark.parametrize("make", ALL_LAYERS)
def test_backward_returns_input_and_parameter_gradients(make):
    layer = make()
    x = input_for(layer, 1)
    layer(x)                                                      # build
    out, cache = layer.forward(x, CallContext(training=True))
    grad_in, param_grads = layer.backward(np.ones_like(out), cache)
    assert grad_in.shape == x.shape
    assert [g.shape for g in param_grads] == [v.value.shape for v in layer.params]
    assert not hasattr(layer, "_cache") and not hasattr(layer, "grads")   # nothing per call


def test_keras_weight_layouts():
    conv = layers.Conv2D(8, (3, 5))
    conv.build((10, 10, 3))
    assert [w.shape for w in conv.get_weights()] == [(3, 5, 3, 8), (8,)]
    dense = layers.Dense(7)
    dense.build((12,))
    assert [w.shape for w in dense.get_weights()] == [(12, 7), (7,)]


def test_float64_layers_and_set_floatx():
    layer = layers.Conv2D(2, 3, dtype="float64")
    assert layer(np.zeros((1, 5, 5, 1))).dtype == np.float64
    cnnlab.config.set_floatx("float64")
    assert layers.Dense(3)(np.zeros((1, 4))).dtype == np.float64
    with pytest.raises(ConfigError, match="float32"):
        cnnlab.config.set_floatx("float16")


def test_dropout_is_active_only_in_training_and_seeded():
    x = np.ones((4, 100), dtype=np.float32)
    assert np.array_equal(layers.Dropout(0.5, seed=1)(x), x)
    a = layers.Dropout(0.5, seed=1)(x, training=True)
    b = layers.Dropout(0.5, seed=1)(x, training=True)
    assert np.array_equal(a, b) and set(np.unique(a)) == {0.0, 2.0}


@pytest.mark.parametrize("make,match", [
    (lambda: layers.Conv2D(0, 3), r"Conv2D 'conv2d.*': filters must be a positive int. "
                                  r"Received: filters=0"),
    (lambda: layers.Conv2D(8, 3, strides=0), "strides must be positive. Received: strides=0"),
    (lambda: layers.Conv2D(8, (3, 3, 3)), "kernel_size must be an int or a tuple of 2 ints"),
    (lambda: layers.Conv2D(8, 3, padding="full"), "padding must be 'valid', 'same'"),
    (lambda: layers.Conv2D(8, 3, activation="rleu"), "did you mean 'relu'"),
    (lambda: layers.Dense(-1), "units must be a positive int"),
    (lambda: layers.Dropout(1.0), r"rate must be a number in \[0, 1\)"),
    (lambda: layers.MaxPooling2D(padding=1), "padding must be 'valid' or 'same'"),
    (lambda: layers.Conv2D(8, 3, kernel_initializer="glorot"), "Unknown initializer"),
])
def test_bad_arguments_name_the_layer_and_the_value(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_wrong_input_rank_and_channels_are_named():
    conv = layers.Conv2D(4, 3, name="first_conv")
    with pytest.raises(ShapeError, match=r"Conv2D 'first_conv': expected input of shape "
                                         r"\(N, H, W, C\).*rank 3"):
        conv(np.zeros((28, 28, 1)))
    conv(np.zeros((1, 8, 8, 3)))
    with pytest.raises(ShapeError, match="last axis is 1, expected 3"):
        conv(np.zeros((1, 8, 8, 1)))
    with pytest.raises(ShapeError, match="numeric"):
        conv(np.array([[["a"]]]))


def test_input_too_small_shows_the_formula():
    model = cnnlab.Sequential([layers.Input((4, 4, 1))])
    with pytest.raises(ShapeError, match=r"floor\(\(4 - 5 \+ 0\) / 1\) \+ 1 = 0"):
        model.add(layers.Conv2D(2, 5))


def test_repr_shows_only_non_defaults():
    assert repr(layers.Conv2D(8, 3, padding="same")) == \
        "Conv2D(filters=8, kernel_size=[3, 3], padding='same')"
    assert repr(layers.MaxPooling2D()) == "MaxPooling2D(strides=[2, 2])"
