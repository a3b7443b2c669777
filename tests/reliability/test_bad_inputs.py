"""Promise: every bad input gets an error that says what was received, what was expected and
where; nothing is lost and nothing crashes. The catalogue, one test (or case) per entry."""

import numpy as np
import pytest
from PIL import Image
from test_model_api import small_model, toy_data

import cnnlab
from cnnlab import layers, optimizers, preprocess
from cnnlab.cli import main
from cnnlab.errors import ConfigError, DataError, ModelFileError, NotBuiltError, ShapeError


# --- data given to fit / evaluate / predict -----------------------------------------------------
@pytest.mark.parametrize("mutate,error,match", [
    (lambda x, y: (x[..., 0], y), ShapeError, r"expects inputs of shape \(N, 8, 8, 1\).*channel"),
    (lambda x, y: (x[None], y), ShapeError, r"expects inputs of shape \(N, 8, 8, 1\)"),
    (lambda x, y: (np.where(x > 0.5, np.nan, x), y), DataError, "NaN or Inf"),
    (lambda x, y: (np.where(x > 0.5, np.inf, x), y), DataError, "NaN or Inf"),
    (lambda x, y: (x, y + 5), DataError, r"Labels must be in \[0, 3\)"),
    (lambda x, y: (x, y - 1), DataError, r"Labels must be in \[0, 3\)"),
    (lambda x, y: (x, y + 0.5), DataError, "integer class labels"),
    (lambda x, y: (x, cnnlab.utils.to_categorical(y, 4)), DataError, "integer labels of shape"),
    (lambda x, y: (x, y[:-1]), DataError, "x has 60 samples but y has 59"),
    (lambda x, y: (x[:0], y[:0]), DataError, "empty"),
    (lambda x, y: (x.astype(str), y), DataError, "numeric"),
    (lambda x, y: (x.astype(np.complex64), y), DataError, "real numeric"),
])
def test_bad_data_is_refused_with_a_clear_message(mutate, error, match):
    x, y = toy_data()
    x, y = mutate(x, y)
    with pytest.raises(error, match=match):
        small_model().fit(x, y, verbose=0)


def test_out_of_memory_names_the_batch_size_to_try_and_changes_nothing(monkeypatch):
    """NumPy's allocation error (and CuPy's, a MemoryError too) deep in a batch comes out as
    one error that says where, at what batch, and the batch to try; the weights are as before."""
    import cnnlab.layers.conv as conv_layer
    from cnnlab.errors import CnnlabError, OutOfMemoryError
    x, y = toy_data(64)
    model = small_model()
    before = model.get_weights()
    real = conv_layer.conv2d_forward

    def allocating(x, *args, **kwargs):           # as NumPy says it, past 8 images
        if len(x) > 8:
            raise MemoryError(f"Unable to allocate 31.4 GiB for an array with shape {x.shape}")
        return real(x, *args, **kwargs)
    monkeypatch.setattr(conv_layer, "conv2d_forward", allocating)
    with pytest.raises(OutOfMemoryError, match=r"this machine in training at a batch of 32 "
                                               r"\(MemoryError: Unable to allocate.*batch_size=16"):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), before))
    with pytest.raises(OutOfMemoryError, match="in prediction at a batch of 64.*a batch of 32"):
        model.predict(x, batch_size=64, verbose=0)
    with pytest.raises(OutOfMemoryError, match="in evaluation at a batch of 16"):
        model.evaluate(x, y, batch_size=16, verbose=0)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)         # a batch that fits still trains
    error = OutOfMemoryError("x")
    assert isinstance(error, MemoryError) and isinstance(error, CnnlabError)
    monkeypatch.setattr(conv_layer, "conv2d_forward", lambda *a, **k: (_ for _ in ()).throw(
        MemoryError("Unable to allocate")))
    with pytest.raises(OutOfMemoryError, match="Even one image does not fit"):
        model.predict(x[:1], verbose=0)


def test_the_command_says_out_of_memory_in_one_line(monkeypatch, tmp_path, capsys):
    import cnnlab.layers.conv as conv_layer

    def allocating(*args, **kwargs):
        raise MemoryError("Unable to allocate 31.4 GiB")
    monkeypatch.setattr(conv_layer, "conv2d_forward", allocating)
    (x, y), _ = cnnlab.datasets.mnist_sample.load_data()
    np.savez(tmp_path / "toy.npz", x=x[:80], y=y[:80])
    assert main(["train", "--data", str(tmp_path / "toy.npz"), "--batch-size", "32",
                 "--out", str(tmp_path / "toy.cnnlab"), "--verbose", "0"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("cnnlab: error: Out of memory on this "
                                                   "machine in training at a batch of 32")
    assert "--batch-size 16" in error[0] and not (tmp_path / "toy.cnnlab").exists()


def test_wrong_one_hot_width_names_both_widths():
    x, y = toy_data()
    model = small_model(loss="categorical_crossentropy")
    with pytest.raises(DataError, match=r"one-hot targets of shape \(N, 3\).*\(60, 4\)"):
        model.fit(x, cnnlab.utils.to_categorical(y, 4), verbose=0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(batch_size=0), "batch_size must be a positive int"),
    (dict(batch_size=-8), "batch_size must be a positive int"),
    (dict(validation_split=1.0), r"validation_split must be a number in \[0, 1\)"),
    (dict(validation_split=-0.1), r"validation_split must be a number in \[0, 1\)"),
    (dict(epochs=-1), "epochs must be a non-negative int"),
    (dict(verbose=3), "verbose must be"),
    (dict(validation_data=([1, 2],)), r"validation_data must be a tuple \(x_val, y_val\)"),
])
def test_bad_fit_arguments_are_named(kwargs, match):
    x, y = toy_data()
    with pytest.raises(ConfigError, match=match):
        small_model().fit(x, y, **{"verbose": 0, **kwargs})


