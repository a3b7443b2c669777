"""Data-parallel training over MPI (2 ranks on localhost) equals one process training with the
same global batch; every rank holds identical weights; only rank 0 prints and writes."""

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import cnnlab


def mpirun(n, *command, cwd):
    if not shutil.which("mpirun"):
        if os.environ.get("CI"):
            pytest.fail("CI must install Open MPI (openmpi-bin) and mpi4py (see .ci/run)")
        pytest.skip("needs Open MPI: apt-get install openmpi-bin libopenmpi-dev")
    pytest.importorskip("mpi4py")
    return subprocess.run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", str(n),
                           *command], cwd=cwd, capture_output=True, text=True, timeout=600)


SCRIPT = textwrap.dedent("""
    import sys, numpy as np, cnnlab
    cnnlab.config.set_floatx("float64")
    cnnlab.config.set_threads(1)
    cnnlab.utils.set_random_seed(0)
    model = cnnlab.zoo.get("lenet5")
    model.compile(optimizer=cnnlab.optimizers.SGD(0.05, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    (x, y), _ = cnnlab.datasets.mnist_sample.load_data()
    x, y = cnnlab.datasets.as_model_input(x[:301]).astype("float64"), y[:301]
    history = model.fit(x, y, batch_size=64, epochs=2, verbose=0, distributed=True)
    from mpi4py import MPI
    rank = MPI.COMM_WORLD.Get_rank()
    np.savez(f"rank{rank}.npz", *model.get_weights(), loss=np.array(history.history["loss"]))
""")


