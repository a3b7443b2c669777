"""Test-time augmentation (``models.test_time``): the averaged outputs against a reference
written out pixel by pixel, labels from arrays and from batches, the command line, and clear
errors."""

import numpy as np
import pytest

from cnnlab import layers
from cnnlab.cli import main
from cnnlab.errors import ConfigError, DataError
from cnnlab.models import Model, test_time


def linear_softmax_model(shape, classes, rng):
    """softmax(flatten(x) @ w + b): its outputs are easy to write down independently."""
    inputs = layers.Input(shape)
    outputs = layers.Dense(classes, activation="softmax")(layers.Flatten()(inputs))
    model = Model(inputs, outputs)
    w = rng.normal(size=(int(np.prod(shape)), classes)).astype(np.float32)
    b = rng.normal(size=classes).astype(np.float32)
    model.set_weights([w, b])
    return model, w, b


def reference_outputs(x, w, b, views):
    """Every view built by index arithmetic, one pixel at a time: the mirror takes column
    W-1-j; a shift up-left takes pixel (i+1, j+1), down-right (i-1, j-1), and a pixel past the
    edge is its reflection (index -1 is 1, index H is H-2)."""
    n, h, wd, _ = x.shape

    def reflect(k, size):
        return 1 if k < 0 else size - 2 if k >= size else k

    def shifted(image, step):
        out = np.empty_like(image)
        for i in range(h):
            for j in range(wd):
                out[:, i, j] = image[:, reflect(i + step, h), reflect(j + step, wd)]
        return out

    def mirror(image):
        return np.stack([image[:, :, wd - 1 - j] for j in range(wd)], axis=2)

    def f(image):
        z = image.reshape(n, -1).astype(np.float64) @ w.astype(np.float64) + b
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    plain = (f(x) + f(mirror(x))) / 2
    if views == "flip":
        return plain
    up_left, down_right = shifted(x, 1), shifted(x, -1)
    return plain / 2 + sum(f(v) + f(mirror(v)) for v in (up_left, down_right)) / 8


@pytest.mark.parametrize("views", ["flip", "flip-translate"])
@pytest.mark.parametrize("shape", [(5, 6, 2), (2, 3, 1), (7, 4, 3)])
def test_averaged_outputs_equal_the_views_written_out_pixel_by_pixel(views, shape):
    rng = np.random.default_rng(0)
    model, w, b = linear_softmax_model(shape, 4, rng)
    x = rng.normal(size=(11, *shape)).astype(np.float32)
    expected = reference_outputs(x, w, b, views)
    got = test_time.predict(model, x, views, batch_size=4)     # chunks of 4, 4 and 3 images
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)
    assert len(test_time.weighted_views(x, views)) == test_time.VIEWS[views]
    # and the views change the answer: a plain prediction is not what is returned
    assert np.abs(model.predict(x, verbose=0) - got).max() > 1e-3


def test_accuracy_from_arrays_and_from_batches_of_images_and_labels():
    rng = np.random.default_rng(1)
    model, w, b = linear_softmax_model((6, 6, 3), 5, rng)
    x = rng.normal(size=(40, 6, 6, 3)).astype(np.float32)
    y = rng.integers(0, 5, size=40)
    expected = np.mean(reference_outputs(x, w, b, "flip-translate").argmax(axis=1) == y)
    assert 0 < expected < 1
    from_arrays = test_time.accuracy(model, x, y, "flip-translate", batch_size=16)
    batches = [(x[i:i + 7], y[i:i + 7]) for i in range(0, 40, 7)]
    from_batches = test_time.accuracy(model, batches, None, "flip-translate")
    assert from_arrays == from_batches == pytest.approx(expected)


def test_bad_input_gets_a_clear_error():
    rng = np.random.default_rng(2)
    model, _, _ = linear_softmax_model((4, 4, 1), 2, rng)
    x = np.zeros((3, 4, 4, 1), np.float32)
    with pytest.raises(ConfigError, match=r"Unknown test-time views 'rotate'.*'flip-translate'"):
        test_time.predict(model, x, "rotate")
    with pytest.raises(DataError, match=r"images of shape \(N, 4, 4, 1\).*received \(3, 4, 4\)"):
        test_time.predict(model, x[..., 0])
    with pytest.raises(DataError, match="3 images but 2 labels"):
        test_time.accuracy(model, x, [0, 1])
    with pytest.raises(DataError, match="give labels y with an array"):
        test_time.accuracy(model, x)
    tiny, _, _ = linear_softmax_model((1, 1, 1), 2, rng)
    with pytest.raises(DataError, match="at least 2x2 pixels; received 1x1"):
        test_time.predict(tiny, np.zeros((2, 1, 1, 1), np.float32))


@pytest.mark.filterwarnings("ignore:BatchNormalization")
def test_evaluate_and_predict_take_tta_on_the_command_line(tmp_path, capsys, monkeypatch):
    """A model trained on a folder of photos, scored with --tta: the figure printed is the
    library's on the images training held out, and the one training printed at its end."""
    from PIL import Image

    from cnnlab.data import evaluation_data
    from cnnlab.models import load_model
    rng = np.random.default_rng(3)
    root = tmp_path / "photos"
    for label, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        (root / label).mkdir(parents=True)
        for i in range(20):
            pixels = np.clip(np.array(colour) + rng.normal(0, 40, (12, 12, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / label / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", str(root), "--model", "cifar_vgg", "--image-size", "12",
                 "--epochs", "1", "--batch-size", "8", "--verbose", "0",
                 "--out", "photos.cnnlab"]) == 0
    trained = capsys.readouterr().out       # an augmented recipe reports the averaged figure
    said = "With test-time augmentation (cnnlab evaluate --tta flip-translate, the mean of 6 " \
           "views of each image): "
    assert said in trained
    assert main(["evaluate", "photos.cnnlab", "--tta", "flip-translate"]) == 0
    out = capsys.readouterr().out
    assert "(the mean of 6 views of each image, --tta flip-translate)" in out
    assert float(trained.split(said)[1].split("%")[0]) == \
        pytest.approx(100 * float(out.split("accuracy ")[1].split()[0]), abs=0.006)
    model = load_model("photos.cnnlab")
    x, y, _, _ = evaluation_data(model, "photos.cnnlab")
    printed = float(out.split("accuracy ")[1].split()[0])
    assert printed == pytest.approx(test_time.accuracy(model, x, y, "flip-translate"), abs=5e-5)
    assert main(["predict", "photos.cnnlab", str(root / "red" / "0.png"), "--tta", "flip"]) == 0
    assert "0.png: " in capsys.readouterr().out