def test_nan_loss_stops_and_keeps_the_last_good_weights():
    x, y = toy_data()
    model = small_model(optimizer=optimizers.SGD(1e30))
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning, match="loss is"):
        model.fit(x, y, epochs=3, batch_size=10, verbose=0)
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert model.stop_training


# --- names ---------------------------------------------------------------------------------------
def test_unknown_names_suggest_the_closest():
    model = cnnlab.Sequential([layers.Input((4,)), layers.Dense(2)])
    with pytest.raises(ConfigError, match="did you mean 'categorical_crossentropy'"):
        model.compile(optimizer="sgd", loss="categorical_crossentropi")
    with pytest.raises(ConfigError, match="did you mean 'adam'"):
        model.compile(optimizer="adamm", loss="mse")
    with pytest.raises(ConfigError, match="did you mean 'relu'"):
        layers.Dense(3, activation="reluu")
    with pytest.raises(ConfigError, match="did you mean 'Conv2D'"):
        cnnlab.Sequential.from_config({"layers": [{"class_name": "Conv2d", "config": {}}]})
    with pytest.raises(ConfigError, match="did you mean 'lenet5'"):
        cnnlab.zoo.get("lenet6")
    with pytest.raises(NotBuiltError, match="compile"):
        model.fit(np.zeros((2, 4)), np.zeros(2), verbose=0)


def test_input_too_small_for_the_network_shows_the_formula():
    # 12 -> conv 5: 8 -> pool: 4 -> conv 5: floor((4 - 5 + 0) / 1) + 1 = 0
    with pytest.raises(ShapeError, match=r"floor\(\(4 - 5 \+ 0\) / 1\) \+ 1 = 0"):
        cnnlab.zoo.get("article", input_shape=(12, 12, 1))


# --- images --------------------------------------------------------------------------------------
def _digit():
    (x, _), _ = cnnlab.datasets.mnist_sample.load_data()
    return x[0]


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "CMYK", "I;16", "I", "F", "LA", "1"])
def test_odd_image_modes_become_the_same_digit(mode, tmp_path):
    digit = _digit()
    reference = preprocess.image_to_input(Image.fromarray(digit), (28, 28, 1))
    if mode == "I;16":
        image = Image.fromarray(digit.astype(np.uint16) * 257)       # 16-bit, full range
    elif mode in ("I", "F"):
        image = Image.fromarray(digit.astype(np.int32 if mode == "I" else np.float32))
    else:
        image = Image.fromarray(digit).convert(mode)
    suffix = ".tif" if mode in ("CMYK", "F", "I") else ".png"
    path = tmp_path / f"digit{suffix}"
    image.save(path)
    out = preprocess.image_to_input(preprocess.open_image(path), (28, 28, 1))
    assert out.shape == (28, 28, 1) and out.dtype == np.float32
    tolerance = 0.6 if mode == "1" else 0.02                    # 1-bit throws grey levels away
    assert np.abs(out - reference).mean() < tolerance, mode


@pytest.mark.parametrize("make,match", [
    (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40), "not an image|corrupt"),
    (lambda p: p.write_text("just text"), "not an image"),
])
def test_corrupt_images_are_named(tmp_path, make, match):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(DataError, match=match):
        preprocess.open_image(path)


def test_truncated_image_is_named(tmp_path):
    path = tmp_path / "digit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="corrupt or truncated"):
        preprocess.open_image(path)


def test_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    for side in (1200, 2000):
        path = tmp_path / f"bomb{side}.png"
        Image.new("L", (side, side)).save(path)
        with pytest.raises(DataError, match=f"is {side} x {side} pixels; the limit is 1,000,000"):
            preprocess.open_image(path, max_pixels=1_000_000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)   # the user's own, stricter limit:
    with pytest.raises(DataError, match="too large to decode safely"):   # Pillow refuses first
        preprocess.open_image(tmp_path / "bomb1200.png")


def test_missing_image_is_named(tmp_path):
    with pytest.raises(DataError, match="No image file"):
        preprocess.open_image(tmp_path / "nope.png")


# --- files and the command line ------------------------------------------------------------------
def test_loading_a_model_file_that_is_not_one(tmp_path):
    path = tmp_path / "photo.cnnlab"
    Image.new("L", (4, 4)).save(path, format="PNG")
    with pytest.raises(ModelFileError, match="not a valid model file"):
        cnnlab.models.load_model(path)


@pytest.mark.parametrize("argv,message", [
    (["train", "--optimizer", "adam", "--momentum", "0.5"], "--momentum applies to --optimizer sgd"),
    (["train", "--resume", "somewhere", "--epochs", "3"], "No checkpoint to resume"),
    (["train", "--checkpoint-every", "5"], "--checkpoint-every needs --checkpoint-dir"),
    (["predict", "missing.cnnlab", "x.png"], "No model file"),
])
def test_contradicting_or_impossible_cli_options(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_checkpoint_dir_is_never_silently_overwritten(tmp_path, capsys):
    (tmp_path / "checkpoint.cnnlab").write_bytes(b"precious")
    assert main(["train", "--checkpoint-dir", str(tmp_path)]) == 1
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert (tmp_path / "checkpoint.cnnlab").read_bytes() == b"precious"