def single_process_run():
    cnnlab.config.set_floatx("float64")
    cnnlab.config.set_threads(1)
    cnnlab.utils.set_random_seed(0)
    model = cnnlab.zoo.get("lenet5")
    model.compile(optimizer=cnnlab.optimizers.SGD(0.05, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    (x, y), _ = cnnlab.datasets.mnist_sample.load_data()
    x, y = cnnlab.datasets.as_model_input(x[:301]).astype("float64"), y[:301]
    history = model.fit(x, y, batch_size=64, epochs=2, verbose=0)
    return model.get_weights(), history.history["loss"]


def test_two_ranks_equal_one_process(tmp_path):
    (tmp_path / "train.py").write_text(SCRIPT)
    result = mpirun(2, sys.executable, "train.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in (0, 1)]
    weights, losses = single_process_run()
    for i, expected in enumerate(weights):
        np.testing.assert_array_equal(ranks[0][f"arr_{i}"], ranks[1][f"arr_{i}"])  # identical
        np.testing.assert_allclose(ranks[0][f"arr_{i}"], expected, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(ranks[0]["loss"], losses, rtol=1e-12)   # 301 = uneven shards


def test_cli_distributed_rank_zero_prints_and_writes(tmp_path):
    (x, y), (xt, yt) = cnnlab.datasets.mnist_sample.load_data()
    np.savez(tmp_path / "d.npz", x_train=x[:512], y_train=y[:512], x_test=xt[:64], y_test=yt[:64])
    result = mpirun(2, sys.executable, "-m", "cnnlab", "train", "--distributed", "--model",
                    "lenet5", "--data", "d.npz", "--epochs", "1", "--verbose", "2", "--out",
                    "m.cnnlab", "--checkpoint-dir", "ck", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("Epoch 1/1") == 1 and result.stdout.count("Saved model") == 1
    assert "on 2 MPI ranks" in result.stdout
    assert (tmp_path / "m.cnnlab").exists() and (tmp_path / "ck" / "checkpoint.cnnlab").exists()
    assert not list((tmp_path / "ck").glob(".tmp-*"))


BN_MODEL = textwrap.dedent("""
    import numpy as np, cnnlab
    from cnnlab import layers
    def bn_run(distributed=False, sync=True, threads=1, batch_size=32):
        cnnlab.config.set_floatx("float64")
        cnnlab.config.set_threads(threads)
        cnnlab.utils.set_random_seed(0)
        inputs = cnnlab.Input((8, 8, 1))
        x = layers.Conv2D(4, 3, padding="same", use_bias=False, name="c")(inputs)
        x = layers.ReLU()(layers.BatchNormalization(name="bn")(x))
        x = layers.Add()([x, layers.Conv2D(4, 1, name="shortcut")(inputs)])
        outputs = layers.Dense(3, activation="softmax")(layers.GlobalAveragePooling2D()(x))
        model = cnnlab.Model(inputs, outputs)
        model.compile(cnnlab.optimizers.SGD(0.1, momentum=0.9), "sparse_categorical_crossentropy")
        rng = np.random.default_rng(1)
        x, y = rng.random((70, 8, 8, 1)), rng.integers(0, 3, 70)
        kwargs = dict(distributed=True, sync_batch_norm=sync) if distributed else {}
        model.fit(x, y, batch_size=batch_size, epochs=2, verbose=0, **kwargs)
        return model.get_weights()
""")


def test_batch_norm_over_two_ranks_equals_one_process_and_two_threads(tmp_path):
    """With BatchNormalization the statistics are summed over the ranks (by default): 2 MPI ranks,
    1 thread and 2 threads give the same weights; per-rank statistics (sync_batch_norm=False)
    give different ones, identical on every rank."""
    script = BN_MODEL + textwrap.dedent("""
        import sys
        from mpi4py import MPI
        weights = bn_run(distributed=True, sync=sys.argv[1] == "sync")
        np.savez(f"{sys.argv[1]}{MPI.COMM_WORLD.Get_rank()}.npz", *weights)
    """)
    (tmp_path / "bn.py").write_text(script)
    for mode in ("sync", "local"):
        result = mpirun(2, sys.executable, "bn.py", mode, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    namespace = {}
    exec(BN_MODEL, namespace)                                     # noqa: S102 (our own code)
    one, two = namespace["bn_run"](threads=1), namespace["bn_run"](threads=2)
    ranks = {mode: [np.load(tmp_path / f"{mode}{r}.npz") for r in (0, 1)]
             for mode in ("sync", "local")}
    for i, expected in enumerate(one):
        np.testing.assert_allclose(two[i], expected, rtol=1e-10, atol=1e-12)
        for mode in ("sync", "local"):
            np.testing.assert_array_equal(ranks[mode][0][f"arr_{i}"], ranks[mode][1][f"arr_{i}"])
        np.testing.assert_allclose(ranks["sync"][0][f"arr_{i}"], expected, rtol=1e-10,
                                   atol=1e-12)
    assert any(not np.allclose(ranks["local"][0][f"arr_{i}"], expected)
               for i, expected in enumerate(one))


def test_batch_norm_over_two_ranks_of_two_threads_each_equals_one_process(tmp_path):
    """Threads inside each rank (32 samples a rank, two shards of 16): each rank's shards sum
    their statistics, one thread a rank exchanges the total with the other rank, and every
    shard gets it back, over several BatchNormalization calls in a row."""
    script = BN_MODEL + textwrap.dedent("""
        from mpi4py import MPI
        weights = bn_run(distributed=True, threads=2, batch_size=64)
        np.savez(f"threads{MPI.COMM_WORLD.Get_rank()}.npz", *weights)
    """)
    (tmp_path / "bn.py").write_text(script)
    result = mpirun(2, sys.executable, "bn.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    namespace = {}
    exec(BN_MODEL, namespace)                                     # noqa: S102 (our own code)
    expected = namespace["bn_run"](threads=1, batch_size=64)
    for rank in (0, 1):
        weights = np.load(tmp_path / f"threads{rank}.npz")
        for i, value in enumerate(expected):
            np.testing.assert_allclose(weights[f"arr_{i}"], value, rtol=1e-10, atol=1e-12)


ZOO_SCRIPT = textwrap.dedent("""
    import json, numpy as np, cnnlab
    from mpi4py import MPI
    from cnnlab.runs import make_optimizer, run_settings
    from cnnlab.training.step import random_layers
    cnnlab.config.set_threads(1)
    rank, record = MPI.COMM_WORLD.Get_rank(), {}
    for name in ("resnet20", "cifar_vgg", "mobilenet_small"):
        cnnlab.utils.set_random_seed(0)
        model = cnnlab.zoo.get(name, input_shape=(32, 32, 3), num_classes=4, augment=True)
        model.compile(make_optimizer(run_settings(model=name, epochs=1), 2),
                      "sparse_categorical_crossentropy")
        rng = np.random.default_rng(1)
        x, y = rng.random((32, 32, 32, 3), dtype=np.float32), rng.integers(0, 4, 32)
        history = model.fit(x, y, batch_size=16, epochs=1, verbose=0, distributed=True)
        np.savez(f"{name}{rank}.npz", *model.get_weights())
        record[name] = {"loss": history.history["loss"][0], "streams": [
            layer.rng.bit_generator.state["state"]["state"] for layer in random_layers(model)]}
    json.dump(record, open(f"record{rank}.json", "w"))
""")


def test_every_photo_model_trains_on_two_ranks_with_its_own_augmentation_per_rank(tmp_path):
    """Each zoo photo model (BatchNorm, augmentation layers, its recipe's schedule) trains over
    2 MPI ranks: the ranks end with identical weights, and each rank draws its own augmentation
    (the same seed everywhere would flip and crop both halves of a batch alike)."""
    import json
    (tmp_path / "zoo.py").write_text(ZOO_SCRIPT)
    result = mpirun(2, sys.executable, "zoo.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads((tmp_path / f"record{r}.json").read_text()) for r in (0, 1)]
    for name in ("resnet20", "cifar_vgg", "mobilenet_small"):
        ranks = [np.load(tmp_path / f"{name}{r}.npz") for r in (0, 1)]
        assert len(ranks[0].files) > 10
        for key in ranks[0].files:
            np.testing.assert_array_equal(ranks[0][key], ranks[1][key])
        assert records[0][name]["loss"] == records[1][name]["loss"]
        assert np.isfinite(records[0][name]["loss"])
        streams = [records[r][name]["streams"] for r in (0, 1)]
        assert len(streams[0]) >= 2 and all(a != b for a, b in zip(*streams))
