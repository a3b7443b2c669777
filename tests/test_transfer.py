"""Pretrained weights that ship with cnnlab, backbones, and transfer learning in Keras' idiom:
``base(x, training=False)`` keeps a backbone's BatchNormalization in inference mode while the
model around it trains."""

import json
import re
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

import cnnlab
from cnnlab import layers, zoo
from cnnlab.errors import ConfigError


@pytest.mark.parametrize("zoo_name, weights, data, held_out, least", [
    ("article", "digits", "mnist_sample", 2000, 0.97),
    ("face_net", "faces", "lfw_faces", 1240, 0.99)])
def test_shipped_weights_classify_their_held_out_images_as_their_metadata_says(
        zoo_name, weights, data, held_out, least):
    if data == "lfw_faces":
        pytest.importorskip("skimage")
    model = zoo.get(zoo_name, weights=weights)
    record = model.metadata["pretrained"]
    _, (x_test, y_test) = getattr(cnnlab.datasets, data).load_data()
    predictions = model.predict(x_test[..., None] / 255.0, verbose=0).argmax(axis=1)
    accuracy = float(np.mean(predictions == y_test))
    assert accuracy == pytest.approx(record["accuracy"], abs=1e-4) and accuracy > least
    assert f"recipes/pretrain.py {weights}" in record["command"]
    assert record["held_out_images"] == held_out == len(y_test)


def test_every_shipped_file_is_a_model_file_without_optimizer_state_and_with_its_record():
    for (name, weights), file in zoo.PRETRAINED.items():
        path = zoo.pretrained_path(name, weights)
        with zipfile.ZipFile(path) as archive:
            members = archive.namelist()
        assert not any(m.startswith("optimizer/") for m in members), file
        record = cnnlab.load_model(path).metadata["pretrained"]
        assert record["model"] == name and record["weights"] == weights
        assert {"data", "recipe", "accuracy", "command"} <= set(record)


def test_weights_are_matched_by_name_so_a_backbone_takes_another_input_size():
    full = zoo.get("cifar_vgg", weights="cifar10")
    trunk = zoo.get("cifar_vgg", weights="cifar10", include_top=False, input_shape=(48, 48, 3))
    assert trunk.output_shape == (None, 128) and "class_names" not in trunk.metadata
    for name, variable in trunk.named_variables():
        np.testing.assert_array_equal(variable.value, full.get_layer(name.split("/")[0])
                                      .variable(name.split("/")[1]))
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    same_size = zoo.get("cifar_vgg", weights="cifar10", include_top=False)
    features = cnnlab.Model(full.input, full.get_layer("features").output)
    np.testing.assert_allclose(same_size.predict(x, verbose=0), features.predict(x, verbose=0),
                               rtol=1e-6)


def test_pretrained_weights_refuse_what_cannot_fit_by_name():
    with pytest.raises(ConfigError, match="No pretrained weights 'cifar10' ship for resnet20"):
        zoo.get("resnet20", weights="cifar10")
    with pytest.raises(ConfigError, match="classify 10 classes; received num_classes=2"):
        zoo.get("cifar_vgg", weights="cifar10", num_classes=2)
    with pytest.raises(ConfigError, match="'features/kernel' of shape .*input shape"):
        zoo.get("article", weights="digits", input_shape=(32, 32, 1))


def _small_net(seed):
    cnnlab.utils.set_random_seed(seed)
    inputs = layers.Input((8, 8, 3), name="input")
    x = layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = layers.ReLU(name="relu")(layers.BatchNormalization(name="bn")(x))
    features = layers.GlobalAveragePooling2D(name="features")(x)
    return cnnlab.Model(inputs, layers.Dense(3, activation="softmax", name="predictions")(features))


def _transfer(base, classes=2):
    inputs = layers.Input((8, 8, 3), name="images")
    x = base(inputs, training=False)
    return cnnlab.Model(inputs, layers.Dense(classes, activation="softmax", name="head")(x))


