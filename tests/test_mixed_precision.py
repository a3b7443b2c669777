"""Mixed precision, Keras' way: ``'mixed_bfloat16'`` keeps float32 variables and computes in
bfloat16, emulated (``engine.precision``). Checked against PyTorch: its cast to bfloat16, bit
for bit, and its float64 arithmetic on bfloat16 operands rounded the way bfloat16 hardware
rounds a result."""

import numpy as np
import pytest
import torch
from reference import nchw, nhwc

import cnnlab
from cnnlab import config, layers
from cnnlab.cli import main
from cnnlab.engine import precision
from cnnlab.errors import ConfigError
from cnnlab.layers.base import CallContext

#: a bfloat16 value has 8 significant bits: one unit in the last place is 2**-7 of its leading
#: power of two
BF16_ULP = 2.0 ** -7


def _torch_bfloat16(array) -> np.ndarray:
    """PyTorch's cast to bfloat16, back in float32: the reference rounding."""
    return torch.from_numpy(np.ascontiguousarray(array, np.float32)).to(torch.bfloat16) \
        .to(torch.float32).numpy()


def _low_bits(array) -> np.ndarray:
    return np.ascontiguousarray(array, np.float32).view(np.uint32) & 0xFFFF


@pytest.mark.parametrize("kernels", ["numba", "numpy"])
def test_rounding_to_bfloat16_is_pytorchs_cast_bit_for_bit(kernels):
    config.set_kernels(kernels)
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2 ** 32, 400_000, dtype=np.uint64).astype(np.uint32)
    special = np.array([0.0, -0.0, np.inf, -np.inf, 3.39e38, 3.4e38, -3.4e38, 1e-40, -1e-45,
                        1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, np.nan, -np.nan],
                       np.float32)                    # ties to even both ways, overflow, tiny
    x = np.repeat(np.concatenate([bits.view(np.float32), special]), 2)[::2]    # strided
    ours, theirs = precision.round_to_bfloat16(x), _torch_bfloat16(x)
    nan = np.isnan(x)
    assert ours.dtype == np.float32 and ours.shape == x.shape
    assert np.array_equal(ours[~nan].view(np.uint32), theirs[~nan].view(np.uint32))
    assert np.isnan(ours[nan]).all() and nan.sum() > 10
    assert not _low_bits(ours[~nan]).any()


def test_the_kernels_switch_chooses_the_roundings_path():
    """Compiled by default, the NumPy reference under ``set_kernels('numpy')`` (the two are
    tested equal in ``test_kernels.py``)."""
    x = np.random.default_rng(1).standard_normal((3, 5, 7, 11)).astype(np.float32)
    config.set_kernels("numba")
    calls = []
    kernels = cnnlab.engine.compiled.module("precision_kernels", x)
    original = kernels.round_to_bfloat16
    try:
        kernels.round_to_bfloat16 = lambda *a: (calls.append(1), original(*a))
        precision.round_to_bfloat16(x)
        config.set_kernels("numpy")
        precision.round_to_bfloat16(x)
    finally:
        kernels.round_to_bfloat16 = original
    assert calls == [1]                  # compiled once, then the reference


def test_policies_have_keras_names_and_refuse_what_cnnlab_cannot_do():
    policy = cnnlab.mixed_precision.Policy("mixed_bfloat16")
    assert (policy.name, policy.compute_dtype, policy.variable_dtype) == (
        "mixed_bfloat16", "bfloat16", "float32")
    assert cnnlab.mixed_precision.global_policy().name == "float32"
    before = layers.Dense(2)
    cnnlab.mixed_precision.set_global_policy("mixed_bfloat16")
    mixed, own = layers.Dense(2), layers.Dense(2, dtype="float32")
    assert (mixed.compute_dtype, mixed.variable_dtype, mixed.dtype) == (
        "bfloat16", "float32", np.dtype("float32"))
    assert before.compute_dtype == own.compute_dtype == "float32"     # made before / its own
    cnnlab.mixed_precision.set_global_policy(None)
    config.set_floatx("float64")
    assert layers.Dense(2).dtype_policy.name == "float64"             # floatx's again
    with pytest.raises(ConfigError, match="'mixed_float16' is not supported.*mixed_bfloat16"):
        layers.Dense(2, dtype="mixed_float16")
    with pytest.raises(ConfigError, match="one of \\['float32', 'float64', 'mixed_bfloat16'\\]"):
        cnnlab.mixed_precision.set_global_policy("mixed_float32")
    with pytest.raises(ConfigError, match="dtype must be"):
        layers.Dense(2, dtype="int8")
    with config.dtype_policy_scope("mixed_bfloat16"):
        assert layers.Dense(2).compute_dtype == "bfloat16"
    assert layers.Dense(2).compute_dtype == "float64"                # the scope restored it


