"""A model on the GPU (``training.placement``): fit, evaluate and predict move it there once,
every batch crosses to it, and what comes back is NumPy, as Keras gives. Checked on a stand-in
for CuPy (NumPy underneath, its arrays of their own type): training there is bit for bit the
CPU's, the variables and optimizer slots live on the device while it trains, the engine's ops
never touch NumPy, and saving, ``get_weights`` and the tools read the values back.
``tests/test_gpu.py`` trains on CuPy itself where there is a GPU."""

import sys
import types

import numpy as np
import pytest
from array_ops import MODULES, NoNumPy, StandInArray, small_network, stand_in_module

import cnnlab
from cnnlab import config
from cnnlab.callbacks import Callback
from cnnlab.cli import main
from cnnlab.engine import conv, devices
from cnnlab.errors import ConfigError


class _Where(Callback):
    """Records the array types of the variables and optimizer slots after every batch."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def on_train_batch_end(self, batch, logs=None):
        self.seen |= {type(v.value) for v in self.model.variables}
        self.seen |= {type(value) for slots in self.model.optimizer._slots.values()
                      for value in slots.values()}


def _train(optimizer):
    """The same seeded run: fit with validation, then evaluate and predict."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 4, 40)
    cnnlab.utils.clear_session()                     # the same layer names in both runs
    cnnlab.utils.set_random_seed(7)
    model = small_network()
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    where = _Where()
    history = model.fit(x[:32], y[:32], batch_size=8, epochs=2, verbose=0, callbacks=[where],
                        validation_data=(x[32:], y[32:]))
    return (model, history.history, model.evaluate(x[32:], y[32:], verbose=0),
            model.predict(x[32:], verbose=0), where.seen)


@pytest.fixture
def reference_engine(monkeypatch):
    """The NumPy reference everywhere (a stand-in runs it), one thread: the CPU run and the
    stand-in's take the same path, so they must agree bit for bit."""
    monkeypatch.setattr(conv, "ALGORITHM", "direct")
    kernels, threads, device = config.kernels(), config.threads(), config.device()
    config.set_kernels("numpy")
    config.set_threads(1)
    yield monkeypatch
    config.set_kernels(kernels)
    config.set_threads(threads)
    config.set_device(device)


def _on_stand_in_gpu(monkeypatch) -> set:
    """'gpu' resolves to the stand-in; each engine module's ``np`` taken away."""
    looked_up: set = set()
    monkeypatch.setitem(sys.modules, "cupy", stand_in_module(looked_up))
    monkeypatch.setattr(devices, "GPU_ENGINE", True)
    monkeypatch.setattr(devices, "cupy_devices", lambda: (1, None))
    config.set_device("gpu")
    return looked_up


@pytest.mark.parametrize("optimizer", [
    lambda: "adam", lambda: cnnlab.optimizers.SGD(0.05, momentum=0.9, nesterov=True)],
    ids=["adam", "sgd-nesterov"])
def test_a_model_trains_on_the_gpu_as_on_the_cpu(reference_engine, optimizer, tmp_path):
    cpu_model, cpu_history, cpu_scores, cpu_outputs, cpu_types = _train(optimizer())
    assert cpu_types == {np.ndarray}

    looked_up = _on_stand_in_gpu(reference_engine)
    with pytest.MonkeyPatch.context() as engine:
        for module in MODULES:
            engine.setattr(module, "np", NoNumPy())
        model, history, scores, outputs, types = _train(optimizer())
    assert types == {StandInArray}                 # variables and slots stayed on the device
    assert {"asarray", "matmul"} <= looked_up
    assert history == cpu_history and scores == cpu_scores
    assert type(outputs) is np.ndarray
    np.testing.assert_array_equal(outputs, cpu_outputs)
    for got, want in zip(model.get_weights(), cpu_model.get_weights(), strict=True):
        assert type(got) is np.ndarray
        np.testing.assert_array_equal(got, want)

    # saving reads the device's values, optimizer state included; the file loads on the CPU
    model.save(tmp_path / "m.cnnlab")
    config.set_device("cpu")
    loaded = cnnlab.models.load_model(tmp_path / "m.cnnlab")
    np.testing.assert_array_equal(loaded.predict(ones := np.ones((2, 8, 8, 3),
                                                                         np.float32), verbose=0),
                                  model.predict(ones, verbose=0))
    assert type(model.variables[0].value) is np.ndarray         # predict on the CPU took it back
    state, cpu_state = loaded.optimizer.state_arrays(), cpu_model.optimizer.state_arrays()
    assert set(state) == set(cpu_state) and len(state) > len(cpu_model.trainable_params)
    for key, value in cpu_state.items():
        assert type(state[key]) is np.ndarray
        np.testing.assert_array_equal(state[key], value)


