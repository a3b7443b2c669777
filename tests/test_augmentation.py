"""Augmentation layers: off at inference, repeatable with a seed, saved with the model, and
exact gradients (finite differences) so they may sit anywhere in a network."""

import numpy as np
import pytest

import cnnlab
from cnnlab import layers
from cnnlab.engine import augment
from cnnlab.layers.base import CallContext


@pytest.fixture(autouse=True)
def _float64():
    cnnlab.config.set_floatx("float64")         # exact comparisons; the conftest resets it


AUGMENTATIONS = [
    lambda seed: layers.RandomFlip(seed=seed),
    lambda seed: layers.RandomTranslation(0.2, (-0.1, 0.3), seed=seed),
    lambda seed: layers.RandomRotation(0.1, fill_mode="constant", fill_value=0.5, seed=seed),
    lambda seed: layers.RandomZoom((-0.2, 0.3), seed=seed, fill_mode="wrap"),
    lambda seed: layers.RandomContrast(0.4, seed=seed),
    lambda seed: layers.RandomBrightness((-0.3, 0.4), seed=seed),
]


def images(n=4):
    return np.random.default_rng(0).uniform(0, 255, (n, 9, 8, 3))


@pytest.mark.parametrize("make", AUGMENTATIONS)
def test_off_at_inference_and_repeatable_with_a_seed(make):
    x = images()
    assert np.array_equal(make(1)(x), x)                          # inference: untouched
    a = make(1)(x, training=True)
    b = make(1)(x, training=True)
    np.testing.assert_array_equal(a, b)                          # same seed, same images
    assert not np.array_equal(a, x)                               # training: changed
    assert a.shape == x.shape


@pytest.mark.parametrize("make", AUGMENTATIONS)
def test_backward_is_the_exact_adjoint(make):
    layer = make(3)
    layer.build((9, 8, 3))
    x = images(2)
    out, (cache, _, _) = layer.forward(x, CallContext(training=True))   # cache: the random draw
    grad_out = np.random.default_rng(1).standard_normal(out.shape)
    grad_x, _ = layer.backward(grad_out, (cache, None, None))
    # every augmentation is linear (contrast: affine) given its random draw, so
    # <out(x + d) - out(x), g> = <d, grad_x> for any direction d
    direction = np.random.default_rng(2).standard_normal(x.shape) * 1e-3
    redo = (augment.flip_forward if isinstance(layer, layers.RandomFlip) else None)
    if isinstance(layer, layers.RandomFlip):
        shifted = redo(x + direction, *cache)[0]
    elif isinstance(layer, layers.RandomContrast):
        f = cache[0].reshape(-1)
        shifted = augment.contrast_forward(x + direction, f, layer.value_range)[0]
    elif isinstance(layer, layers.RandomBrightness):
        delta = cache[0].reshape(-1)
        shifted = augment.brightness_forward(x + direction, delta, layer.value_range)[0]
    else:
        corners, _ = cache
        shifted = np.zeros_like(x)
        batch = np.arange(len(x))[:, None, None]
        for yi, xi, weight in corners:
            shifted += weight[..., None] * (x + direction)[batch, yi, xi]
        if layer.fill_mode == "constant":
            shifted += ((1 - sum(w for _, _, w in corners)) * layer.fill_value)[..., None]
    lhs = ((shifted - out) * grad_out).sum()
    rhs = (direction * grad_x).sum()
    assert lhs == pytest.approx(rhs, rel=1e-6)


def test_rescaling_forward_backward_and_always_on():
    layer = layers.Rescaling(1 / 255, offset=-0.5)
    x = images()
    np.testing.assert_allclose(layer(x), x / 255 - 0.5)
    np.testing.assert_allclose(layer(x, training=True), x / 255 - 0.5)
    layer.build(x.shape[1:])
    _, cache = layer.forward(x, CallContext())
    np.testing.assert_allclose(layer.backward(np.ones_like(x), cache)[0],
                               np.full(x.shape, 1 / 255))


