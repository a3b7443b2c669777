"""Graphs against PyTorch in float64: forward, loss and every parameter gradient, for a ResNet
basic block with a projection shortcut and BatchNormalization, a layer called twice, an
Inception-style concatenation of three branches, and a model with two inputs and two outputs.
Also central finite differences through a graph, and BatchNormalization on its own."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from reference import assert_close, finite_difference_grad

import cnnlab
from cnnlab import Input, Model, layers


@pytest.fixture(autouse=True)
def float64():
    cnnlab.config.set_floatx("float64")
    yield


def torch_params(model):
    """Every variable of the cnnlab model as a float64 torch leaf, by name."""
    return {name: torch.tensor(v.value.copy(), requires_grad=v.kind == "param")
            for name, v in model.named_variables()}


def conv(x, p, name, stride=1, padding=0):
    """cnnlab's (KH, KW, C, F) kernel on an NCHW torch tensor."""
    bias = p.get(f"{name}/bias")
    return F.conv2d(x, p[f"{name}/kernel"].permute(3, 2, 0, 1), bias, stride, padding)


def batch_norm(x, p, name, training=True):
    return F.batch_norm(x, p[f"{name}/moving_mean"].clone(), p[f"{name}/moving_variance"].clone(),
                        p[f"{name}/gamma"], p[f"{name}/beta"], training=training,
                        momentum=0.01, eps=1e-3)


def dense(x, p, name):
    return x @ p[f"{name}/kernel"] + p[f"{name}/bias"]


def nchw(x):
    return torch.tensor(x.transpose(0, 3, 1, 2))


def compare(model, torch_loss, x, y):
    """cnnlab's loss and gradients for one batch against ``torch_loss(params) -> (loss, out)``."""
    loss, _, grads = model.loss_and_gradients(x, y)
    params = torch_params(model)
    loss_t, _ = torch_loss(params)
    loss_t.backward()
    assert_close(loss, loss_t.item(), np.float64, "loss")
    trained = [name for name, v in model.named_variables() if v.kind == "param"]
    assert sorted(grads) == sorted(trained)
    for name in trained:
        assert_close(grads[name], params[name].grad.numpy(), np.float64, f"gradient of {name}")
    return params


def resnet_block():
    x = Input((8, 8, 3), name="image")
    h = layers.Conv2D(6, 3, strides=2, padding=1, use_bias=False, name="c1")(x)
    h = layers.ReLU(name="r1")(layers.BatchNormalization(name="bn1")(h))
    h = layers.Conv2D(6, 3, padding="same", use_bias=False, name="c2")(h)
    h = layers.BatchNormalization(name="bn2")(h)
    shortcut = layers.Conv2D(6, 1, strides=2, use_bias=False, name="proj")(x)
    shortcut = layers.BatchNormalization(name="bnp")(shortcut)
    h = layers.ReLU(name="r2")(layers.Add(name="add")([h, shortcut]))
    out = layers.Dense(5, activation="softmax", name="head")(
        layers.GlobalAveragePooling2D(name="gap")(h))
    return Model(x, out, name="resnet_block")


def resnet_block_torch(p, x, training=True):
    h = F.relu(batch_norm(conv(x, p, "c1", 2, 1), p, "bn1", training))
    h = batch_norm(conv(h, p, "c2", 1, 1), p, "bn2", training)
    shortcut = batch_norm(conv(x, p, "proj", 2), p, "bnp", training)
    h = F.relu(h + shortcut)
    return dense(h.mean(dim=(2, 3)), p, "head")                  # logits


def randomise_statistics(model, rng):
    """Non-trivial gamma, beta and moving statistics, so each is really exercised."""
    for name, v in model.named_variables():
        if name.endswith(("gamma", "moving_variance")):
            v.value[...] = rng.uniform(0.5, 1.5, v.value.shape)
        elif name.endswith(("beta", "moving_mean")):
            v.value[...] = rng.normal(0, 0.3, v.value.shape)