def _assert_bfloat16_result(ours, exact, what):
    """``ours``: bfloat16 values within one unit in the last place of ``exact`` (float64
    arithmetic on the same bfloat16 operands), and equal to its rounding but for the few whose
    float32 sums landed on the other side of a rounding boundary."""
    assert not _low_bits(ours).any(), f"{what}: not bfloat16 values"
    rounded = _torch_bfloat16(exact)
    differ = ours != rounded
    assert differ.mean() < 0.02, f"{what}: {differ.mean():.1%} differ from the rounded result"
    scale = np.maximum(np.abs(exact), 1e-30)
    assert (np.abs(ours - exact) / scale).max() <= BF16_ULP, what


def test_a_mixed_convolution_computes_what_bfloat16_hardware_does_forward_and_backward():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 9, 9, 5)).astype(np.float32)
    grad = rng.standard_normal((4, 9, 9, 6)).astype(np.float32)
    conv = layers.Conv2D(6, 3, padding="same", dtype="mixed_bfloat16")
    conv.build(x.shape[1:])
    conv.variables[1].assign(rng.standard_normal(6).astype(np.float32))
    out, cache = conv.forward(x, CallContext(training=True))
    grad_x, (grad_kernel, grad_bias) = conv.backward(grad, cache)
    # PyTorch, float64, on bfloat16 operands
    xt = nchw(_torch_bfloat16(x).astype(np.float64))
    kernel = _torch_bfloat16(conv.variables[0].value).astype(np.float64)
    kt = torch.tensor(kernel.transpose(3, 2, 0, 1), requires_grad=True)
    bt = torch.tensor(_torch_bfloat16(conv.variables[1].value).astype(np.float64),
                      requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, kt, bt, padding=1)
    yt.backward(nchw(grad.astype(np.float64), grad=False))
    _assert_bfloat16_result(out, nhwc(yt), "output")
    _assert_bfloat16_result(grad_x, nhwc(xt.grad), "input gradient")
    _assert_bfloat16_result(grad_kernel, kt.grad.numpy().transpose(2, 3, 1, 0),
                            "kernel gradient")
    _assert_bfloat16_result(grad_bias, bt.grad.numpy(), "bias gradient")
    # and the float32 policy's result is not that
    plain = layers.Conv2D(6, 3, padding="same")
    plain.build(x.shape[1:])
    plain.set_weights(conv.get_weights())
    assert _low_bits(plain(x)).any()


def test_a_mixed_dense_layer_and_its_float32_output_layer():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 40)).astype(np.float32)
    with config.dtype_policy_scope("mixed_bfloat16"):
        hidden = layers.Dense(30, activation="relu")
        head = layers.Dense(5, dtype="float32")          # Keras' advice for the last layer
    h = hidden(x)
    exact = np.maximum(_torch_bfloat16(x).astype(np.float64)
                       @ _torch_bfloat16(hidden.variables[0].value).astype(np.float64)
                       + _torch_bfloat16(hidden.variables[1].value), 0)
    _assert_bfloat16_result(h, exact, "Dense + ReLU")
    assert _low_bits(head(h)).any()                     # computed and kept in float32


def _small_network(policy):
    cnnlab.utils.clear_session()
    cnnlab.utils.set_random_seed(5)
    with config.dtype_policy_scope(policy):
        model = cnnlab.Sequential([
            layers.Input((8, 8, 3)),
            layers.Conv2D(8, 3, padding="same", use_bias=False),
            layers.BatchNormalization(momentum=0.9), layers.ReLU(), layers.MaxPooling2D(),
            layers.Flatten(), layers.Dense(4, activation="softmax", dtype="float32")])
    model.compile(optimizer=cnnlab.optimizers.SGD(0.1, momentum=0.9),
                  loss="sparse_categorical_crossentropy")
    return model


def test_mixed_training_keeps_float32_variables_and_learns_as_float32_does():
    rng = np.random.default_rng(4)
    x = rng.random((64, 8, 8, 3), dtype=np.float32)
    y = (x[:, :4].mean(axis=(1, 2, 3)) > x[:, 4:].mean(axis=(1, 2, 3))).astype(int) \
        + 2 * (x[..., 0].mean(axis=(1, 2)) > 0.5)
    losses = {}
    for policy in ("float32", "mixed_bfloat16"):
        model = _small_network(policy)
        history = model.fit(x, y, batch_size=16, epochs=8, verbose=0, shuffle=False)
        losses[policy] = history.history["loss"]
        if policy == "mixed_bfloat16":
            for variable in model.variables:
                assert variable.value.dtype == np.float32
            kernel = model.layers[0].variables[0].value
            assert _low_bits(kernel).any()              # the update keeps float32's bits
            assert model.layers[1].compute_dtype == "bfloat16"
    mixed, plain = np.array(losses["mixed_bfloat16"]), np.array(losses["float32"])
    assert mixed[-1] < 0.7 * mixed[0]                   # it learns
    assert np.abs(mixed - plain).max() < 0.05 * plain[0]    # as float32 does, nearly
    assert not np.array_equal(mixed, plain)             # but not in float32