def test_augmented_model_trains_saves_and_loads(tmp_path):
    cnnlab.utils.set_random_seed(0)
    model = cnnlab.Sequential([
        layers.Input((12, 12, 1)), layers.Rescaling(1 / 255),
        layers.RandomFlip("horizontal", seed=1), layers.RandomTranslation(0.1, 0.1, seed=2),
        layers.RandomRotation(0.05, seed=3), layers.RandomZoom(0.1, seed=4),
        layers.RandomContrast(0.2, value_range=(0, 1), seed=5),
        layers.RandomBrightness(0.1, value_range=(0, 1), seed=6),
        layers.Conv2D(4, 3, activation="relu"), layers.Flatten(),
        layers.Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (32, 12, 12, 1))
    y = np.arange(32) % 2
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    model.save(tmp_path / "aug.cnnlab")
    loaded = cnnlab.models.load_model(tmp_path / "aug.cnnlab")
    assert [type(a) for a in loaded.layers] == [type(b) for b in model.layers]
    assert loaded.layers[2].get_config() == model.layers[2].get_config()
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.mark.parametrize("bad,match", [
    (lambda: layers.RandomFlip("diagonal"), "mode must be"),
    (lambda: layers.RandomRotation((0.3, 0.1)), "lower bound"),
    (lambda: layers.RandomZoom(0.1, fill_mode="mirror"), "fill_mode must be"),
    (lambda: layers.RandomContrast(1.5), "factor must be in"),
    (lambda: layers.RandomBrightness(1.5), "factor must be in"),
    (lambda: layers.RandomBrightness((0.3, -0.1)), "lower bound"),
])
def test_bad_arguments_are_named(bad, match):
    with pytest.raises(cnnlab.errors.ConfigError, match=match):
        bad()


def test_random_brightness_adds_one_draw_per_image_scaled_to_the_range_and_clips():
    """Keras' rule, written out: ``clip(x + u * (high - low), low, high)``, ``u`` drawn from
    ``factor`` by the layer's own seeded generator, one per image."""
    x = np.random.default_rng(0).random((5, 4, 3, 2))
    out = layers.RandomBrightness((-0.5, 0.5), value_range=(0, 1), seed=3)(x, training=True)
    u = np.random.default_rng(3).uniform(-0.5, 0.5, 5)            # the draws the layer makes
    np.testing.assert_array_equal(out, np.clip(x + u[:, None, None, None], 0, 1))
    wide = layers.RandomBrightness(0.5, value_range=(-1, 1), seed=3)(x, training=True)
    np.testing.assert_array_equal(wide, np.clip(x + 2 * u[:, None, None, None], -1, 1))


def test_random_crop_crops_where_its_generator_says_and_its_backward_is_the_adjoint():
    layer = layers.RandomCrop(5, 4, seed=3, dtype="float64")
    x = np.random.default_rng(0).standard_normal((6, 9, 7, 2))
    layer.build(x.shape[1:])
    draws = np.random.default_rng(3)                           # the same draws the layer makes
    tops, lefts = draws.integers(0, 5, 6), draws.integers(0, 4, 6)
    out, cache = layer.forward(x, CallContext(training=True))
    for n in range(6):
        np.testing.assert_array_equal(out[n], x[n, tops[n]:tops[n] + 5, lefts[n]:lefts[n] + 4])
    grad = np.random.default_rng(1).standard_normal(out.shape)
    grad_x, _ = layer.backward(grad, cache)
    direction = np.random.default_rng(2).standard_normal(x.shape)
    moved, _ = layer.forward(x + direction, CallContext(training=False))   # a different crop
    shifted = np.stack([(x + direction)[n, tops[n]:tops[n] + 5, lefts[n]:lefts[n] + 4]
                        for n in range(6)])
    assert ((shifted - out) * grad).sum() == pytest.approx((direction * grad_x).sum(), rel=1e-12)
    centre = layer(x)                                         # inference: the centre crop
    np.testing.assert_array_equal(centre, x[:, 2:7, 1:5])
    assert moved.shape == centre.shape


def test_pad_then_random_crop_is_the_identity_at_inference_and_refuses_small_images():
    from cnnlab.errors import ShapeError
    model = cnnlab.Sequential([layers.Input((8, 8, 3)), layers.ZeroPadding2D(4),
                               layers.RandomCrop(8, 8, seed=0)])
    x = np.random.default_rng(0).random((3, 8, 8, 3)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(x, verbose=0), x)
    assert not np.array_equal(model(x, training=True), x)
    with pytest.raises(ShapeError, match="a 9 x 9 crop of 8 x 8 images"):
        cnnlab.Sequential([layers.Input((8, 8, 3)), layers.RandomCrop(9, 9)])