def resnet_block_and_batch(seed: int, n: int):
    """The block, compiled, with non-trivial statistics, and a batch of ``n``."""
    model = resnet_block()
    model.compile("sgd", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(seed)
    randomise_statistics(model, rng)
    return model, rng.standard_normal((n, 8, 8, 3)), rng.integers(0, 5, n)


def test_resnet_basic_block_with_projection_and_batch_norm_equals_torch():
    model, x, y = resnet_block_and_batch(0, 6)

    def torch_loss(p):
        logits = resnet_block_torch(p, nchw(x))
        return F.cross_entropy(logits, torch.tensor(y)), logits

    params = compare(model, torch_loss, x, y)
    with torch.no_grad():                                        # inference: moving statistics
        expected = F.softmax(resnet_block_torch(params, nchw(x), training=False), -1)
    assert_close(model.predict(x, verbose=0), expected.numpy(), np.float64, "inference")


def test_a_layer_called_twice_accumulates_its_gradient():
    x = Input((6, 6, 4))
    shared = layers.Conv2D(4, 3, padding="same", activation="relu", name="shared")
    h = layers.MaxPooling2D(name="pool")(shared(shared(x)))
    out = layers.Dense(3, activation="softmax", name="head")(layers.Flatten(name="flat")(h))
    model = Model(x, out)
    assert len(model.layers) == 5 and len(model.nodes) == 5     # one layer, two nodes
    model.compile("sgd", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(1)
    x_data, y = rng.standard_normal((4, 6, 6, 4)), rng.integers(0, 3, 4)

    def torch_loss(p):
        h = F.relu(conv(F.relu(conv(nchw(x_data), p, "shared", 1, 1)), p, "shared", 1, 1))
        h = F.max_pool2d(h, 2).permute(0, 2, 3, 1).flatten(1)
        logits = dense(h, p, "head")
        return F.cross_entropy(logits, torch.tensor(y)), logits

    compare(model, torch_loss, x_data, y)


def test_gradients_add_in_place_only_into_an_array_nothing_else_holds():
    """Backward sums a tensor's gradients in place when its running total is referenced by the
    sum alone; an array a cache, a caller or a view still holds is never written."""
    from cnnlab.graph.execute import _add
    total = {}
    _add(total, "x", np.ones(3))                       # only the dict holds it
    first = id(total["x"])
    _add(total, "x", np.full(3, 2.0))
    assert id(total["x"]) == first and total["x"].tolist() == [3.0, 3.0, 3.0]
    for hold in ("caller", "view"):
        held = np.ones(3)
        total = {"x": held}
        kept = held if hold == "caller" else held[1:]
        if hold == "view":
            del held
        _add(total, "x", np.full(3, 2.0))
        assert kept.tolist() == [1.0] * len(kept), hold
        assert total["x"].tolist() == [3.0, 3.0, 3.0], hold
    total = {"x": np.ones(3, np.float32)}              # a wider sum is a new array
    _add(total, "x", np.ones(3))
    assert total["x"].dtype == np.float64


def test_inception_style_concatenation_of_three_branches_equals_torch():
    x = Input((8, 8, 4))
    b1 = layers.Conv2D(3, 1, activation="relu", name="b1")(x)
    b2 = layers.Conv2D(5, 3, padding="same", activation="relu", name="b2")(
        layers.Conv2D(2, 1, name="b2_reduce")(x))
    b3 = layers.Conv2D(2, 1, name="b3")(
        layers.MaxPooling2D(3, strides=1, padding="same", name="b3_pool")(x))
    joined = layers.Concatenate(name="concat")([b1, b2, b3])
    out = layers.Dense(4, activation="softmax", name="head")(
        layers.GlobalAveragePooling2D(name="gap")(joined))
    model = Model(x, out)
    assert model.get_layer("concat").output.shape == (None, 8, 8, 10)
    model.compile("sgd", "categorical_crossentropy")
    rng = np.random.default_rng(2)
    x_data = rng.standard_normal((5, 8, 8, 4))
    y = cnnlab.utils.to_categorical(rng.integers(0, 4, 5), 4, dtype="float64")

    def torch_loss(p):
        t = nchw(x_data)
        b1 = F.relu(conv(t, p, "b1"))
        b2 = F.relu(conv(conv(t, p, "b2_reduce"), p, "b2", 1, 1))
        b3 = conv(F.max_pool2d(t, 3, 1, padding=1), p, "b3")
        logits = dense(torch.cat([b1, b2, b3], 1).mean(dim=(2, 3)), p, "head")
        return F.cross_entropy(logits, torch.tensor(y)), logits

    compare(model, torch_loss, x_data, y)


def two_in_two_out():
    image, meta = Input((6, 6, 2), name="image"), Input((3,), name="meta")
    features = layers.Flatten(name="flat")(layers.Conv2D(3, 3, activation="tanh", name="c")(image))
    joined = layers.Concatenate(name="join")([features,
                                              layers.Dense(4, activation="relu", name="m")(meta)])
    return Model({"image": image, "meta": meta},
                 {"cls": layers.Dense(3, activation="softmax", name="cls")(joined),
                  "reg": layers.Dense(2, name="reg")(joined)})


def test_two_inputs_two_outputs_with_weighted_losses_equal_torch():
    model = two_in_two_out()
    assert model.input_names == ["image", "meta"] and model.output_names == ["cls", "reg"]
    model.compile("sgd", loss={"cls": "sparse_categorical_crossentropy", "reg": "mse"},
                  loss_weights={"cls": 1.0, "reg": 0.5}, metrics=["accuracy"])
    rng = np.random.default_rng(3)
    x = {"image": rng.standard_normal((7, 6, 6, 2)), "meta": rng.standard_normal((7, 3))}
    y = {"cls": rng.integers(0, 3, 7), "reg": rng.standard_normal((7, 2))}

    def torch_loss(p):
        h = torch.tanh(conv(nchw(x["image"]), p, "c")).permute(0, 2, 3, 1).flatten(1)
        joined = torch.cat([h, F.relu(dense(torch.tensor(x["meta"]), p, "m"))], 1)
        logits, reg = dense(joined, p, "cls"), dense(joined, p, "reg")
        loss = F.cross_entropy(logits, torch.tensor(y["cls"])) + 0.5 * F.mse_loss(
            reg, torch.tensor(y["reg"]))
        return loss, (logits, reg)

    compare(model, torch_loss, x, y)
    probs, reg = model.predict(x, verbose=0)
    assert probs.shape == (7, 3) and reg.shape == (7, 2)
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert {"loss", "cls_loss", "reg_loss", "cls_accuracy"} <= set(history.history)
    results = model.evaluate([x["image"], x["meta"]], [y["cls"], y["reg"]], return_dict=True,
                             verbose=0)
    assert results["loss"] == pytest.approx(results["cls_loss"] + 0.5 * results["reg_loss"])


def test_graph_gradients_match_finite_differences():
    """Training mode: batch statistics, so every sample's change moves every output."""
    model, x, y = resnet_block_and_batch(4, 4)
    _, _, grads = model.loss_and_gradients(x, y)
    for name, variable in model.named_variables():
        if variable.kind != "param":
            continue
        picks, numeric = finite_difference_grad(lambda: model.loss_and_gradients(x, y)[0],
                                                variable.value, max_entries=8)
        np.testing.assert_allclose(grads[name].reshape(-1)[picks], numeric, rtol=1e-5,
                                   atol=1e-8, err_msg=name)


# --- BatchNormalization on its own ----------------------------------------------------------------
@pytest.mark.parametrize("training,loc", [(True, 2.0), (True, 50.0), (False, 2.0)])
def test_batch_norm_equals_torch_batchnorm2d(training, loc):
    """loc 2 (std 3): the statistics in one pass; loc 50: the mean dwarfs the spread, and the
    variance is taken around the mean in a second pass."""
    rng = np.random.default_rng(5)
    bn = layers.BatchNormalization(momentum=0.9, epsilon=1e-4)
    x = rng.normal(loc, 3.0, (4, 5, 6, 3))
    bn.build(x.shape[1:])
    gamma, beta = rng.uniform(0.5, 2, 3), rng.normal(0, 1, 3)
    mean, var = rng.normal(0, 1, 3), rng.uniform(0.5, 2, 3)
    bn.set_weights([gamma, beta, mean, var])
    inputs = Input(x.shape[1:])
    model = Model(inputs, bn(inputs))
    model.compile("sgd", "mse")
    target = rng.standard_normal(x.shape)
    torch_bn = torch.nn.BatchNorm2d(3, eps=1e-4, momentum=0.1).double()
    with torch.no_grad():
        torch_bn.weight.copy_(torch.tensor(gamma))
        torch_bn.bias.copy_(torch.tensor(beta))
        torch_bn.running_mean.copy_(torch.tensor(mean))
        torch_bn.running_var.copy_(torch.tensor(var))
    torch_bn.train(training)
    x_t = nchw(x).requires_grad_(True)
    out_t = torch_bn(x_t)
    loss_t = F.mse_loss(out_t.permute(0, 2, 3, 1), torch.tensor(target))
    loss_t.backward()
    loss, out, grads = model.loss_and_gradients(x, target, training=training)
    assert_close(out, out_t.detach().numpy().transpose(0, 2, 3, 1), np.float64, "output")
    assert_close(loss, loss_t.item(), np.float64, "loss")
    assert_close(grads[f"{bn.name}/gamma"], torch_bn.weight.grad.numpy(), np.float64, "gamma")
    assert_close(grads[f"{bn.name}/beta"], torch_bn.bias.grad.numpy(), np.float64, "beta")
    _, tape = model.run(x, training=training, keep_cache=True)
    input_grad = model.backward_from(tape, [2 * (out - target) / out.size], want_inputs=True)
    assert_close(input_grad.inputs[0], x_t.grad.numpy().transpose(0, 2, 3, 1), np.float64,
                 "input gradient")


@pytest.mark.parametrize("loc", [0.5, 3.0, 1000.0])
def test_batch_norm_statistics_in_float32_are_as_exact_as_the_two_pass_formula(loc):
    """One pass where mean^2 <= 15 var (loc 0.5, 3), two passes beyond (loc 1000): either way
    the float32 variance and output are within float32's rounding of the float64 truth."""
    from cnnlab.engine import normalization as ops
    x64 = np.random.default_rng(1).normal(loc, 1.0, (20000, 4))
    x32 = x64.astype(np.float32)
    ones, zeros = np.ones(4, np.float32), np.zeros(4, np.float32)
    y, (mean, var), cache = ops.batch_norm_train_forward(x32, ones, zeros, 1e-5)
    assert (cache[1] is None) == (loc < 4)                           # which formula ran
    exact = x32.astype(np.float64)
    np.testing.assert_allclose(var, exact.var(axis=0), rtol=1e-6)
    assert var.dtype == np.float32
    expected = (exact - exact.mean(axis=0)) / np.sqrt(exact.var(axis=0) + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-4)


def test_moving_statistics_follow_keras_rule():
    """moving = momentum * moving + (1 - momentum) * batch, with the biased batch variance."""
    rng = np.random.default_rng(6)
    inputs = Input((3, 3, 2))
    bn = layers.BatchNormalization(momentum=0.8)
    model = Model(inputs, layers.Dense(1)(layers.Flatten()(bn(inputs))))
    model.compile(cnnlab.optimizers.SGD(0.01), "mse")
    mean, var = np.zeros(2), np.ones(2)
    for _ in range(4):
        x = rng.normal(1.0, 2.0, (8, 3, 3, 2))
        model.train_on_batch(x, rng.standard_normal((8, 1)))
        mean = 0.8 * mean + 0.2 * x.mean(axis=(0, 1, 2))
        var = 0.8 * var + 0.2 * x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(bn.variable("moving_mean"), mean, rtol=1e-12)
    np.testing.assert_allclose(bn.variable("moving_variance"), var, rtol=1e-12)
    assert [w.shape for w in bn.get_weights()] == [(2,)] * 4       # gamma, beta, mean, variance
    assert bn.weight_names == ["gamma", "beta", "moving_mean", "moving_variance"]


def test_frozen_batch_norm_runs_in_inference_mode():
    """Keras' rule since TF2 (keras #9522): trainable=False keeps the moving statistics, in
    training too, and uses them to normalise."""
    rng = np.random.default_rng(7)
    inputs = Input((4, 4, 2))
    bn = layers.BatchNormalization(trainable=False)
    model = Model(inputs, bn(inputs))
    model.compile("sgd", "mse")
    x = rng.normal(3.0, 2.0, (8, 4, 4, 2))
    before = [w.copy() for w in bn.get_weights()]
    model.train_on_batch(x, rng.standard_normal(x.shape))
    for a, b in zip(before, bn.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(model(x, training=True), (x - 0) / np.sqrt(1 + 1e-3))


def test_summary_counts_moving_statistics_as_non_trainable_and_shows_connections():
    model = resnet_block()
    lines = []
    model.summary(print_fn=lines.append)
    text = lines[0]
    assert "Connected to" in text and "bn2[0][0], bnp[0][0]" in text
    states = sum(v.value.size for v in model.variables if v.kind == "state")
    assert f"Non-trainable params: {states:,}" in text and states == 36


@pytest.mark.parametrize("algorithm", ["auto", "winograd"])
def test_a_tape_keeps_its_gradients_when_the_model_runs_again_before_its_backward(
        algorithm, monkeypatch):
    """Buffers are kept per call site and reused by its next call (im2col's columns; in
    training, Winograd's outputs and transformed tiles once nothing refers to them); a tape
    whose backward comes after a second forward pass must still give its own gradients, not
    ones mixed with the second input's. Every convolution path: im2col (the strided layer),
    Winograd (3x3; forced too, since the cost model may pick im2col at this size), the
    frequency domain (5x5), one GEMM (1x1); and max pooling, whose backward recycles its input
    gradient."""
    from cnnlab.engine import conv
    monkeypatch.setattr(conv, "ALGORITHM", algorithm)
    x = Input((12, 12, 3))
    h = layers.Conv2D(4, 3, strides=2, padding="same")(x)
    h = layers.Conv2D(4, 3, padding="same")(h)
    h = layers.MaxPooling2D(2, strides=1)(h)
    h = layers.Conv2D(4, 5, padding="same")(h)
    h = layers.Conv2D(4, 1)(h)
    model = Model(x, layers.Dense(2)(layers.Flatten()(h)))
    rng = np.random.default_rng(0)
    first, second = rng.standard_normal((2, 2, 12, 12, 3)).astype(np.float32)
    grad = [np.ones((2, 2), np.float32)]
    _, tape = model.run(first, keep_cache=True)
    alone = model.backward_from(tape, grad).params
    _, tape = model.run(first, keep_cache=True)
    model.run(second, keep_cache=True)
    after = model.backward_from(tape, grad).params
    assert set(after) == set(alone)
    for variable, value in alone.items():
        np.testing.assert_array_equal(after[variable], value, err_msg=variable.name)


def _every_output_site() -> Model:
    """A model with every op that takes its output from ``CallContext.free_list``:
    im2col, a depthwise convolution, BatchNormalization + ReLU, Winograd, Add + ReLU, max
    pooling and a 1x1 convolution."""
    x = Input((12, 12, 4))
    h = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)     # im2col
    h = layers.DepthwiseConv2D(3, padding="same")(h)
    h = layers.Activation("relu")(layers.BatchNormalization()(h))
    h = layers.ReLU()(layers.Add()([h, layers.Conv2D(8, 3, padding="same")(h)]))  # Winograd
    h = layers.MaxPooling2D(2, strides=1, padding="same")(h)
    return Model(x, layers.Conv2D(3, 1)(h))                                     # one GEMM


@pytest.mark.parametrize("training", [False, True])
def test_forward_passes_take_outputs_from_the_threads_free_list_and_never_write_held_ones(
        training, monkeypatch):
    """In training and at inference every op that can takes its output (and Winograd its
    products, and its transformed tiles where it does not keep them) from this thread's free
    list (``CallContext.free_list``): a second run allocates nothing new, an output
    the caller still holds is never written, every value equals that of a run without the
    free list, and a run at another batch size leaves nothing behind two runs later."""
    from cnnlab.engine import compiled, conv
    from cnnlab.layers.context import CallContext
    monkeypatch.setattr(conv, "ALGORITHM", "winograd")    # where it applies: the 3x3, stride 1
    model = _every_output_site()
    rng = np.random.default_rng(2)
    first, second = rng.standard_normal((2, 3, 12, 12, 4)).astype(np.float32)
    free = model.workspaces.free_list

    def held():
        return {id(array) for kept in free._kept.values() for array in kept}

    def run(batch):
        return model.run(batch, training=training, keep_cache=training)[0][0]

    def without_free_list(batch):
        with monkeypatch.context() as patch:
            patch.setattr(CallContext, "free_list", property(lambda self: None))
            return run(batch)

    expected = [without_free_list(batch) for batch in (first, second)]
    out = run(first)
    taken = held()
    # as many arrays as were live at once, those of outputs dead before the pass's end serving
    # later ones: compiled, 7 at inference (the width-padded copy of the 4-channel input that
    # the implicit GEMM reads among them; one-pass Winograd holds its blocks of V and M
    # itself), 9 in training (that copy, max pool's winners and BatchNormalization's rows
    # among them; Winograd copies V into its site's workspace); the NumPy reference takes
    # them for im2col, Winograd's output, the join and the 1x1 only
    compiled_on = compiled.module("winograd_kernels") is not None
    assert len(taken) == ((9 if training else 7) if compiled_on else 4)
    assert id(out) in taken
    np.testing.assert_array_equal(out, expected[0])
    again = run(second)                             # the caller holds `out`: not written
    np.testing.assert_array_equal(out, expected[0])
    np.testing.assert_array_equal(again, expected[1])
    assert id(again) != id(out) and held() == taken | {id(again)}
    out_id, again_id = id(out), id(again)
    del out, again
    run(first)                   # nothing new; `out`'s array, untaken a pass, is forgotten
    assert held() == taken - {out_id} | {again_id}
    run(first[:2])
    run(first)
    run(first)                                      # two passes without the batch of 2
    assert all(shape[0] != 2 for shape, _ in free._kept)
    if training:             # the stride-1 input gradients come from the free list as well
        pooled = model.layers[-1]._inbound_nodes[0].inbound[0]     # the 1x1 convolution's input

        def step():
            outs, tape = model.run(first, training=True, keep_cache=True)
            return model.backward_from(tape, [np.ones_like(outs[0])], wanted=[pooled])

        step()
        before = held()
        grads = step()                              # nothing new the second time
        assert held() == before
        assert id(grads.tensors[id(pooled)]) in held()      # the 1x1's input gradient
        with monkeypatch.context() as patch:
            patch.setattr(CallContext, "free_list", property(lambda self: None))
            plain = step()
        for variable, grad in plain.params.items():
            np.testing.assert_array_equal(grads.params[variable], grad, err_msg=variable.name)


def test_batch_normalization_writes_its_input_gradient_into_an_upstream_one_nothing_else_holds(
        monkeypatch):
    """A backward pass lets BatchNormalization write dx into the array of its output's gradient
    where nothing else holds that array (``execute._owned``): here the gradient a convolution's
    backward made. Not where a join handed the same array to its other input too. In training
    and in inference mode (attribution); the gradients are bit for bit those of the path that
    writes a new array."""
    from cnnlab.engine import compiled, normalization
    from cnnlab.graph import execute
    if compiled.module("normalization_kernels") is None:
        pytest.skip("the compiled kernels are off: the reference writes a new array")
    x = Input((8, 8, 3))
    h = layers.Conv2D(4, 3, padding="same")(x)
    owned = layers.Activation("relu")(layers.BatchNormalization(name="owned")(h))
    h = layers.Conv2D(4, 3, padding="same")(owned)                # its input gradient: fresh
    shared = layers.BatchNormalization(name="shared")(h)
    h = layers.Add()([shared, owned])                             # one array to both inputs
    model = Model(x, layers.Dense(2)(layers.GlobalAveragePooling2D()(h)))
    batch = np.random.default_rng(2).standard_normal((4, 8, 8, 3)).astype(np.float32)
    grad = [np.ones((4, 2), np.float32)]

    def gradients(training):
        _, tape = model.run(batch, training=training, keep_cache=True)
        return model.backward_from(tape, grad).params

    def spied(backward, into):                 # records (into_grad, dx is the upstream array)
        def spy(*args, into_grad=False):
            dx, dgamma, dbeta = backward(*args, into_grad=into_grad)
            calls.append((into_grad, dx is into(args)))
            return dx, dgamma, dbeta
        return spy

    calls = []
    monkeypatch.setattr(normalization, "_compiled_backward",            # training: compiled
                        spied(normalization._compiled_backward, lambda args: args[1]))
    monkeypatch.setattr(normalization, "batch_norm_infer_backward",     # attribution
                        spied(normalization.batch_norm_infer_backward, lambda args: args[0]))
    written_in = [gradients(training) for training in (True, False)]
    assert calls == [(False, False), (True, True)] * 2             # "shared" first, then "owned"
    monkeypatch.setattr(execute, "_owned", lambda outs: False)
    for training, expected in zip((True, False), written_in):
        for variable, value in gradients(training).items():
            np.testing.assert_array_equal(expected[variable], value, err_msg=variable.name)