def test_a_mixed_model_predicts_as_its_layers_do_one_by_one_and_keeps_its_policy(tmp_path):
    """Inference folds no BatchNormalization into a mixed convolution: the rounding between
    them stays where each layer puts it."""
    model = _small_network("mixed_bfloat16")
    x = np.random.default_rng(5).random((6, 8, 8, 3), dtype=np.float32)
    model.fit(x, np.arange(6) % 4, epochs=40, verbose=0)
    step = x
    for layer in model.layers:
        step = layer(step)
    assert np.array_equal(model.predict(x, verbose=0), step)
    model.save(tmp_path / "mixed.cnnlab")
    loaded = cnnlab.load_model(tmp_path / "mixed.cnnlab")
    assert [layer.dtype_policy.name for layer in loaded.layers] == [
        "mixed_bfloat16"] * 5 + ["float32"]
    assert np.array_equal(loaded.predict(x, verbose=0), step)


def test_a_mixed_layer_refuses_float64_arrays_by_name():
    layer = layers.Dense(3, dtype="mixed_bfloat16")
    layer.build((4,))
    with pytest.raises(ConfigError, match="'mixed_bfloat16' computes from float32 arrays; "
                                          "received float64"):
        layer.forward(np.ones((2, 4)), CallContext())


def test_cnnlab_train_dtype_policy_builds_the_model_under_it(tmp_path, capsys):
    out = tmp_path / "mixed.cnnlab"
    assert main(["train", "--epochs", "1", "--dtype-policy", "mixed_bfloat16", "--out",
                 str(out), "--verbose", "0"]) == 0
    model = cnnlab.load_model(out)
    assert {layer.dtype_policy.name for layer in model.layers} == {"mixed_bfloat16"}
    assert model.metadata["train_settings"]["dtype_policy"] == "mixed_bfloat16"
    accuracy = float(capsys.readouterr().out.split("Test accuracy: ")[1].split("%")[0])
    assert accuracy > 90
    assert config.dtype_policy().name == "float32"       # the command's policy stayed its own


def test_the_rounding_runs_on_the_module_of_its_input(monkeypatch):
    """On the GPU it rounds there: checked on the stand-in for CuPy (``tests/array_ops.py``),
    which refuses NumPy operands, bit for bit the NumPy result."""
    import sys

    from array_ops import NoNumPy, StandInArray, stand_in_module
    x = np.random.default_rng(6).standard_normal((4, 6)).astype(np.float32)
    x[0, :2] = [np.nan, np.inf]
    expected = precision.round_to_bfloat16(x)
    looked_up: set = set()
    monkeypatch.setitem(sys.modules, "cupy", stand_in_module(looked_up))
    monkeypatch.setattr(precision, "np", NoNumPy())
    got = precision.round_to_bfloat16(x.view(StandInArray))
    assert type(got) is StandInArray and "ascontiguousarray" in looked_up
    assert np.array_equal(np.asarray(got).view(np.uint32), expected.view(np.uint32))


def test_a_nested_mixed_model_leaves_the_rounding_to_its_layers():
    """The graph rounds nothing itself: its convolution's kernel gradient is bfloat16, its
    BatchNormalization's gamma gradient keeps float32's bits (Keras computes it in float32)."""
    with config.dtype_policy_scope("mixed_bfloat16"):
        inner = cnnlab.Sequential([layers.Input((6, 6, 3)), layers.Conv2D(4, 3),
                                   layers.BatchNormalization()])
    assert inner.dtype_policy.name == "mixed_bfloat16"
    x = cnnlab.Input((6, 6, 3))
    model = cnnlab.Model(x, layers.Dense(2)(layers.Flatten()(inner(x))))
    model.compile("sgd", "sparse_categorical_crossentropy")
    grads = {}
    model.optimizer.apply = lambda triples, threads: grads.update(
        {id(param): grad for _, param, grad in triples})
    model.train_on_batch(np.random.default_rng(7).random((5, 6, 6, 3), dtype=np.float32),
                         np.arange(5) % 2)
    conv, norm = inner.layers[0], inner.layers[1]
    assert not _low_bits(grads[id(conv.variables[0].value)]).any()
    assert _low_bits(grads[id(norm.variables[0].value)]).any()
