"""A batch's shards in worker processes (training.workers) compute the very step, outputs and
losses the thread shards compute, and a worker that fails, dies or loses its parent is
handled."""

import gc
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import cnnlab
from cnnlab import layers, optimizers
from cnnlab.training import step, workers

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="worker processes are forked, on Linux only")


@pytest.fixture(autouse=True)
def two_shards():
    cnnlab.config.set_threads(2)
    yield
    workers.close()
    cnnlab.config.set_shards("processes")
    cnnlab.config.set_threads(2)
    cnnlab.config.set_floatx("float32")


def residual_model(seed=3, dropout=0.3):
    """BatchNormalization (sums over the shards), Dropout (a generator a shard), a residual Add
    and two outputs: everything a worker must get the same as a thread."""
    cnnlab.config.set_floatx("float64")
    cnnlab.utils.set_random_seed(seed)
    inputs = layers.Input((8, 8, 3))
    x = layers.Conv2D(6, 3, padding="same")(inputs)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    y = layers.BatchNormalization()(layers.Conv2D(6, 3, padding="same")(x))
    x = layers.ReLU()(layers.Add()([x, y]))
    x = layers.Dropout(dropout)(layers.GlobalAveragePooling2D()(x))
    model = cnnlab.Model(inputs, [layers.Dense(4, activation="softmax", name="a")(x),
                                  layers.Dense(2, name="b")(x)])
    model.compile(optimizer=optimizers.SGD(0.1, momentum=0.9),
                  loss=["sparse_categorical_crossentropy", "mse"], loss_weights=[1.0, 0.5])
    return model


def data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 8, 8, 3)),
            [rng.integers(0, 4, n), rng.standard_normal((n, 2))])


def train(shards, steps=3, threads=2, dropout=0.3):
    cnnlab.config.set_shards(shards)
    cnnlab.config.set_threads(threads)
    return train_model(residual_model(dropout=dropout), steps)


def train_model(model, steps=3):
    x, y = data()
    losses = [model.train_on_batch(x, y) for _ in range(steps)]
    model.set_weights([w * 0.9 for w in model.get_weights()])    # replaced, not updated in place
    losses.append(model.train_on_batch(x, y))
    model.layers[1].trainable = False                     # the first convolution frozen: re-forked
    model.compile(optimizer=optimizers.SGD(0.05), loss=["sparse_categorical_crossentropy", "mse"])
    losses.append(model.train_on_batch(x, y))
    return losses, model.get_weights(), workers._pool and len(workers._pool.processes)


@pytest.mark.parametrize("threads", [2, 3])
def test_processes_compute_the_thread_shards_step_bit_for_bit(threads):
    in_threads = train("threads", threads=threads)
    in_processes = train("processes", threads=threads)
    assert in_processes[2] == threads - 1 and not in_threads[2]
    assert in_processes[0] == in_threads[0]
    for a, b in zip(in_processes[1], in_threads[1]):
        np.testing.assert_array_equal(a, b)
    # and the unsplit step, to rounding (no dropout: one shard draws other masks than two)
    one, split = train("threads", threads=1, dropout=0.0), train("processes", threads=threads,
                                                                 dropout=0.0)
    np.testing.assert_allclose(split[0], one[0], rtol=1e-10)
    for a, b in zip(split[1], one[1]):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_fit_with_processes_equals_fit_with_threads():
    histories, weights = [], []
    for shards in ("threads", "processes"):
        cnnlab.config.set_shards(shards)
        model = residual_model(seed=5)
        x, y = data(96, seed=1)             # batches of 32: split alike both ways
        history = model.fit(x, y, batch_size=32, epochs=2, shuffle=True, verbose=0,
                            validation_data=(x[:32], [y[0][:32], y[1][:32]]))
        histories.append(history.history)
        weights.append(model.get_weights())
        assert workers._pool is None              # its workers stopped at its end
    assert histories[0] == histories[1]
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


