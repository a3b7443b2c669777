"""The zoo's modern CNNs: their shapes and sizes, their recipes as `cnnlab train` resolves them,
and that each trains, saves, resumes and exports (ONNX under onnxruntime, and torch) equal to
cnnlab. The long CIFAR-10 runs live in benchmarks/, not here."""

import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from interrupted import killed_and_resumed
from PIL import Image

import cnnlab
from cnnlab import zoo
from cnnlab.export import to_onnx, to_torch
from cnnlab.runs import make_optimizer, run_settings

PHOTO_MODELS = ["resnet20", "cifar_vgg", "cifar_vgg_wide", "mobilenet_small"]


def test_resnet20_is_he_et_al_s_cifar_network():
    model = zoo.get("resnet20", input_shape=(32, 32, 3))
    convs = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"]
    assert len([c for c in convs if c.kernel_size == (3, 3)]) == 19      # + the dense = 20 layers
    assert [c.filters for c in convs if c.kernel_size == (1, 1)] == [32, 64]   # projections
    assert model.count_params() == 274_042
    assert model.get_layer("features").output.shape == (None, 64)


def test_cifar_vgg_wide_is_cifar_vgg_at_airbench_s_widths():
    def convs(name):
        model = zoo.get(name)
        return model, [(layer.name, layer.filters) for layer in model.layers
                       if type(layer).__name__ == "Conv2D"]
    narrow, narrow_convs = convs("cifar_vgg")
    wide, wide_convs = convs("cifar_vgg_wide")
    assert [n for n, _ in wide_convs] == [n for n, _ in narrow_convs]      # the same layout
    assert [f for _, f in narrow_convs] == [24, 32, 32, 64, 64, 128, 128]
    assert [f for _, f in wide_convs] == [32, 64, 64, 256, 256, 256, 256]
    assert [type(layer).__name__ for layer in wide.layers] == [
        type(layer).__name__ for layer in narrow.layers]
    assert wide.count_params() == 1_980_394


@pytest.mark.parametrize("name", PHOTO_MODELS)
def test_each_photo_model_trains_saves_and_exports(name, tmp_path):
    cnnlab.utils.set_random_seed(0)
    settings = run_settings(model=name, epochs=1, batch_size=16)
    assert settings["augment"] and settings["schedule"] == "onecycle"
    model = zoo.get(name, input_shape=(32, 32, 3), num_classes=4, augment=True)
    model.compile(make_optimizer(settings, steps_per_epoch=2), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x, y = rng.random((32, 32, 32, 3), dtype=np.float32), rng.integers(0, 4, 32)
    before = model.get_weights()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    model.save(tmp_path / "m.cnnlab")
    loaded = cnnlab.load_model(tmp_path / "m.cnnlab")
    expected = model.predict(x[:8], verbose=0)
    np.testing.assert_array_equal(loaded.predict(x[:8], verbose=0), expected)
    session = ort.InferenceSession(to_onnx(model).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input": x[:8]})[0], expected, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(to_torch(model, input_layout="NHWC")(torch.tensor(x[:8])),
                                   expected, atol=1e-5)


def test_recipes_resolve_and_options_override_them():
    settings = run_settings(model="resnet20")
    recipe = zoo.RECIPES["resnet20"]
    assert (settings["lr"], settings["epochs"], settings["weight_decay"]) == (
        recipe.lr, recipe.epochs, recipe.weight_decay)
    assert settings["image_size"] == 32
    mine = run_settings(model="resnet20", epochs=3, optimizer="adamw", augment=False)
    assert (mine["epochs"], mine["optimizer"], mine["lr"], mine["augment"]) == (3, "adamw",
                                                                                0.001, False)
    assert run_settings()["schedule"] == "constant"          # the article's recipe is unchanged
    optimizer = make_optimizer(settings, steps_per_epoch=10)
    assert isinstance(optimizer.learning_rate, cnnlab.optimizers.schedules.OneCycle)
    assert optimizer.learning_rate.total_steps == 300


#: the word a recipe's description uses for each augmentation layer
_AUGMENTATION_WORDS = {"RandomFlip": "flip", "RandomCrop": "crop", "RandomTranslation": "shift",
                       "RandomZoom": "zoom", "RandomRotation": "rotation",
                       "RandomBrightness": "brightness", "RandomContrast": "contrast"}


@pytest.mark.parametrize("name", sorted(zoo.AUGMENTABLE))
def test_a_recipes_description_names_exactly_the_augmentation_its_model_runs(name):
    shape = (24, 24, 1) if name == "face_net" else (32, 32, 3)
    built = {type(layer).__name__ for layer in zoo.get(name, input_shape=shape,
                                                        augment=True).layers}
    said = zoo.RECIPES[name].describe(name)
    for layer, word in _AUGMENTATION_WORDS.items():
        assert (word in said) == (layer in built), (name, layer, said)
    if name == "face_net":      # the shipped face files' records say what their training ran
        for weights in ("faces", "web_faces"):
            record = cnnlab.load_model(zoo.pretrained_path("face_net", weights)).metadata
            assert zoo.AUGMENTATIONS[name] in record["pretrained"]["recipe"], weights


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """4 classes x 10 small random colour photos (32x32 PNG): 32 train, 8 validation."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    for name in ("ant", "bee", "cat", "dog"):
        (root / name).mkdir()
        for k in range(10):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{k}.png")
    return str(root)


@pytest.mark.parametrize("name", PHOTO_MODELS)
def test_each_photo_model_resumes_bit_exactly_after_sigkill_midway_through_its_schedule(
        name, photo_folder, tmp_path):
    """`cnnlab train --data FOLDER --model NAME` with the model's recipe (one-cycle schedule,
    augmentation layers, BatchNorm, weight decay, label smoothing), SIGKILLed after its first
    checkpoint and resumed, ends with the weights of a run never interrupted, bit for bit."""
    def command(out, *extra):
        return [sys.executable, "-m", "cnnlab", "train", "--out", str(out), "--verbose", "0",
                *extra]
    options = ["--model", name, "--data", photo_folder, "--epochs", "3", "--batch-size", "8"]
    resumed, reference, progress = killed_and_resumed(command, options, tmp_path, every=1)
    assert 0 < progress < 12                                     # 4 steps per epoch, 3 epochs
    assert resumed.optimizer.iterations == reference.optimizer.iterations == 12
    for ours, theirs in zip(resumed.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(ours, theirs)