@pytest.mark.parametrize("call", ["fit", "evaluate", "predict", "train_on_batch"])
def test_bad_data_is_refused_before_anything_reaches_the_gpu(reference_engine, call):
    """NaN inputs, or labels out of range: the same DataError as on the CPU, and neither the
    batch nor the model's variables went to the device."""
    from cnnlab.errors import DataError
    looked_up = _on_stand_in_gpu(reference_engine)
    model = small_network()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = np.ones((8, 8, 8, 3), np.float32), np.zeros(8, int)
    bad_x, bad_y = x.copy(), y.copy()
    bad_x[3, 2, 2, 0] = np.nan
    bad_y[5] = 9
    for data, match in (((bad_x, y), "NaN or Inf"), ((x, bad_y), r"Labels must be in \[0, 4\)")):
        if call == "predict" and data[0] is x:
            continue                                           # predict takes no labels
        method = getattr(model, call)
        args = data[:1] if call == "predict" else data
        with pytest.raises(DataError, match=match):
            method(*args, **({} if call == "train_on_batch" else {"verbose": 0}))
    assert not looked_up and all(type(v.value) is np.ndarray for v in model.variables)


def test_a_mixed_precision_model_trains_on_the_gpu_as_on_the_cpu(reference_engine):
    """``mixed_bfloat16`` rounds on the device (``engine.precision`` takes its module from its
    input): the same steps, bit for bit, and nothing crosses back to NumPy meanwhile."""
    from cnnlab.engine import precision
    with config.dtype_policy_scope("mixed_bfloat16"):
        cpu_model, cpu_history, _, cpu_outputs, _ = _train("adam")
        looked_up = _on_stand_in_gpu(reference_engine)
        with pytest.MonkeyPatch.context() as engine:
            for module in (*MODULES, precision):
                engine.setattr(module, "np", NoNumPy())
            model, history, _, outputs, types = _train("adam")
    assert model.layers[1].compute_dtype == "bfloat16"
    assert types == {StandInArray} and "ascontiguousarray" in looked_up
    assert history == cpu_history
    np.testing.assert_array_equal(outputs, cpu_outputs)
    for got, want in zip(model.get_weights(), cpu_model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_out_of_gpu_memory_says_the_gpu_and_the_batch_to_try(reference_engine):
    """CuPy's ``cuda.memory.OutOfMemoryError`` is a MemoryError: on the device it comes out as
    cnnlab's, naming the GPU; with one image, the CPU is the way out."""
    import cnnlab.layers.conv as conv_layer
    from cnnlab.errors import OutOfMemoryError

    class CupyOutOfMemoryError(MemoryError):            # as cupy.cuda.memory defines it
        pass

    cnnlab.utils.set_random_seed(7)
    model = small_network()
    x = np.random.default_rng(0).standard_normal((16, 8, 8, 3)).astype(np.float32)
    _on_stand_in_gpu(reference_engine)
    model.predict(x, verbose=0)                                 # placed on the device

    def out_of_memory(*args, **kwargs):
        raise CupyOutOfMemoryError("Out of memory allocating 1,073,741,824 bytes")
    reference_engine.setattr(conv_layer, "conv2d_forward", out_of_memory)
    with pytest.raises(OutOfMemoryError, match=r"on the GPU in prediction at a batch of 16 "
                                               r"\(CupyOutOfMemoryError: .*batch_size=8"):
        model.predict(x, batch_size=16, verbose=0)
    with pytest.raises(OutOfMemoryError, match=r"on the GPU .* one image does not fit.*device cpu"):
        model.predict(x[:1], verbose=0)


def test_a_gpu_model_called_eagerly_or_set_computes_on_its_device(reference_engine):
    cnnlab.utils.set_random_seed(7)
    model = small_network()
    x = np.random.default_rng(0).standard_normal((3, 8, 8, 3)).astype(np.float32)
    expected = model(x)
    _on_stand_in_gpu(reference_engine)
    model.predict(x, verbose=0)                                 # placed on the device
    got = model(x)                                              # a host array goes over
    assert type(got) is StandInArray
    np.testing.assert_array_equal(got.get(), expected)
    model.set_weights(model.get_weights())                      # NumPy values in, kept there
    assert all(type(v.value) is StandInArray for v in model.variables)
    model.run(x)                                                # the tools read on the host
    assert all(type(v.value) is np.ndarray for v in model.variables)


def test_distributed_training_on_the_gpu_is_refused(reference_engine):
    _on_stand_in_gpu(reference_engine)
    model = small_network()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises(ConfigError, match="Distributed training runs on the CPU only"):
        model.fit(np.zeros((4, 8, 8, 3), np.float32), np.zeros(4, int), distributed=True,
                  verbose=0)


def test_the_cli_says_which_gpu_it_runs_on_and_predicts_there(reference_engine, tmp_path,
                                                              capsys):
    from PIL import Image
    _on_stand_in_gpu(reference_engine)
    sys.modules["cupy"].cuda = types.SimpleNamespace(
        Device=lambda: types.SimpleNamespace(id=0),
        runtime=types.SimpleNamespace(getDeviceProperties=lambda i: {"name": b"Stand-in GPU"}))
    digit = tmp_path / "digit.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(digit)
    on_cpu = main(["predict", "digits", "--device", "cpu", str(digit)]), capsys.readouterr().out
    assert main(["predict", "digits", "--device", "auto", str(digit)]) == 0 == on_cpu[0]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Running on the GPU: Stand-in GPU."
    assert lines[1:] == on_cpu[1].splitlines()                  # the same answer, to the digit