def test_prediction_and_evaluation_in_processes_equal_threads_bit_for_bit():
    """Inference shards go to the workers too (no GIL to share). On two threads, at 32 images
    and more, both split a batch alike, so the outputs and losses are the threads' bit for
    bit, fused inference included; below, the workers split where threads do not, to
    rounding."""
    results = {}
    for shards in ("threads", "processes"):
        cnnlab.config.set_shards(shards)
        model = residual_model(seed=7, dropout=0.0)
        x, y = data(40, seed=2)
        results[shards] = (model.predict(x, batch_size=40, verbose=0),
                           model.predict_on_batch(x[:32]),
                           model.evaluate(x, y, batch_size=40, verbose=0),
                           model.test_on_batch(x[:36], [y[0][:36], y[1][:36]]),
                           len(workers.pids()))
        workers.close()
    threads, processes = results["threads"], results["processes"]
    assert threads[4] == 0 and processes[4] == 1
    for a, b in zip([*threads[0], *threads[1]], [*processes[0], *processes[1]]):
        np.testing.assert_array_equal(a, b)
    assert threads[2] == processes[2] and threads[3] == processes[3]
    # the worker's shard is the second half: a worker that computed anything else fails here
    alone = residual_model(seed=7, dropout=0.0).predict_on_batch(data(40, seed=2)[0][16:32])
    for a, b in zip(alone, processes[1]):
        np.testing.assert_allclose(b[16:], a, rtol=1e-12)
    model = residual_model(seed=7, dropout=0.0)
    n = 2 * workers.min_shard(model)                  # two worker shards; one thread shard
    assert n < 2 * cnnlab.training.parallel.MIN_SHARD
    x = data(n, seed=3)[0]
    cnnlab.config.set_shards("threads")
    unsplit = residual_model(seed=7, dropout=0.0).predict_on_batch(x)
    cnnlab.config.set_shards("processes")
    split = model.predict_on_batch(x)
    assert len(workers.pids()) == 1
    for a, b in zip(split, unsplit):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_two_models_trained_at_once_in_two_threads():
    """Off the main thread the shards run on threads (``workers.usable``), on the slices the
    workers would have had, so each model's steps are those it makes alone, bit for bit."""
    import threading
    cnnlab.config.set_shards("processes")
    alone = train("processes")
    models = [residual_model(), residual_model()]           # built here: seeding is global
    results, errors = [None, None], []

    def run(index):
        try:
            results[index] = train_model(models[index])
        except BaseException as exc:            # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for losses, weights, _ in results:
        assert losses == alone[0]
        for a, b in zip(weights, alone[1]):
            np.testing.assert_array_equal(a, b)


def test_a_refused_fork_falls_back_to_threads_for_good(monkeypatch):
    """Python 3.12 warns when a process with threads forks; under ``-W error`` the warning is
    an exception. Training goes on in threads, with the same results, and says so once."""
    in_threads = train("threads")

    def refuse(*args, **kwargs):
        raise DeprecationWarning("This process is multi-threaded, use of fork() may lead to "
                                 "deadlocks in the child.")
    monkeypatch.setattr(workers, "ShardProcesses", refuse)
    monkeypatch.setattr(workers, "_fork_refused", None)
    with pytest.warns(RuntimeWarning, match="could not start its shard worker processes"):
        refused = train("processes")
    assert workers._fork_refused.startswith("DeprecationWarning") and not workers.usable()
    assert refused[0] == in_threads[0]
    for a, b in zip(refused[1], in_threads[1]):
        np.testing.assert_array_equal(a, b)


def _failing_in_worker(exit_code=None):
    parent = os.getpid()
    original = step._run_shard

    def run_shard(*args):
        if os.getpid() != parent:
            if exit_code is not None:
                os._exit(exit_code)
            raise ValueError("a failure inside the worker")
        return original(*args)
    return run_shard


@pytest.mark.parametrize("exit_code,message", [(None, "a failure inside the worker"),
                                               (3, "died \\(exit code 3\\)")])
def test_a_failed_or_dead_worker_raises_and_leaves_the_weights(monkeypatch, exit_code, message):
    cnnlab.config.set_shards("processes")
    model = residual_model()
    x, y = data()
    model.train_on_batch(x, y)
    before = [w.copy() for w in model.get_weights()]
    workers.close()                               # the next workers fork with the failure
    monkeypatch.setattr(step, "_run_shard", _failing_in_worker(exit_code))
    with pytest.raises(RuntimeError, match=message):
        model.train_on_batch(x, y)
    assert workers._pool is None                  # stopped: they may be halfway through a step
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    monkeypatch.undo()
    model.train_on_batch(x, y)                     # new workers take over
    assert all(p.is_alive() for p in workers._pool.processes)


def test_only_the_main_thread_forks_workers():
    """A fork waits for any threaded BLAS call in flight, forever if that call's threads are
    busy (the web app hung so): a server's or a job's thread runs its shards on threads."""
    import threading
    cnnlab.config.set_shards("processes")
    model = residual_model(dropout=0.0)
    x, y = data()
    got = {}

    def run():
        got["outputs"] = model.predict_on_batch(x)
        got["loss"] = model.train_on_batch(x, y)
        got["pids"] = workers.pids()
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert got["pids"] == [] and "loss" in got
    same = residual_model(dropout=0.0)                      # the same weights, untrained
    for a, b in zip(got["outputs"], same.predict_on_batch(x)):         # main thread: workers
        np.testing.assert_array_equal(a, b)
    assert len(workers.pids()) == 1


