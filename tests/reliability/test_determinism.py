"""Promise: the same seed, machine and thread count give bitwise-identical weights."""

import subprocess
import sys

import numpy as np
import pytest

import cnnlab
from cnnlab import layers


@pytest.mark.parametrize("threads", [1, 2])
def test_same_seed_repeats_training_bit_for_bit(threads):
    cnnlab.config.set_threads(threads)
    runs = []
    for _ in range(2):
        cnnlab.utils.set_random_seed(42)
        model = cnnlab.Sequential([layers.Input((8, 8, 1)), layers.Conv2D(4, 3, activation="relu"),
                                   layers.MaxPooling2D(), layers.Flatten(), layers.Dropout(0.3),
                                   layers.Dense(3, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        x = np.random.default_rng(1).random((96, 8, 8, 1)).astype(np.float32)
        model.fit(x, np.arange(96) % 3, batch_size=32, epochs=3, verbose=0)
        runs.append(model.get_weights())
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_different_seeds_differ():
    weights = []
    for seed in (1, 2):
        cnnlab.utils.set_random_seed(seed)
        weights.append(cnnlab.zoo.get("lenet5").get_weights()[0])
    assert not np.array_equal(*weights)


def test_two_cli_runs_with_the_same_seed_are_identical(tmp_path):
    (x, y), (xt, yt) = cnnlab.datasets.mnist_sample.load_data()
    data = tmp_path / "d.npz"
    np.savez(data, x_train=x[:512], y_train=y[:512], x_test=xt[:64], y_test=yt[:64])
    outs = []
    for run in range(2):
        out = tmp_path / f"run{run}.cnnlab"
        subprocess.run([sys.executable, "-m", "cnnlab", "train", "--model", "simple_convnet",
                        "--data", str(data), "--epochs", "2", "--batch-size", "64", "--seed", "9",
                        "--out", str(out), "--verbose", "0"], check=True, capture_output=True)
        outs.append(cnnlab.models.load_model(out).get_weights())
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
