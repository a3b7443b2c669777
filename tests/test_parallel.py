"""Splitting a batch across threads (models.parallel) computes the same step as one thread."""

import numpy as np
import pytest

import cnnlab
from cnnlab import layers, optimizers


def model_and_data(dtype="float64"):
    cnnlab.config.set_floatx(dtype)
    cnnlab.utils.set_random_seed(3)
    model = cnnlab.Sequential([
        layers.Input((10, 10, 2)), layers.Conv2D(4, 3, activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(5, 2, padding="same", activation="relu"), layers.Flatten(),
        layers.Dense(6, activation="relu"), layers.Dense(3, activation="softmax")])
    model.compile(optimizer=optimizers.SGD(0.1, momentum=0.9), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 10, 10, 2)).astype(dtype)      # shards of 25 / 17, 17, 16
    y = cnnlab.utils.to_categorical(rng.integers(0, 3, 50), 3, dtype=dtype)
    return model, x, y


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 1e-5)])
def test_sharded_step_equals_single_thread_step(dtype, rtol):
    results = {}
    for threads in (1, 2, 3):
        cnnlab.config.set_threads(threads)
        model, x, y = model_and_data(dtype)
        loss, acc = model.train_on_batch(x, y)
        results[threads] = (loss, model.get_weights(), model.predict(x, batch_size=50, verbose=0),
                            model.evaluate(x, y, batch_size=50, verbose=0))
    cnnlab.config.set_threads(2)
    single = results[1]
    for threads in (2, 3):
        loss, weights, predictions, evaluation = results[threads]
        assert loss == pytest.approx(single[0], rel=rtol)
        for a, b in zip(weights, single[1]):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * 1e-3)
        np.testing.assert_allclose(predictions, single[2], rtol=rtol, atol=rtol * 1e-3)
        np.testing.assert_allclose(evaluation, single[3], rtol=rtol)


def test_shards_are_contiguous_and_cover_the_batch():
    from cnnlab.training.parallel import shard_slices
    cnnlab.config.set_threads(3)
    parts = shard_slices(50)
    assert [(p.start, p.stop) for p in parts] == [(0, 17), (17, 34), (34, 50)]
    assert shard_slices(15) is None                 # too small to be worth splitting
    cnnlab.config.set_threads(2)
    assert shard_slices(31) is None                 # a shard of 15 would lose (MIN_SHARD's note)
    assert [(p.start, p.stop) for p in shard_slices(32)] == [(0, 16), (16, 32)]
    cnnlab.config.set_threads(1)
    assert shard_slices(1000) is None
    cnnlab.config.set_threads(2)
    with pytest.raises(cnnlab.errors.ConfigError):
        cnnlab.config.set_threads(0)


def test_an_error_in_one_shard_propagates_only_once_every_shard_has_ended():
    """No shard runs on behind an error (it would still be compiling, say, Numba's warning
    recording active on its thread, while the caller goes on): the first shard fails at once,
    the second ends later, and the error reaches the caller after it."""
    import threading
    import time

    from cnnlab.training.parallel import run_sharded
    ended = threading.Event()

    def failing():
        raise MemoryError("shard 0")

    def slow():
        time.sleep(0.2)
        ended.set()
        return 1

    with pytest.raises(MemoryError, match="shard 0"):
        run_sharded([failing, slow])
    assert ended.is_set()


@pytest.mark.parametrize("make", [
    lambda: cnnlab.optimizers.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda: cnnlab.optimizers.Adam(1e-3, weight_decay=1e-3)])
def test_optimizer_split_over_cores_equals_one_core_bit_for_bit(make):
    """Large parameters are updated in row ranges on both cores (views, in place)."""
    rng = np.random.default_rng(0)
    shapes = [(1024, 1000), (1000,), (5, 5, 32, 64), (3,)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    results = []
    for threads in (1, 2):
        cnnlab.config.set_threads(threads)
        ours = [p.copy() for p in params]
        optimizer = make()
        for step in range(3):
            grads = [np.random.default_rng(step).standard_normal(s).astype(np.float32)
                     for s in shapes]
            assert (cnnlab.training.parallel.split_elementwise(
                [(p, g, {}) for p, g in zip(ours, grads)], threads) is None) == (threads == 1)
            optimizer.apply(zip(ours, grads), threads=threads)
        results.append(ours)
    for one, two in zip(*results):
        assert np.array_equal(one, two)
    assert not np.array_equal(results[0][0], params[0])                 # it did update


def test_a_batch_in_one_piece_holds_blas_to_one_thread(monkeypatch):
    """A batch too small to split runs with BLAS at one thread, in training, evaluation and
    prediction, and the caller's BLAS limit comes back after it: a second BLAS thread spinning
    between calls is what made small batches 4x slower in phases (``parallel``, "One batch")."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from cnnlab.graph import execute
    from cnnlab.training import step

    def blas_threads():                 # NumPy's BLAS; Numba loads SciPy's, which it never runs
        counts = [pool["num_threads"] for pool in threadpool_info()
                  if pool["user_api"] == "blas" and "numpy" in pool["filepath"]]
        if len(counts) != 1:
            pytest.skip("NumPy's BLAS is not one library of its own here")
        return counts[0]

    cnnlab.config.set_threads(2)
    model, x, y = model_and_data("float32")
    seen = []
    shard_pass, forward = step._shard_pass, execute.forward
    monkeypatch.setattr(step, "_shard_pass",
                        lambda *a, **k: (seen.append(("pass", blas_threads())), shard_pass(*a, **k))[1])
    monkeypatch.setattr(execute, "forward",
                        lambda *a, **k: (seen.append(("forward", blas_threads())), forward(*a, **k))[1])
    with threadpool_limits(2, user_api="blas"):
        if blas_threads() != 2:
            pytest.skip("this BLAS cannot run two threads here")
        model.train_on_batch(x[:20], y[:20])                 # one piece: shards of 10 would lose
        model.evaluate(x[:20], y[:20], batch_size=20, verbose=0)
        model.predict(x[:20], batch_size=20, verbose=0)
        after = blas_threads()
    assert [count for _, count in seen] == [1] * len(seen) and len(seen) >= 4
    assert {what for what, _ in seen} == {"pass", "forward"}
    assert after == 2


def test_the_update_shares_only_the_threads_the_batch_ran_on(monkeypatch):
    """The optimizer's update takes the thread shards' cores, which are idle after them; a batch
    in one piece or in worker processes keeps it on one (``parallel.split_elementwise``)."""
    from cnnlab.training import workers
    cnnlab.config.set_threads(2)
    model, x, y = model_and_data("float32")
    seen = []
    apply = model.optimizer.apply
    model.optimizer.apply = lambda items, threads: (seen.append(threads), apply(items, threads))
    monkeypatch.setattr(cnnlab.config, "_shards", "threads")
    model.train_on_batch(x, y)                      # two thread shards of 25
    model.train_on_batch(x[:20], y[:20])            # one piece (shards of 10 would lose)
    monkeypatch.setattr(cnnlab.config, "_shards", "processes")
    monkeypatch.setattr(workers, "MIN_MULTIPLY_ADDS_PER_PARAMETER", 0)    # workers pay at once
    monkeypatch.setattr(workers, "_min_shards", type(workers._min_shards)())
    try:
        model.train_on_batch(x, y)                  # shard 1 in a worker process
        assert workers._pool is not None
    finally:
        workers.close()
    assert seen == [2, 1, 1]
    with pytest.raises(cnnlab.errors.ConfigError, match="threads must be a positive int"):
        apply([(np.ones(3), np.ones(3))], threads=0)