def test_a_worker_predicts_with_weights_changed_in_place_or_replaced():
    """The workers share the variables' memory, and what inference derives from a kernel (a
    folded BatchNormalization, a packed Winograd kernel) is compared by value
    (``engine.arrays.derived``): a prediction after the weights change, in place or by
    ``set_weights``, is the threads' on the new weights, bit for bit."""
    cnnlab.config.set_floatx("float64")
    cnnlab.utils.set_random_seed(4)
    model = cnnlab.Sequential([layers.Input((16, 16, 16)), layers.Conv2D(16, 3, padding="same"),
                               layers.BatchNormalization(), layers.ReLU(),
                               layers.GlobalAveragePooling2D(), layers.Dense(3)])
    x = np.random.default_rng(5).standard_normal((32, 16, 16, 16))
    kernel = model.layers[0].variables[0]                               # the Variable

    initial = model.get_weights()

    def predictions(shards):
        cnnlab.config.set_shards(shards)
        model.set_weights(initial)
        first = model.predict_on_batch(x)
        kernel.value[...] *= 0.5                                       # in place
        halved = model.predict_on_batch(x)
        model.set_weights([w * 1.5 for w in model.get_weights()])      # replaced
        scaled = model.predict_on_batch(x)
        return first, halved, scaled, workers.pids()
    in_processes, in_threads = predictions("processes"), predictions("threads")
    assert len(in_processes[3]) == 1
    assert not np.array_equal(in_processes[0], in_processes[1])
    for a, b in zip(in_processes[:3], in_threads[:3]):
        np.testing.assert_array_equal(a, b)


def test_a_failed_worker_in_prediction_raises_and_the_next_call_forks_anew(monkeypatch):
    cnnlab.config.set_shards("processes")
    model = residual_model(dropout=0.0)
    x, _ = data()
    expected = model.predict_on_batch(x)
    workers.close()
    monkeypatch.setattr(step, "_run_shard", _failing_in_worker())
    with pytest.raises(RuntimeError, match="a failure inside the worker"):
        model.predict_on_batch(x)
    assert workers._pool is None
    monkeypatch.undo()
    for a, b in zip(model.predict_on_batch(x), expected):
        np.testing.assert_array_equal(a, b)
    assert len(workers.pids()) == 1


def test_workers_end_with_their_model():
    cnnlab.config.set_shards("processes")
    model = residual_model()
    model.train_on_batch(*data())
    processes = list(workers._pool.processes)
    del model
    gc.collect()
    assert workers._pool is None and workers.pids() == []
    for process in processes:
        process.join(timeout=5)
        assert not process.is_alive()


def test_workers_exit_when_their_parent_is_killed(tmp_path):
    script = textwrap.dedent("""
        import os, sys, time, numpy as np, cnnlab
        from cnnlab import layers
        cnnlab.config.set_threads(3)
        model = cnnlab.Sequential([layers.Input((16, 16, 1)), layers.Conv2D(8, 3),
                                   layers.Conv2D(8, 3), layers.GlobalAveragePooling2D(),
                                   layers.Dense(2, activation="softmax")])
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        x = np.zeros((48, 16, 16, 1), "float32")
        model.train_on_batch(x, np.zeros(48, int))
        from cnnlab.training import workers
        print(*workers.pids(), flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pids = [int(pid) for pid in parent.stdout.readline().split()]
    assert len(pids) == 2
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_running(pid) for pid in pids):
        time.sleep(0.05)
    assert not any(_running(pid) for pid in pids)


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not a zombie waiting for init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_worker_shards_where_their_work_dwarfs_the_parameters():
    """A worker copies its gradients and exchanges BatchNormalization's sums: it pays for a
    model with much arithmetic per parameter (convolutions), not for one of few (Dense)."""
    conv = cnnlab.Sequential([layers.Input((32, 32, 3)), layers.Conv2D(16, 3, padding="same"),
                              layers.Conv2D(16, 3, padding="same"),
                              layers.GlobalAveragePooling2D(), layers.Dense(10)])
    multiply_adds = 32 * 32 * (3 * 3 * 3 * 16 + 3 * 3 * 16 * 16) + 16 * 10
    assert workers._forward_multiply_adds(conv) == multiply_adds
    parameters = sum(v.value.size for v in conv.params)
    least = workers.MIN_MULTIPLY_ADDS_PER_PARAMETER
    assert workers.min_shard(conv) == -(-least * parameters // multiply_adds) == 1
    dense = cnnlab.Sequential([layers.Input((28, 28, 1)), layers.Flatten(),
                               layers.Dense(256), layers.Dense(10)])
    weights = 784 * 256 + 256 * 10                        # one multiply-add each, biases none
    assert workers._forward_multiply_adds(dense) == weights
    assert workers.min_shard(dense) == -(-least * (weights + 266) // weights) > least
    nested = cnnlab.Sequential([layers.Input((32, 32, 3)), conv])
    assert workers._forward_multiply_adds(nested) == multiply_adds


def test_shards_setting_is_checked():
    with pytest.raises(cnnlab.errors.ConfigError, match="set_shards"):
        cnnlab.config.set_shards("fibers")