def test_a_call_with_training_false_runs_in_inference_mode_while_the_model_trains(tmp_path):
    """Keras' fine-tuning rule: the unfrozen backbone learns, its BatchNormalization keeps its
    moving statistics and normalises with them (the gradient is the inference map's)."""
    base = zoo.backbone(_small_net(0))
    bn = base.get_layer("bn")
    bn.set_weights([w + 0.3 for w in bn.get_weights()])          # statistics not 0 / 1
    model = _transfer(base)
    model.compile(cnnlab.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(1)
    x, y = rng.random((16, 8, 8, 3)), rng.integers(0, 2, 16)
    statistics = [w.copy() for w in bn.get_weights()[2:]]
    kernel = base.get_layer("conv").get_weights()[0].copy()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for before, after in zip(statistics, bn.get_weights()[2:]):
        np.testing.assert_array_equal(before, after)
    assert not np.array_equal(kernel, base.get_layer("conv").get_weights()[0])
    # the training-mode forward of the whole model equals the backbone's inference output
    probe = rng.random((4, 8, 8, 3))
    outputs, tape = model.run(probe, training=True)
    inner = base.predict(probe, verbose=0)
    head = model.get_layer("head")
    np.testing.assert_allclose(outputs[0], head(inner), rtol=1e-6)
    # the mode is part of the graph: it survives a file
    model.save(tmp_path / "t.cnnlab")
    loaded = cnnlab.load_model(tmp_path / "t.cnnlab")
    assert [n.training for n in loaded.nodes] == [n.training for n in model.nodes]
    assert False in [n.training for n in loaded.nodes]


def test_the_inference_mode_gradient_matches_finite_differences():
    """The backward pass of a training step through a training=False BatchNormalization is the
    inference map's: checked against central differences in float64."""
    cnnlab.config.set_floatx("float64")
    try:
        base = zoo.backbone(_small_net(2))
        bn = base.get_layer("bn")
        bn.set_weights([w + 0.2 for w in bn.get_weights()])
        model = _transfer(base)
        x = np.random.default_rng(3).random((3, 8, 8, 3))
        weights = np.random.default_rng(4).standard_normal((3, 2))

        def loss(model_input):
            out, _ = model.run(model_input, training=True)
            return float(np.sum(out[0] * weights))

        _, tape = model.run(x, training=True, keep_cache=True)
        grad = model.backward_from(tape, [weights], want_inputs=True).inputs[0]
        eps, rng = 1e-6, np.random.default_rng(5)
        for _ in range(6):
            index = tuple(rng.integers(0, s) for s in x.shape)
            up, down = x.copy(), x.copy()
            up[index] += eps
            down[index] -= eps
            assert grad[index] == pytest.approx((loss(up) - loss(down)) / (2 * eps), abs=1e-8)
    finally:
        cnnlab.config.set_floatx("float32")


def test_a_call_mode_in_a_file_is_checked():
    model = _transfer(zoo.backbone(_small_net(0)))
    config = model.get_config()
    text = json.dumps(config).replace('"call_training": {"0": false}', '"call_training": {"0": 3}')
    assert text != json.dumps(config)
    with pytest.raises(ConfigError, match="call_training must map node indices"):
        cnnlab.Model.from_config(json.loads(text))


@pytest.fixture(scope="module")
def few_photos(tmp_path_factory):
    """3 classes x 12 small colour photos (40x40 PNG, resized to the backbone's 32x32)."""
    from PIL import Image
    root = tmp_path_factory.mktemp("few")
    rng = np.random.default_rng(7)
    for k, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir()
        for i in range(12):
            pixels = rng.integers(0, 120, (40, 40, 3), dtype=np.uint8)
            pixels[..., k] += 120                         # each class leans to one colour
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return str(root)


def _train(out, *options):
    return subprocess.run([sys.executable, "-m", "cnnlab", "train", "--out", str(out),
                           "--verbose", "0", *options], capture_output=True, text=True,
                          timeout=300)


def test_cli_transfer_trains_a_new_head_on_the_frozen_backbone_then_fine_tunes(
        few_photos, tmp_path):
    result = _train(tmp_path / "head.cnnlab", "--data", few_photos, "--pretrained",
                    "--epochs", "3", "--batch-size", "8")
    assert result.returncode == 0, result.stderr
    assert "a new head on cifar_vgg's frozen backbone (cifar10 weights)" in result.stdout
    assert "Warning: class" not in result.stdout           # no advice to do what it does
    model, shipped = cnnlab.load_model(tmp_path / "head.cnnlab"), zoo.get("cifar_vgg",
                                                                          weights="cifar10")
    base = next(layer for layer in model.layers if isinstance(layer, cnnlab.Model))
    assert not base.trainable and model.output_shape == (None, 3)
    for name, variable in base.named_variables():             # untouched, statistics included
        np.testing.assert_array_equal(variable.value, dict(shipped.named_variables())[name].value)
    result = _train(tmp_path / "tuned.cnnlab", "--data", few_photos, "--pretrained",
                    "--fine-tune", "2", "--epochs", "1", "--batch-size", "8")
    assert result.returncode == 0, result.stderr
    tuned = cnnlab.load_model(tmp_path / "tuned.cnnlab")
    base = next(layer for layer in tuned.layers if isinstance(layer, cnnlab.Model))
    shipped_vars = dict(shipped.named_variables())
    changed = {name for name, v in base.named_variables()
               if not np.array_equal(v.value, shipped_vars[name].value)}
    assert "stem_conv/kernel" in changed                    # fine-tuned ...
    assert not {n for n in changed if "moving" in n}        # ... with BN in inference mode


def test_pretrained_takes_your_own_model_file_as_the_frozen_backbone(few_photos, tmp_path):
    """--pretrained FILE: the backbone comes from that file (its architecture named in it),
    frozen, statistics included; a missing file is named."""
    cnnlab.utils.set_random_seed(3)
    own = zoo.get("cifar_vgg", num_classes=4)
    own.save(tmp_path / "mine.cnnlab")
    result = _train(tmp_path / "head.cnnlab", "--data", few_photos, "--pretrained",
                    str(tmp_path / "mine.cnnlab"), "--epochs", "1", "--batch-size", "8")
    assert result.returncode == 0, result.stderr
    assert "a new head on cifar_vgg's frozen backbone" in result.stdout
    model = cnnlab.load_model(tmp_path / "head.cnnlab")
    base = next(layer for layer in model.layers if isinstance(layer, cnnlab.Model))
    mine = dict(own.named_variables())
    for name, variable in base.named_variables():
        np.testing.assert_array_equal(variable.value, mine[name].value)
    result = _train(tmp_path / "x.cnnlab", "--data", few_photos, "--pretrained",
                    str(tmp_path / "missing.cnnlab"))
    assert result.returncode == 1 and "--pretrained: No file" in result.stderr


def test_fine_tune_needs_pretrained_and_tiny_data_gets_the_advice(few_photos, tmp_path):
    result = _train(tmp_path / "x.cnnlab", "--data", few_photos, "--fine-tune")
    assert result.returncode == 1 and "--fine-tune continues a --pretrained run" in result.stderr
    result = _train(tmp_path / "y.cnnlab", "--data", few_photos, "--model", "cifar_vgg",
                    "--epochs", "1", "--batch-size", "8")
    assert result.returncode == 0, result.stderr
    assert re.search(r"Warning: class '\w+' has \d training images .* add --pretrained",
                     result.stdout)


@pytest.mark.parametrize("kill_after", [2, 7])
def test_a_transfer_run_resumes_bit_exactly_across_the_unfreezing(kill_after, few_photos,
                                                                   tmp_path):
    """Killed in the head's epochs (2 steps) or in the fine-tuning ones (7), resumed: the same
    weights as a run never interrupted (4 steps an epoch, 2 + 2 epochs)."""
    options = ["--data", few_photos, "--pretrained", "--fine-tune", "2", "--epochs", "2",
               "--batch-size", "8"]
    assert _train(tmp_path / "reference.cnnlab", *options).returncode == 0
    checkpoints, out = tmp_path / "ck", tmp_path / "resumed.cnnlab"
    process = subprocess.Popen([sys.executable, "-m", "cnnlab", "train", "--out", str(out),
                                "--verbose", "0", *options, "--checkpoint-dir",
                                str(checkpoints), "--checkpoint-every", "1"],
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if cnnlab.load_model(checkpoints / "checkpoint.cnnlab").optimizer.iterations \
                    >= kill_after:
                break
        except cnnlab.errors.CnnlabError:
            pass
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    progress = cnnlab.load_model(checkpoints / "checkpoint.cnnlab").optimizer.iterations
    assert kill_after <= progress < 16
    result = _train(out, "--resume", str(checkpoints))
    assert result.returncode == 0, result.stderr
    resumed, reference = cnnlab.load_model(out), cnnlab.load_model(tmp_path / "reference.cnnlab")
    assert resumed.optimizer.iterations == reference.optimizer.iterations == 16
    for ours, theirs in zip(resumed.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(ours, theirs)


def test_shipped_weights_keep_the_input_size_they_were_trained_at():
    """``get`` rebuilt every model at the architecture's default size; ``web_faces`` learned
    faces at 24x24, where ``face_net``'s default is 25x25."""
    assert zoo.get("face_net", weights="web_faces").input_shape == (24, 24, 1)
    assert zoo.get("face_net", weights="faces").input_shape == (25, 25, 1)
    trunk = zoo.get("cifar_vgg", weights="cifar10", include_top=False, input_shape=(48, 48, 3))
    assert trunk.input_shape == (48, 48, 3)                       # asked for, still given
