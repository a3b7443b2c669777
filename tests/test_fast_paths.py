"""Every fast path against the plain reference path it replaced (STYLE principle 13)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import assert_close

import cnnlab
from cnnlab.engine import compiled, conv, windows
from cnnlab.engine.pool import max_pool2d_backward, max_pool2d_forward, max_pool2d_forward_reference
from cnnlab.engine.shapes import resolve_padding


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 5), s=st.integers(1, 3), d=st.integers(1, 2),
       padding=st.sampled_from(["valid", "same", 1]), c=st.integers(1, 9),
       seed=st.integers(0, 2**31))
def test_fast_backward_equals_col2im_backward(k, s, d, padding, c, seed):
    """Stride 1: the input gradient as one full correlation (grad_out cropped where the padding
    exceeds the kernel's reach); otherwise one product per tap. Both against grad_cols +
    col2im."""
    rng = np.random.default_rng(seed)
    size = d * (k - 1) + 1 + int(rng.integers(0, 6))
    x = rng.standard_normal((2, size, size + 1, c))
    kernel = rng.standard_normal((k, k, c, 3))
    pads = resolve_padding(padding, x.shape[1:3], (k, k), (s, s), (d, d))
    out, cache = conv.conv2d_forward(x, kernel, rng.standard_normal(3), (s, s), pads, (d, d),
                                     algorithm="direct")
    grad_out = rng.standard_normal(out.shape)
    fast = conv.conv2d_backward(grad_out, cache)
    plain = conv.conv2d_backward_reference(grad_out, cache)
    for a, b, name in zip(fast, plain, ("grad_x", "grad_kernel", "grad_bias")):
        assert_close(a, b, np.float64, name)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_chunked_convolution_equals_one_shot(monkeypatch, dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, 11, 10, 3)).astype(dtype)
    kernel = rng.standard_normal((3, 3, 3, 4)).astype(dtype)
    bias = rng.standard_normal(4).astype(dtype)
    pads = ((1, 1), (1, 1))
    out, cache = conv.conv2d_forward(x, kernel, bias, (1, 2), pads)
    grad_out = rng.standard_normal(out.shape).astype(dtype)
    grads = conv.conv2d_backward(grad_out, cache)
    # a budget of ~2 images' cols forces 4 chunks, and a backward pass that rebuilds cols
    monkeypatch.setattr(windows, "COLS_BUDGET_BYTES", 2 * 11 * 5 * 27 * x.itemsize)
    assert len(windows.batch_chunks(7, 11 * 5 * 27 * x.itemsize)) == 4
    out_c, cache_c = conv.conv2d_forward(x, kernel, bias, (1, 2), pads)
    assert cache_c[0] is None and cache_c[1] is x          # keeps x, not cols
    grads_c = conv.conv2d_backward(grad_out, cache_c)
    assert_close(out_c, out, dtype, "out")
    for a, b in zip(grads_c, grads):
        assert_close(a, b, dtype, "grad")


def test_winograd_in_cache_sized_chunks_equals_one_shot_and_im2col(monkeypatch):
    """The batch cut into chunks (compiled transforms: ``WINOGRAD_CACHE_BYTES``; the reference:
    the memory budget), each chunk's V kept or, past the memory budget, redone in the backward
    pass: forward and backward equal the whole batch at once and the im2col reference in
    float64."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((9, 13, 12, 5))
    kernel, bias = rng.standard_normal((3, 3, 5, 6)), rng.standard_normal(6)
    pads = ((1, 1), (1, 1))
    out_d, cache_d = conv.conv2d_forward(x, kernel, bias, (1, 1), pads, algorithm="direct")
    grad_out = rng.standard_normal(out_d.shape)
    direct = conv.conv2d_backward(grad_out, cache_d)
    results = []
    small = 3 * 36 * 4 * 3 * 11 * 8                     # about 3 images' V and M in F(4x4)
    for chunk_budget, memory_budget in ((2**40, 2**40), (small, 2**40), (small, small)):
        monkeypatch.setattr(conv, "WINOGRAD_CACHE_BYTES", chunk_budget)
        monkeypatch.setattr(windows, "COLS_BUDGET_BYTES", memory_budget)
        out, cache = conv.conv2d_forward(x, kernel, bias, (1, 1), pads, algorithm="winograd")
        results.append((out, conv.conv2d_backward(grad_out, cache)))
        cache_sized = compiled.module("winograd_kernels") is not None and chunk_budget == small
        assert (len(cache.pieces) > 1) == (cache_sized or memory_budget == small)
        assert (cache.tiles is None) == (memory_budget == small)      # V redone from x
    out_1, grads_1 = results[0]
    for out, grads in results[1:]:
        np.testing.assert_allclose(out, out_1, rtol=1e-12, atol=1e-12)
        for a, b in zip(grads, grads_1):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert_close(out_1, out_d, np.float64, "out")
    for a, c, name in zip(grads_1, direct, ("grad_x", "grad_kernel", "grad_bias")):
        assert_close(a, c, np.float64, name)


def test_winograd_kernel_gradient_over_runs_of_pieces_equals_im2col(monkeypatch):
    """Where grad_U is past the cache budget, the kernel gradient is taken over runs of whole-
    image pieces (their V joined), each run within a quarter of the memory budget: the runs
    are the ones intended, and forward and backward equal im2col in float64."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((9, 4, 4, 8))                # one 4x4 tile an image in F(4x4)
    kernel, bias = rng.standard_normal((3, 3, 8, 8)), rng.standard_normal(8)
    pads = ((1, 1), (1, 1))
    direct, cache_d = conv.conv2d_forward(x, kernel, bias, (1, 1), pads, algorithm="direct")
    grad_out = rng.standard_normal(direct.shape)
    # an image's V and M: 36 * 16 * 8 = 4.6 kB; grad_U: 36 * 64 * 8 = 18 kB
    monkeypatch.setattr(conv, "WINOGRAD_CACHE_BYTES", 10_000)     # 2 images a piece
    monkeypatch.setattr(windows, "COLS_BUDGET_BYTES", 100_000)    # runs of 25 kB: 2-3 pieces
    out, cache = conv.conv2d_forward(x, kernel, bias, (1, 1), pads, algorithm="winograd")
    if compiled.module("winograd_kernels") is not None:
        assert [p.images for p in cache.pieces] == [slice(0, 2), slice(2, 4), slice(4, 6),
                                                    slice(6, 8), slice(8, 9)]
        assert conv._kernel_grad_runs(cache, 8) == [range(0, 2), range(2, 5)]   # 18, 23 kB
        assert conv._kernel_grad_runs(cache._replace(kernel=kernel[..., :2, :]), 8) == [
            range(k, k + 1) for k in range(5)]                    # grad_U fits: one each
    assert_close(out, direct, np.float64, "out")
    for a, b, name in zip(conv.conv2d_backward(grad_out, cache),
                          conv.conv2d_backward(grad_out, cache_d),
                          ("grad_x", "grad_kernel", "grad_bias")):
        assert_close(a, b, np.float64, name)


@pytest.mark.parametrize("pads", [((1, 1), (1, 1)), ((0, 0), (0, 0)), ((2, 0), (0, 2)),
                                  ((5, 3), (1, 1))])
def test_winograd_in_bands_of_rows_equals_im2col(monkeypatch, pads):
    """Images past the cache budget, done in bands of output rows (each reading its 2 rows of
    halo; the padding only at the image's edges), at inference and in training, each band's V
    kept or, past the memory budget, redone: forward and backward equal to im2col in float64,
    whatever the padding, for each image of a batch."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 37, 23, 5))
    kernel, bias = rng.standard_normal((3, 3, 5, 6)), rng.standard_normal(6)
    direct, cache_d = conv.conv2d_forward(x, kernel, bias, (1, 1), pads, algorithm="direct")
    grad_out = rng.standard_normal(direct.shape)
    grads_d = conv.conv2d_backward(grad_out, cache_d)
    monkeypatch.setattr(conv, "WINOGRAD_CACHE_BYTES", 36 * 6 * 11 * 8 * 2)   # 2 tile rows
    banded, _ = conv.conv2d_forward(x, kernel, bias, (1, 1), pads, algorithm="winograd",
                                    gradients="none")
    assert_close(banded, direct, np.float64, "out")
    for memory in (2**40, 1000):                     # V kept; V redone in the backward pass
        monkeypatch.setattr(windows, "COLS_BUDGET_BYTES", memory)
        out, cache = conv.conv2d_forward(x, kernel, bias, (1, 1), pads, algorithm="winograd")
        if compiled.module("winograd_kernels") is not None:
            assert {p.rows.stop - p.rows.start for p in cache.pieces} >= {8}   # 2 tile rows
            assert (cache.tiles is None) == (memory == 1000)
        assert_close(out, direct, np.float64, "out")
        for a, b, name in zip(conv.conv2d_backward(grad_out, cache), grads_d,
                              ("grad_x", "grad_kernel", "grad_bias")):
            assert_close(a, b, np.float64, name)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), h=st.integers(3, 21), w=st.integers(3, 21), c=st.integers(1, 7),
       f=st.integers(1, 7), top=st.integers(0, 3), bottom=st.integers(0, 3),
       left=st.integers(0, 2), budget=st.integers(1, 40_000), keep=st.booleans(),
       seed=st.integers(0, 2**31))
def test_winograd_in_any_pieces_equals_im2col(n, h, w, c, f, top, bottom, left, budget, keep,
                                              seed):
    """Whatever the shape, padding and cache budget (from bands of one tile row to whole
    batches), V kept or redone: forward and backward equal im2col in float64."""
    from hypothesis import assume
    assume(h + top + bottom >= 3 and w + 2 * left >= 3)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c))
    kernel, bias = rng.standard_normal((3, 3, c, f)), rng.standard_normal(f)
    pads = ((top, bottom), (left, left))
    direct, cache_d = conv.conv2d_forward(x, kernel, bias, (1, 1), pads, algorithm="direct")
    grad_out = rng.standard_normal(direct.shape)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(conv, "WINOGRAD_CACHE_BYTES", budget)
        patch.setattr(windows, "COLS_BUDGET_BYTES", 2**40 if keep else budget)
        out, cache = conv.conv2d_forward(x, kernel, bias, (1, 1), pads, algorithm="winograd")
        grads = conv.conv2d_backward(grad_out, cache)
    assert_close(out, direct, np.float64, "out")
    for a, b, name in zip(grads, conv.conv2d_backward(grad_out, cache_d),
                          ("grad_x", "grad_kernel", "grad_bias")):
        assert_close(a, b, np.float64, name)


@pytest.mark.parametrize("algorithm", ["winograd", "direct", "fourier"])
def test_a_relu_inside_the_convolution_at_inference_equals_the_relu_after_it(
        monkeypatch, algorithm):
    """``Conv2D(activation='relu')`` predicting: the ReLU in the convolution's own pass (compiled
    Winograd's output transform; in place on the other paths) against the convolution's output
    then ``max(0, .)``, in float64; in training the ReLU stays apart, for its gradient."""
    from cnnlab import layers
    from cnnlab.layers.context import CallContext
    monkeypatch.setattr(conv, "ALGORITHM", algorithm)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 11, 9, 3))
    layer = layers.Conv2D(7, 3, padding="same", activation="relu", dtype="float64")
    layer(x)
    layer.set_weights([rng.standard_normal((3, 3, 3, 7)), rng.standard_normal(7)])
    assert layer.fuses("relu", CallContext()) and not layer.fuses("relu", CallContext(True))
    assert not layers.SeparableConv2D(4, 3, activation="relu").fuses("relu", CallContext())
    plain, _ = conv.conv2d_forward(x, *layer.get_weights(), (1, 1), ((1, 1), (1, 1)),
                                   algorithm="direct")
    fused, cache = layer.forward(x, CallContext())
    assert cache[1] is None                                # no ReLU left to run after it
    assert_close(fused, np.maximum(plain, 0), np.float64, "relu(conv)")
    assert (fused == 0).any() and (fused > 0).any()
    trained, cache = layer.forward(x, CallContext(training=True))
    assert cache[1] == "relu"
    np.testing.assert_allclose(trained, fused, rtol=1e-12, atol=1e-12)


def _activations_run_inside(monkeypatch, layer_class) -> list:
    """The activation each call of ``layer_class.call`` is asked to run inside its op, in call
    order (the list fills as the model runs)."""
    asked = []
    call = layer_class.call
    monkeypatch.setattr(layer_class, "call", lambda self, x, ctx, activation="linear": (
        asked.append(activation), call(self, x, ctx, activation))[1])
    return asked


def test_a_relu_after_a_folded_batch_norm_runs_inside_the_convolution(monkeypatch):
    """Conv2D -> BatchNormalization -> ReLU predicting: the BN folds into the convolution and
    the ReLU moves on into it (``graph.fusion``); the output equals the three layers one after
    the other, in float64."""
    from cnnlab import layers
    from cnnlab.layers.conv import Conv2D
    asked = _activations_run_inside(monkeypatch, Conv2D)
    rng = np.random.default_rng(8)
    cnnlab.config.set_floatx("float64")
    model = cnnlab.Sequential([layers.Input((9, 10, 3)), layers.Conv2D(5, 3, padding="same"),
                               layers.BatchNormalization(), layers.ReLU()])
    bn = model.layers[1]
    bn.set_weights([rng.uniform(0.5, 2, 5), rng.standard_normal(5), rng.standard_normal(5),
                    rng.uniform(0.5, 2, 5)])
    x = rng.standard_normal((4, 9, 10, 3))
    fused = model.predict(x, verbose=0)
    assert asked == ["relu"]
    kernel, bias = model.layers[0].get_weights()
    gamma, beta, mean, variance = bn.get_weights()
    conv_out, _ = conv.conv2d_forward(x, kernel, bias, (1, 1), ((1, 1), (1, 1)),
                                      algorithm="direct")
    expected = np.maximum((conv_out - mean) / np.sqrt(variance + bn.epsilon) * gamma + beta, 0)
    assert_close(fused, expected, np.float64, "relu(bn(conv))")
    assert (fused == 0).any() and (fused > 0).any()


@pytest.mark.parametrize("strides", [1, 2])
def test_a_relu_after_a_folded_batch_norm_runs_inside_the_depthwise_convolution(monkeypatch,
                                                                                 strides):
    """MobileNet's DepthwiseConv2D -> BatchNormalization -> ReLU predicting: the BN folds into
    the depthwise kernel and the ReLU runs in its loops (the row loops at stride 1, the pixel
    loops at 2); the output equals the three layers' formulas one after the other, written
    out here tap by tap, in float64. In training the ReLU stays apart, for its gradient."""
    from cnnlab import layers
    from cnnlab.layers.context import CallContext
    from cnnlab.layers.conv import DepthwiseConv2D
    asked = _activations_run_inside(monkeypatch, DepthwiseConv2D)
    rng = np.random.default_rng(9)
    cnnlab.config.set_floatx("float64")
    model = cnnlab.Sequential([layers.Input((9, 11, 6)),
                               layers.DepthwiseConv2D(3, strides, padding="same"),
                               layers.BatchNormalization(), layers.ReLU()])
    bn = model.layers[1]
    bn.set_weights([rng.uniform(0.5, 2, 6), rng.standard_normal(6), rng.standard_normal(6),
                    rng.uniform(0.5, 2, 6)])
    x = rng.standard_normal((4, 9, 11, 6))              # "same" pads 1 on every side
    fused = model.predict(x, verbose=0)
    assert asked == ["relu"]
    kernel, bias = model.layers[0].get_weights()                    # (3, 3, 6, 1), (6,)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ho, wo = fused.shape[1:3]
    depthwise = bias + sum(padded[:, i:i + strides * ho:strides, j:j + strides * wo:strides]
                           * kernel[i, j, :, 0] for i in range(3) for j in range(3))
    gamma, beta, mean, variance = bn.get_weights()
    expected = np.maximum((depthwise - mean) / np.sqrt(variance + bn.epsilon) * gamma + beta, 0)
    assert_close(fused, expected, np.float64, "relu(bn(depthwise))")
    assert (fused == 0).any() and (fused > 0).any()
    layer = model.layers[0]
    assert layer.fuses("relu", CallContext()) and not layer.fuses("relu", CallContext(True))


@settings(max_examples=60, deadline=None)
@given(p=st.integers(1, 4), s=st.integers(1, 3), padding=st.sampled_from(["valid", "same"]),
       ties=st.booleans(), seed=st.integers(0, 2**31))
def test_tap_loop_max_pool_equals_argmax_reference(p, s, padding, ties, seed):
    rng = np.random.default_rng(seed)
    shape = (2, p + int(rng.integers(0, 7)), p + int(rng.integers(0, 7)), 3)
    x = rng.integers(0, 2, shape).astype(np.float32) if ties else rng.standard_normal(shape)
    pads = resolve_padding(padding, shape[1:3], (p, p), (s, s))
    out, cache = max_pool2d_forward(x, (p, p), (s, s), pads)
    out_ref, cache_ref = max_pool2d_forward_reference(x, (p, p), (s, s), pads)
    np.testing.assert_array_equal(out, out_ref)
    np.testing.assert_array_equal(cache[0], cache_ref[0])     # same winning cell, ties included
    grad_out = rng.standard_normal(out.shape).astype(x.dtype)
    np.testing.assert_array_equal(max_pool2d_backward(grad_out, cache),
                                  max_pool2d_backward(grad_out, cache_ref))
    inference, _ = max_pool2d_forward(x, (p, p), (s, s), pads, keep_cache=False)
    np.testing.assert_array_equal(inference, out)


def test_relu_pool_fusion_equals_layer_by_layer(monkeypatch):
    import cnnlab
    from cnnlab import layers
    from cnnlab.graph import fusion
    cnnlab.config.set_floatx("float64")
    model = cnnlab.Sequential([
        layers.Input((9, 9, 2)), layers.Conv2D(3, 2, activation="relu"), layers.MaxPooling2D(),
        layers.ReLU(), layers.MaxPooling2D(2, strides=1, padding="same"), layers.Flatten(),
        layers.Dense(4, activation="softmax")])
    moved, as_logits = fusion.plan(model, logits_outputs=[0])
    assert {node.layer.name: activation for node, activation in moved.items()} == {
        model.layers[0].name: "linear", model.layers[1].name: "relu",
        model.layers[2].name: "linear", model.layers[3].name: "relu",
        model.layers[-1].name: "linear"}
    assert as_logits == {0}
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 9, 9, 2))
    y = cnnlab.utils.to_categorical(rng.integers(0, 4, 5), 4, dtype="float64")

    fused = model.loss_and_gradients(x, y)
    assert np.array_equal(model.predict(x, verbose=0), model.forward_all(x)[-1])  # viz: unfused
    monkeypatch.setattr(fusion, "MaxPooling2D", type("NoPool", (), {}))   # ReLU-pool rule off
    assert len(fusion.plan(model, [0])[0]) == 1                          # softmax-CE only
    plain = model.loss_and_gradients(x, y)
    assert fused[0] == plain[0]
    np.testing.assert_array_equal(fused[1], plain[1])
    for name in plain[2]:
        np.testing.assert_array_equal(fused[2][name], plain[2][name])


def test_a_changed_activation_takes_effect_at_the_next_predict():
    """Regression: the fusion plan was cached, so after a predict, switching a conv's activation
    from relu to linear left predict applying ReLU (it disagreed with forward_all by 1.65)."""
    import cnnlab
    from cnnlab import layers
    model = cnnlab.Sequential([layers.Input((6, 6, 1)), layers.Conv2D(2, 3, activation="relu"),
                               layers.MaxPooling2D(), layers.Flatten(), layers.Dense(3)])
    x = np.random.default_rng(0).standard_normal((16, 6, 6, 1)).astype(np.float32)
    model.predict(x, verbose=0)
    model.layers[0].activation = "linear"
    after = model.predict(x, verbose=0)
    np.testing.assert_allclose(after, model.forward_all(x)[-1], rtol=1e-6)
    conv, dense = model.layers[0], model.layers[-1]
    pooled = layers.MaxPooling2D()(conv(x))
    expected = pooled.reshape(16, -1) @ dense.weights[0] + dense.weights[1]
    np.testing.assert_allclose(after, expected, rtol=1e-5, atol=1e-6)


# --- convolution in the frequency domain (engine/fourier.py) against im2col --------------------
@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_frequency_domain_equals_im2col_on_the_article_layer(dtype, tolerance):
    """conv2 of the article's network (12x12x32 -> 8x8x64, 5x5) at a training batch size."""
    rng = np.random.default_rng(3)
    x = np.maximum(rng.standard_normal((64, 12, 12, 32)), 0).astype(dtype)   # after a ReLU
    kernel = (rng.standard_normal((5, 5, 32, 64)) * 0.05).astype(dtype)
    bias = rng.standard_normal(64).astype(dtype)
    direct_out, direct_cache = conv.conv2d_forward(x, kernel, bias, algorithm="direct")
    out, cache = conv.conv2d_forward(x, kernel, bias, algorithm="fourier")
    assert isinstance(cache, conv.fourier.SpectralCache)
    assert out.dtype == dtype
    grad_out = rng.standard_normal(out.shape).astype(dtype)
    # the reference's gradients by im2col's own backward (col2im): direct's fast backward takes
    # the input gradient as a convolution, by one-pass Winograd at this size
    for ours, reference in zip((out, *conv.conv2d_backward(grad_out, cache)), (
            direct_out, *conv.conv2d_backward_reference(grad_out, direct_cache))):
        assert np.abs(ours - reference).max() <= tolerance * np.abs(reference).max()


def test_frequency_domain_gives_exact_outputs_where_the_window_saw_only_zeros():
    """Direct convolution gives exactly the bias there; so must this path, or a following ReLU
    (at its kink, 0) and max pool (ties) would decide differently than im2col and PyTorch."""
    rng = np.random.default_rng(4)
    x = np.zeros((2, 12, 12, 8))
    x[0, 6:, 6:] = rng.standard_normal((6, 6, 8))                            # ink in one corner
    kernel, bias = rng.standard_normal((5, 5, 8, 4)), np.array([0.0, 0.5, -1.0, 0.0])
    out, _ = conv.conv2d_forward(x, kernel, bias, algorithm="fourier")
    direct, _ = conv.conv2d_forward(x, kernel, bias, algorithm="direct")
    blank = np.ones((2, 8, 8), dtype=bool)
    blank[0, 2:, 2:] = False                                                 # windows reaching ink
    assert np.array_equal(out[blank], direct[blank])
    assert np.array_equal(out[1], np.broadcast_to(bias, (8, 8, 4)))


@pytest.mark.parametrize("gradients, relu", [("all", False), ("kernel", True)])
def test_one_pass_winograd_5x5_gives_exact_outputs_where_the_window_saw_only_zeros(gradients,
                                                                                  relu):
    """In training, as the frequency domain it took the article's conv2 over from, on the
    compiled one-pass kernel (a ReLU passed to the op too); at inference it is left to the
    rounding (the outputs there equal im2col's to 1e-12, and no gradient passes the kink)."""
    cnnlab.config.set_kernels("numba")
    rng = np.random.default_rng(5)
    x = np.zeros((2, 12, 12, 16))
    x[0, 6:, 6:] = rng.standard_normal((6, 6, 16))                           # ink in one corner
    kernel, bias = rng.standard_normal((5, 5, 16, 16)), rng.standard_normal(16)
    direct, _ = conv.conv2d_forward(x, kernel, bias, algorithm="direct", relu=relu)
    blank = np.ones((2, 8, 8), dtype=bool)
    blank[0, 2:, 2:] = False                                                 # windows reaching ink
    for asked in (gradients, "none"):
        out, cache = conv.conv2d_forward(x, kernel, bias, algorithm="winograd",
                                         gradients=asked, relu=relu)
        assert isinstance(cache, conv.WinogradCache) and cache.tiling.taps == 5
        np.testing.assert_allclose(out, direct, rtol=1e-12, atol=1e-12)
        if asked != "none":
            assert np.array_equal(out[blank], direct[blank])


#: ms per training step (forward + both gradients) of each path, one core, float32, measured by
#: benchmarks/conv_paths.py on this project's 2-core machine: (batch, H, W, C, F, K) -> ms.
#: CALIBRATED: the NumPy reference paths (CNNLAB_KERNELS=numpy; Winograd F(2x2));
#: CALIBRATED_COMPILED: with the compiled kernels (Winograd F(4x4)).
CALIBRATED = {
    (64, 32, 32, 16, 16, 3): {"direct": 48.2, "winograd": 44.7, "fourier": 38.0},
    (64, 16, 16, 32, 32, 3): {"direct": 23.0, "winograd": 20.4, "fourier": 15.6},
    (64, 8, 8, 64, 64, 3): {"direct": 16.3, "winograd": 12.8, "fourier": 11.6},
    (64, 32, 32, 24, 32, 3): {"direct": 78.9, "winograd": 74.2, "fourier": 53.4},
    (64, 4, 4, 128, 128, 3): {"direct": 11.2, "winograd": 9.3, "fourier": 12.4},
    (64, 30, 30, 32, 32, 3): {"direct": 75.4, "winograd": 64.8, "fourier": 52.0},
    (64, 16, 16, 128, 128, 3): {"direct": 197.2, "winograd": 134.7, "fourier": 135.2},
    (64, 12, 12, 32, 64, 5): {"direct": 51.8, "fourier": 14.6},
    (4, 32, 32, 16, 16, 3): {"direct": 1.2, "winograd": 1.6, "fourier": 2.1},
    (4, 8, 8, 64, 64, 3): {"direct": 0.8, "winograd": 1.1, "fourier": 1.2},
    (4, 16, 16, 128, 128, 3): {"direct": 12.3, "winograd": 9.2, "fourier": 25.4},
    (4, 12, 12, 32, 64, 5): {"direct": 2.2, "fourier": 1.7},
}


CALIBRATED_COMPILED = {
    (64, 32, 32, 16, 16, 3): {"direct": 38.4, "winograd": 16.7, "fourier": 23.5},
    (64, 16, 16, 32, 32, 3): {"direct": 18.7, "winograd": 8.3, "fourier": 11.5},
    (64, 8, 8, 64, 64, 3): {"direct": 10.5, "winograd": 5.5, "fourier": 8.6},
    (64, 32, 32, 24, 32, 3): {"direct": 72.0, "winograd": 34.9, "fourier": 47.5},
    (64, 4, 4, 128, 128, 3): {"direct": 8.3, "winograd": 6.8, "fourier": 11.7},
    (64, 30, 30, 32, 32, 3): {"direct": 77.5, "winograd": 39.8, "fourier": 48.6},
    (64, 16, 16, 128, 128, 3): {"direct": 164.0, "winograd": 63.7, "fourier": 115.2},
    (64, 12, 12, 32, 64, 5): {"direct": 36.3, "winograd": 9.2, "fourier": 15.9},   # (a)
    (4, 32, 32, 16, 16, 3): {"direct": 1.3, "winograd": 1.0, "fourier": 2.4},
    (4, 8, 8, 64, 64, 3): {"direct": 0.7, "winograd": 1.1, "fourier": 1.6},
    (4, 16, 16, 128, 128, 3): {"direct": 9.5, "winograd": 9.9, "fourier": 27.3},
    (4, 12, 12, 32, 64, 5): {"direct": 1.8, "winograd": 0.95, "fourier": 1.7},     # (a)
}
#: (a) remeasured (all three paths) once F(4x4, 5x5) trained in one pass


@pytest.mark.parametrize("kernels,shape", [("numpy", shape) for shape in CALIBRATED]
                         + [("numba", shape) for shape in CALIBRATED_COMPILED])
def test_the_cost_model_picks_a_measured_fastest_path_on_the_calibrated_shapes(kernels, shape):
    """On shapes whose times were measured, the pick is the fastest path or within 10% of it
    (the machine's noise); the 'same' padding of the zoo's layers."""
    cnnlab.config.set_kernels(kernels)
    n, h, w, c, f, k = shape
    pads = ((k // 2, k // 2), (k // 2, k // 2))
    picked = conv.choose((n, h, w, c), (k, k, c, f), (1, 1), pads, (1, 1))
    measured = (CALIBRATED if kernels == "numpy" else CALIBRATED_COMPILED)[shape]
    assert measured[picked] <= 1.1 * min(measured.values()), (picked, measured)


#: ms of the article's conv2 input gradient (grad_out (N, 8, 8, 64) with the flipped 5x5x64x32
#: kernel, padded by 4), on each path, one core, compiled kernels (best of 30, two runs; session
#: 35, with one-pass F(4x4, 5x5)). In a training step its kernel is new each time, so the
#: frequency path transforms it every call, and one-pass Winograd transforms and packs it
INPUT_GRADIENT_MEASURED = {1: {"direct": 0.193, "winograd": 0.21, "fourier": 0.52},
                           2: {"direct": 0.303, "winograd": 0.244, "fourier": 0.58},
                           4: {"direct": 0.59, "winograd": 0.328, "fourier": 0.74}}


@pytest.mark.parametrize("n", sorted(INPUT_GRADIENT_MEASURED))
def test_an_input_gradients_convolution_is_priced_with_its_new_kernels_transform(n):
    """Priced as inference (the kernel's spectrum kept from the call before), the frequency
    path won at batches 1 and 2 and ran 1.7-3x slower than im2col there (session 28)."""
    cnnlab.config.set_kernels("numba")
    picked = conv.choose((n, 8, 8, 64), (5, 5, 64, 32), (1, 1), ((4, 4), (4, 4)), (1, 1),
                         gradients="input")
    measured = INPUT_GRADIENT_MEASURED[n]
    assert measured[picked] <= 1.1 * min(measured.values()), (picked, measured)


def test_an_input_gradients_convolution_never_goes_to_the_frequency_domain():
    """Its kernel spectrum would serve one call (``fourier.step_work``): at batch 64, where the
    cost model prices the frequency path fastest for the article's conv2 step (one-pass
    Winograd, which it does not price, then takes it), its input gradient alone is not
    offered it."""
    cnnlab.config.set_kernels("numba")
    x, kernel = (64, 8, 8, 64), (5, 5, 64, 32)
    step = ((64, 12, 12, 32), (5, 5, 32, 64), ((0, 0), (0, 0)))
    costs = conv.step_costs(*step)
    assert min(costs, key=costs.get) == "fourier"
    assert conv.choose(step[0], step[1], (1, 1), step[2], (1, 1)) == "winograd"
    assert set(conv.step_costs(x, kernel, ((4, 4), (4, 4)), gradients="input")) == {"direct"}
    # one-pass Winograd takes it without asking the cost model (ONE_PASS_MIN_CHANNELS)
    assert conv.choose(x, kernel, (1, 1), ((4, 4), (4, 4)), (1, 1), gradients="input") \
        == "winograd"
    assert conv.choose(x, kernel, (1, 1), ((4, 4), (4, 4)), (1, 1), gradients="input",
                       dtype=np.float16) == "direct"


def test_strided_dilated_and_pointwise_convolutions_stay_direct():
    pads = ((1, 1), (1, 1))
    assert conv.choose((64, 32, 32, 16), (3, 3, 16, 32), (2, 2), pads, (1, 1)) == "direct"
    assert conv.choose((64, 32, 32, 16), (3, 3, 16, 32), (1, 1), pads, (2, 2)) == "direct"
    assert conv.choose((64, 32, 32, 64), (1, 1, 64, 64), (1, 1), ((0, 0), (0, 0)),
                       (1, 1)) == "direct"
    assert conv.choose((64, 40, 40, 16), (3, 3, 16, 16), (1, 1), pads, (1, 1)) != "fourier"


def test_algorithm_choice_is_checked():
    from cnnlab.errors import ConfigError
    x, kernel = np.zeros((1, 8, 8, 1)), np.zeros((3, 3, 1, 1))
    with pytest.raises(ConfigError, match="stride 1 and dilation 1"):
        conv.conv2d_forward(x, kernel, None, (2, 2), algorithm="fourier")
    with pytest.raises(ConfigError, match="algorithm must be one of"):
        conv.conv2d_forward(x, kernel, None, algorithm="lavin")
    with pytest.raises(ConfigError, match=r"needs a 3x3 or 5x5 kernel.*kernel \(7, 7\)"):
        conv.conv2d_forward(np.zeros((1, 8, 8, 1)), np.zeros((7, 7, 1, 1)), None,
                            algorithm="winograd")
    with pytest.raises(ConfigError, match=r"stride 1 and dilation 1.*strides=\(2, 2\)"):
        conv.conv2d_forward(x, kernel, None, (2, 2), algorithm="winograd")


def test_kernel_spectrum_is_reused_only_for_the_same_kernel_and_map_size():
    """Inference keeps the kernel's spectrum; a changed kernel or another map size (12x12 and
    14x10 have the same number of frequencies) must not pick up the old one."""
    rng = np.random.default_rng(5)
    kernel = rng.standard_normal((5, 5, 4, 3))
    workspace = {}
    for shape in ((16, 12, 12, 4), (16, 14, 10, 4), (16, 12, 12, 4)):
        x = rng.standard_normal(shape)
        for k in (kernel, kernel * 2):
            out, _ = conv.conv2d_forward(x, k, None, workspace=workspace, algorithm="fourier")
            direct, _ = conv.conv2d_forward(x, k, None, algorithm="direct")
            assert np.abs(out - direct).max() <= 1e-12 * np.abs(direct).max()


def test_frequency_domain_spreads_nan_like_direct_convolution():
    x = np.zeros((16, 12, 12, 2))
    x[0, 5, 5, 1] = np.nan                                  # one bad pixel in a blank image
    kernel = np.ones((5, 5, 2, 3))
    out, _ = conv.conv2d_forward(x, kernel, None, algorithm="fourier")
    direct, _ = conv.conv2d_forward(x, kernel, None, algorithm="direct")
    assert np.isnan(out[0, 1:6, 1:6]).all() and np.isnan(direct[0, 1:6, 1:6]).all()


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_pointwise_convolution_is_one_gemm_on_the_nhwc_array(stride):
    """A 1x1 convolution without padding reads the NHWC array itself (no im2col copy at stride
    1) and equals the im2col product it replaces, forward and backward."""
    rng = np.random.default_rng(stride)
    x, kernel, bias = (rng.standard_normal((3, 7, 8, 5)), rng.standard_normal((1, 1, 5, 4)),
                       rng.standard_normal(4))
    pads = ((0, 0), (0, 0))
    out, cache = conv.conv2d_forward(x, kernel, bias, (stride, stride), pads)
    cols = windows.im2col(x, (1, 1), (stride, stride), pads)
    assert_close(out, cols @ kernel.reshape(5, 4) + bias, np.float64, "out")
    assert np.shares_memory(cache[0], x) == (stride == 1)
    grad_out = rng.standard_normal(out.shape)
    fast = conv.conv2d_backward(grad_out, cache)
    plain = conv.conv2d_backward_reference(grad_out, cache)
    for a, b, name in zip(fast, plain, ("grad_x", "grad_kernel", "grad_bias")):
        assert_close(a, b, np.float64, name)


def test_batch_norm_folded_into_the_op_before_it_equals_the_unfolded_graph():
    """Inference folds each BatchNormalization into the Conv2D, DepthwiseConv2D or Dense before
    it (BN's moving statistics and gamma/beta randomised, so nothing is an identity); the
    outputs equal the unfolded graph's. A conv with an activation, or whose output is also read
    elsewhere, keeps its BN."""
    import cnnlab
    from cnnlab import layers
    from cnnlab.graph import fusion
    cnnlab.config.set_floatx("float64")
    inputs = cnnlab.Input((9, 9, 3))
    a = layers.BatchNormalization(name="bn_conv")(layers.Conv2D(4, 3, name="conv")(inputs))
    b = layers.BatchNormalization(name="bn_depth")(layers.DepthwiseConv2D(
        3, depth_multiplier=2, padding="same", use_bias=False, name="depth")(a))
    relu_conv = layers.Conv2D(4, 1, activation="relu", name="relu_conv")(b)
    c = layers.BatchNormalization(name="bn_after_relu")(relu_conv)
    shared = layers.Conv2D(4, 1, name="shared")(c)
    d = layers.Add()([layers.BatchNormalization(name="bn_shared")(shared), shared])
    flat = layers.Dense(6, name="dense")(layers.GlobalAveragePooling2D()(d))
    outputs = layers.Dense(3, activation="softmax", name="predictions")(
        layers.BatchNormalization(name="bn_dense")(flat))
    model = cnnlab.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            for name in ("gamma", "beta", "moving_mean"):
                layer.variable(name)[...] = rng.standard_normal(layer.variable(name).shape)
            layer.variable("moving_variance")[...] = rng.random(layer.variable(name).shape) + .5
    folds = fusion.batch_norm_folds(model, fusion.plan(model)[0])
    assert sorted(bn.layer.name for bn in folds.values()) == ["bn_conv", "bn_dense", "bn_depth"]
    x = rng.standard_normal((5, 9, 9, 3))
    unfolded = model.run(x)[0][0]                                       # every layer as it is
    assert_close(model.predict(x, verbose=0), unfolded, np.float64, "folded")


def test_a_residual_add_joins_the_convolution_before_it_and_equals_the_unfused_graph(
        monkeypatch):
    """Inference runs ResNet's ``conv -> BN -> Add(shortcut) -> ReLU`` as one convolution that
    adds the shortcut before its ReLU (``graph.fusion``'s residual join), also with the
    shortcut as the Add's first input and with no BN between. Not where the conv's output is
    read twice, where the Add has three inputs, nor where the shortcut is made after the conv.
    The predictions equal the same graph with no join bit for bit, and every layer run as it is
    (``model.run``) to float64 rounding; the joined convolutions run the Add's sum themselves."""
    from cnnlab import layers
    from cnnlab.engine import merge
    from cnnlab.graph import fusion
    cnnlab.config.set_floatx("float64")
    inputs = cnnlab.Input((12, 12, 8))
    a = layers.ReLU(name="relu_a")(layers.Add(name="add_a")([layers.BatchNormalization(
        name="bn_a")(layers.Conv2D(8, 3, padding="same", name="conv_a")(inputs)), inputs]))
    b = layers.Add(name="add_b")([a, layers.Conv2D(8, 1, name="conv_b")(a)])   # shortcut first
    twice = layers.Conv2D(8, 3, padding="same", name="twice")(b)
    c = layers.Add(name="add_c")([twice, layers.ReLU()(twice)])               # read twice
    three = layers.Add(name="add_three")([layers.Conv2D(8, 3, padding="same", name="three")(c),
                                          c, b])
    late = layers.Conv2D(8, 3, padding="same", name="late")(three)
    after = layers.Conv2D(8, 1, name="after")(late)          # made after "late": joins "after"
    d = layers.Add(name="add_d")([late, after])
    outputs = layers.Dense(3, activation="softmax")(layers.GlobalAveragePooling2D()(d))
    model = cnnlab.Model(inputs, outputs)
    rng = np.random.default_rng(5)
    bn = model.get_layer("bn_a")
    bn.set_weights([rng.uniform(0.5, 2, 8), rng.standard_normal(8), rng.standard_normal(8),
                    rng.uniform(0.5, 2, 8)])
    activations, _ = fusion.plan(model)
    joins = fusion.residual_joins(model, activations, fusion.batch_norm_folds(model, activations))
    assert {op.layer.name: join.add.layer.name for op, join in joins.items()} == {
        "conv_a": "add_a", "conv_b": "add_b", "after": "add_d"}
    x = rng.standard_normal((4, 12, 12, 8))
    monkeypatch.setattr(conv, "ALGORITHM", "winograd")      # the 3x3 convs by Winograd
    sums = []
    add_forward = merge.add_forward
    monkeypatch.setattr(merge, "add_forward", lambda xs, *args, **kwargs: (
        sums.append(len(xs)), add_forward(xs, *args, **kwargs))[1])
    joined = model.predict(x, verbose=0)
    # add_c, add_three, and the joined 1x1 convs, which add as the Add would; Winograd
    # (conv_a) adds in its own pass, compiled or not
    assert sorted(sums) == [2, 2, 2, 3]
    unjoined = model.run(x)[0][0]
    assert_close(joined, unjoined, np.float64, "joined")
    monkeypatch.setattr(fusion, "residual_joins", lambda *args: {})
    np.testing.assert_array_equal(model.predict(x, verbose=0), joined)


def test_a_max_pool_runs_inside_the_convolution_before_it_and_equals_the_unfused_graph(
        monkeypatch):
    """Training and inference run ``Conv2D -> MaxPooling2D`` (windows that tile, 'valid') as
    one convolution that returns the pooled map (``graph.fusion``'s pooled convolution): in
    one pass for a layer of few channels (the implicit GEMM, here face_net's odd 23 x 23 map),
    the conv and then the pool for the others. Not where the windows overlap, nor where the
    conv's output is read twice. The predictions equal the unfused graph's bit for bit (the
    same sums, the same maxima), and the loss and every gradient to float64 rounding (the
    bias gradient sums the pooled gradient, not the conv's); the article's network trains
    against PyTorch on this path (``test_training_vs_torch``)."""
    from cnnlab import layers
    from cnnlab.graph import fusion
    cnnlab.config.set_floatx("float64")
    inputs = cnnlab.Input((25, 25, 1))
    a = layers.MaxPooling2D(name="pool_a")(layers.Conv2D(16, 3, activation="relu",
                                                         name="conv_a")(inputs))    # 11 x 11
    b = layers.MaxPooling2D(name="pool_b")(layers.Conv2D(16, 3, padding="same",
                                                         name="conv_b")(a))          # 5 x 5
    c = layers.MaxPooling2D(2, strides=1, name="overlapping")(layers.Conv2D(
        16, 3, padding="same", name="conv_c")(b))
    twice = layers.Conv2D(16, 1, name="twice")(c)
    d = layers.Add()([layers.MaxPooling2D(name="pool_d")(twice),
                      layers.MaxPooling2D(name="pool_e")(twice)])
    outputs = layers.Dense(3, activation="softmax")(layers.Flatten()(d))
    model = cnnlab.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    pools = fusion.pooled_convs(model, fusion.plan(model)[0])
    assert {op.layer.name: p.layer.name for op, p in pools.items()} == {
        "conv_a": "pool_a", "conv_b": "pool_b"}
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((6, 25, 25, 1)), rng.integers(0, 3, 6)
    calls = []
    pooled_forward = conv._pooled_forward
    monkeypatch.setattr(conv, "_pooled_forward", lambda *args: (
        calls.append(args[2].shape[2]), pooled_forward(*args))[1])
    fused = model.predict(x, verbose=0), model.loss_and_gradients(x, y)
    assert calls == [1, 16, 1, 16]           # conv_a and conv_b, predicting and training
    monkeypatch.setattr(fusion, "pooled_convs", lambda *args: {})
    plain = model.predict(x, verbose=0), model.loss_and_gradients(x, y)
    np.testing.assert_array_equal(fused[0], plain[0])
    assert_close(fused[1][0], plain[1][0], np.float64, "loss")
    for name in plain[1][2]:
        assert_close(fused[1][2][name], plain[1][2][name], np.float64, name)


def test_one_pass_winograd_reuses_its_packed_kernel_only_while_the_weights_are_unchanged(
        monkeypatch):
    """At inference the one-pass Winograd keeps its transformed, packed kernel per call site
    (``conv._packed_kernel``): a second prediction packs nothing; a change of the weights in
    place, which keeps the array, is seen at once, and the output follows im2col's on the new
    weights."""
    from cnnlab import layers
    if compiled.module("winograd_fused_kernels") is None:
        pytest.skip("the one-pass kernel is compiled code")
    kernels = compiled.module("winograd_fused_kernels")
    packed = []
    pack = kernels.pack_kernel
    monkeypatch.setattr(kernels, "pack_kernel", lambda *args: packed.append(1) or pack(*args))
    cnnlab.config.set_floatx("float64")
    cnnlab.config.set_shards("threads")     # one shard: the cache under test is this process's
    model = cnnlab.Sequential([layers.Input((17, 16, 16)),
                               layers.Conv2D(16, 3, padding="same", name="conv")])
    x = np.random.default_rng(1).standard_normal((4, 17, 16, 16))     # 80 tiles
    model.predict(x, verbose=0)
    model.predict(x, verbose=0)
    assert len(packed) == 1
    kernel = model.get_layer("conv").variable("kernel")
    kernel[0, 0, 0, 0] += 1.0                                  # in place: the same array
    changed = model.predict(x, verbose=0)
    assert len(packed) == 2
    expected, _ = conv.conv2d_forward(x, kernel, model.get_layer("conv").variable("bias"),
                                      (1, 1), ((1, 1), (1, 1)), algorithm="direct")
    assert_close(changed, expected, np.float64, "after the change")


def test_batch_norm_relu_fusion_equals_layer_by_layer(monkeypatch):
    """Training through BatchNormalization -> ReLU (a layer, and Activation('relu')) with the
    ReLU run in place inside the BN's step gives the unfused graph's loss, outputs and every
    gradient, bit for bit; a BN whose output is also read elsewhere keeps its ReLU apart."""
    import cnnlab
    from cnnlab import layers
    from cnnlab.graph import fusion
    cnnlab.config.set_floatx("float64")
    inputs = cnnlab.Input((8, 8, 3))
    a = layers.ReLU(name="relu_a")(layers.BatchNormalization(name="bn_a")(
        layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)))
    b = layers.BatchNormalization(name="bn_b")(layers.Conv2D(4, 3, padding="same")(a))
    c = layers.Activation("relu", name="relu_b")(b)
    d = layers.Add()([c, b])                                 # bn_b is read twice: no fusion
    e = layers.Activation("relu", name="relu_c")(layers.BatchNormalization(name="bn_c")(
        layers.Conv2D(4, 1)(d)))
    outputs = layers.Dense(3, activation="softmax")(layers.GlobalAveragePooling2D()(e))
    model = cnnlab.Model(inputs, outputs)
    moved, _ = fusion.plan(model)
    assert {node.layer.name: act for node, act in moved.items()} == {
        "bn_a": "relu", "relu_a": "linear", "bn_c": "relu", "relu_c": "linear"}
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 8, 8, 3)), rng.integers(0, 3, 6)
    fused = model.loss_and_gradients(x, y)
    monkeypatch.setattr(fusion, "ReLU", type("NoReLU", (), {}))
    monkeypatch.setattr(fusion, "Activation", type("NoActivation", (), {}))
    assert not any(node.layer.name.startswith("bn") for node in fusion.plan(model)[0])
    plain = model.loss_and_gradients(x, y)
    assert fused[0] == plain[0]
    np.testing.assert_array_equal(fused[1], plain[1])
    for name in plain[2]:
        np.testing.assert_array_equal(fused[2][name], plain[2][name])


def test_add_relu_fusion_equals_layer_by_layer(monkeypatch):
    """Training and inference through ResNet's ``Add -> ReLU`` with the ReLU in the sum's own
    pass give the unfused graph's loss, outputs and every gradient, bit for bit; an Add whose
    output is also read elsewhere keeps its ReLU apart."""
    import cnnlab
    from cnnlab import layers
    from cnnlab.graph import fusion
    cnnlab.config.set_floatx("float64")
    inputs = cnnlab.Input((8, 8, 3))
    a = layers.Conv2D(4, 3, padding="same", name="a")(inputs)
    b = layers.Conv2D(4, 1, name="b")(inputs)
    joined = layers.ReLU(name="out_1")(layers.Add(name="add_1")([a, b]))
    c = layers.Conv2D(4, 3, padding="same")(joined)
    summed = layers.Add(name="add_2")([c, joined])
    d = layers.Activation("relu", name="out_2")(summed)
    e = layers.Add(name="add_3")([d, summed])                # add_2 is read twice: no fusion
    outputs = layers.Dense(3, activation="softmax")(layers.GlobalAveragePooling2D()(e))
    model = cnnlab.Model(inputs, outputs)
    moved, _ = fusion.plan(model)
    assert {node.layer.name: act for node, act in moved.items()} == {
        "add_1": "relu", "out_1": "linear"}
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 8, 8, 3)), rng.integers(0, 3, 6)
    fused, fused_out = model.loss_and_gradients(x, y), model.predict(x, verbose=0)
    monkeypatch.setattr(fusion, "ReLU", type("NoReLU", (), {}))
    assert not fusion.plan(model)[0]
    plain, plain_out = model.loss_and_gradients(x, y), model.predict(x, verbose=0)
    assert fused[0] == plain[0]
    np.testing.assert_array_equal(fused[1], plain[1])
    np.testing.assert_array_equal(fused_out, plain_out)
    for name in plain[2]:
        np.testing.assert_array_equal(fused[2][name], plain[2][name])


def test_convolutions_are_costed_for_the_gradients_that_will_follow(monkeypatch):
    """In training the first convolution is costed without an input gradient (nothing needs
    the image's), the others with one, and an input gradient that is a convolution of its own
    (after im2col or Winograd) as one; in inference with none."""
    import cnnlab
    seen = []
    original = conv.choose

    def recording(x_shape, kernel_shape, *args, gradients="all", **kwargs):
        seen.append((kernel_shape[2], gradients))
        return original(x_shape, kernel_shape, *args, gradients=gradients, **kwargs)

    monkeypatch.setattr(conv, "choose", recording)
    model = cnnlab.zoo.get("article")
    model.compile("sgd", "sparse_categorical_crossentropy")
    x, y = np.random.default_rng(0).random((4, 28, 28, 1)), np.arange(4)
    model.train_on_batch(x, y)
    assert seen[:2] == [(1, "kernel"), (32, "all")]
    assert seen[2:] in ([], [(64, "input")])           # conv2's, when its step ran im2col
    seen.clear()
    model.predict(x, verbose=0)
    assert seen == [(1, "none"), (32, "none")]


def test_folded_batch_norms_follow_every_in_place_change_of_their_variables():
    """Changing any variable in place (kernel, bias, gamma, beta, moving statistics) takes
    effect at the next predict, as the unfolded graph computes it: nothing derived from the
    weights outlives them (measured: keeping the folded weights and the three-pass Winograd's
    kernel between predicts saved nothing at batch 1 and 2% at batch 128 on ResNet-20, so they
    are not kept; what is kept, the frequency domain's spectrum and the one-pass Winograd's
    packed kernel, is compared by value, ``arrays.derived``)."""
    import cnnlab
    from cnnlab import layers
    cnnlab.config.set_floatx("float64")
    inputs = cnnlab.Input((8, 8, 2))
    x = layers.Conv2D(3, 3, padding="same", name="conv")(inputs)
    outputs = layers.BatchNormalization(name="bn")(x)
    model = cnnlab.Model(inputs, outputs)
    rng = np.random.default_rng(1)
    images = rng.standard_normal((2, 8, 8, 2))
    model.predict(images, verbose=0)
    for layer_name, variable in (("conv", "kernel"), ("conv", "bias"), ("bn", "gamma"),
                                 ("bn", "beta"), ("bn", "moving_mean"), ("bn", "moving_variance")):
        value = model.get_layer(layer_name).variable(variable)
        value[...] = rng.random(value.shape) + 0.5
        unfolded = model.run(images)[0][0]
        assert_close(model.predict(images, verbose=0), unfolded, np.float64, variable)


def _chain_apart(x, ops):
    """The reference for ``engine.chain``: each op on the whole batch, a 1x1 convolution by
    ``dense.linear``, another by ``conv2d_forward``, a depthwise one by
    ``depthwise_conv2d_forward``."""
    from cnnlab.engine import dense, depthwise
    for op in ops:
        if op.depthwise:
            x, _ = depthwise.depthwise_conv2d_forward(x, op.kernel, op.bias, op.strides, op.pads,
                                                      op.dilation, relu=op.relu)
        elif op.kernel.shape[:2] == (1, 1) and tuple(op.strides) == (1, 1):
            out = np.empty((*x.shape[:3], op.kernel.shape[3]), x.dtype)
            dense.linear(x.reshape(-1, x.shape[3]), op.kernel[0, 0], op.bias, op.relu,
                         out.reshape(-1, out.shape[3]))
            x = out
        else:
            x, _ = conv.conv2d_forward(x, op.kernel, op.bias, op.strides, op.pads, op.dilation,
                                       gradients="none", relu=op.relu)
    return x


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("order,hw,c,stride,padding,dilation,relu,bias", [
    ("pd", 16, 8, 1, "same", 1, True, True),
    ("pdp", 15, 24, 2, "same", 1, False, False),       # odd map, 'same' at stride 2
    ("dpdp", 17, 16, 1, "valid", 2, True, True),       # a depthwise head, dilation 2
    ("pdpd", 19, 5, 2, "valid", 1, True, False),       # the first GEMM: K = 5
    ("pp", 9, 32, 1, "same", 1, False, True),
    ("sdp", 18, 3, 1, "same", 1, True, False),         # an RGB stem, as MobileNet's
    ("sd", 21, 1, 2, "valid", 1, False, True)])        # a stride-2 stem of one channel
def test_a_chain_of_convolutions_in_pieces_equals_the_ops_apart(
        monkeypatch, dtype, order, hw, c, stride, padding, dilation, relu, bias):
    """``engine.chain`` runs a chain of 1x1 ('p'), depthwise ('d') and stem ('s': few input
    channels, 3x3) convolutions in pieces of whole images (here as small as the compiled GEMM
    takes) and gives the values of the ops run one by one on the whole batch, bit for bit;
    with the reference switched on, or where a 1x1 conv's whole batch is too small for the
    compiled GEMM, it runs the ops apart."""
    from cnnlab.engine import chain
    cnnlab.config.set_kernels("numba")               # the conftest puts the switch back
    monkeypatch.setattr(chain, "CHAIN_PIECE_BYTES", 1)
    rng = np.random.default_rng(hw * c + len(order))
    n, size, channels, ops = 13, hw, c, []
    for k, kind in enumerate(order):
        use_bias, use_relu = bool(bias or k % 2), bool(relu or k % 2)   # some with, some not
        window = 1 if kind == "p" else 3
        steps = (1, 1) if kind == "p" else (stride, stride)
        dilated = (1, 1) if kind == "p" else (dilation, dilation)
        pads = resolve_padding("valid" if kind == "p" else padding, (size, size),
                               (window, window), steps, dilated, "test")
        out_channels = {"d": channels, "s": 16 + 2 * channels,         # F: not whole vectors
                        "p": 2 * channels + (7 if k == 0 else 16)}[kind]
        ops.append(chain.ChainOp(
            kind == "d", rng.standard_normal(
                (window, window, channels, 1 if kind == "d" else out_channels)).astype(dtype),
            rng.standard_normal(out_channels).astype(dtype) if use_bias else None,
            steps, pads, dilated, use_relu))
        channels = out_channels
        size = (size + sum(pads[0]) - dilated[0] * (window - 1) - 1) // steps[0] + 1
    x = rng.standard_normal((n, hw, hw, c)).astype(dtype)
    assert chain.chain_shapes(x.shape, ops)[-1] == (n, size, size, channels)
    (run,) = chain.chain_runs(x, ops)                          # all of it, in pieces
    assert run.ops == range(len(ops)) and run.pieces is not None and len(run.pieces) >= 2
    starts = [p.start for p in run.pieces]
    assert starts + [n] == sorted({*starts, n}) and run.pieces[-1].stop == n
    expected = _chain_apart(x, ops)
    np.testing.assert_array_equal(chain.chain_forward(x, ops), expected)
    if "p" in order:                    # a whole batch the compiled GEMM would not take
        monkeypatch.setattr(chain, "LINEAR_MIN_ROWS", n * hw * hw + 1)
        assert all(run.pieces is None or not any(ops[k].pointwise for k in run.ops)
                   for run in chain.chain_runs(x, ops))      # the others may still chain
        np.testing.assert_array_equal(chain.chain_forward(x, ops), expected)
    cnnlab.config.set_kernels("numpy")
    assert chain.chain_runs(x, ops) == [chain.Run(range(len(ops)), None)]
    np.testing.assert_allclose(chain.chain_forward(x, ops), expected,
                               rtol=1e-4 if dtype == "float32" else 1e-10, atol=1e-4)


def test_a_chain_whose_first_op_is_a_strided_1x1_convolution_runs_apart(monkeypatch):
    """A 1x1 stem at stride 2 takes the convolution's own GEMM on the subsampled map, not the
    implicit GEMM the chain's pieces would run, so the chain runs its ops apart, with the
    values of the ops run one by one."""
    from cnnlab.engine import chain
    cnnlab.config.set_kernels("numba")
    monkeypatch.setattr(chain, "CHAIN_PIECE_BYTES", 1)        # else too small to cut
    rng = np.random.default_rng(3)
    x = rng.standard_normal((13, 16, 16, 3)).astype(np.float32)
    same = resolve_padding("same", (8, 8), (3, 3), (1, 1), (1, 1), "test")
    ops = [chain.ChainOp(False, rng.standard_normal((1, 1, 3, 16)).astype(np.float32), None,
                         (2, 2), ((0, 0), (0, 0)), (1, 1), True),
           chain.ChainOp(True, rng.standard_normal((3, 3, 16, 1)).astype(np.float32), None,
                         (1, 1), same, (1, 1), True)]
    assert chain.chain_runs(x, ops) == [chain.Run(range(2), None)]
    np.testing.assert_array_equal(chain.chain_forward(x, ops), _chain_apart(x, ops))


def test_a_chain_runs_in_pieces_around_an_op_that_cannot(monkeypatch):
    """mobilenet_small at batch 8: its last 1x1 layer's whole batch (4 x 4 maps) is too small
    for the compiled GEMM, and the ops before it still run in pieces. Here such a 1x1 conv in
    the middle: the runs before and after it go in pieces, it alone on the whole batch, and
    the values are those of the ops one by one."""
    from cnnlab.engine import chain
    cnnlab.config.set_kernels("numba")
    monkeypatch.setattr(chain, "CHAIN_PIECE_BYTES", 1)
    rng = np.random.default_rng(4)
    n, f = 13, 32
    x = rng.standard_normal((n, 12, 12, f)).astype(np.float32)

    def conv(window, stride, depthwise):
        pads = resolve_padding("same", (12, 12), (window, window), (stride, stride), (1, 1),
                               "test")
        shape = (window, window, f, 1 if depthwise else f)
        return chain.ChainOp(depthwise, rng.standard_normal(shape).astype(np.float32),
                             rng.standard_normal(f).astype(np.float32), (stride, stride),
                             pads, (1, 1), True)

    ops = [conv(3, 1, True), conv(1, 1, False), conv(3, 2, True), conv(1, 1, False),
           conv(3, 1, True), conv(3, 1, True)]
    # the 1x1 convs' whole batches: 13 x 144 rows, then 13 x 36 = 468, under 469
    monkeypatch.setattr(chain, "LINEAR_MIN_ROWS", 469)
    runs = chain.chain_runs(x, ops)
    assert [(run.ops, run.pieces is not None) for run in runs] == [
        (range(0, 3), True), (range(3, 4), False), (range(4, 6), True)]
    np.testing.assert_array_equal(chain.chain_forward(x, ops), _chain_apart(x, ops))


def test_a_chain_of_convolutions_runs_in_one_call_at_inference(monkeypatch):
    """``graph.fusion``'s 7.: MobileNet's ``stem -> BN -> ReLU -> DepthwiseConv2D -> BN -> ReLU
    -> Conv2D(1x1) -> BN -> ReLU -> ...`` predicts as one call of the stem, the folded
    BatchNormalizations and ReLUs included, and the predictions and evaluation equal the
    unfused graph's bit for bit. The chain ends at an output read twice; a 1x1 conv whose
    activation is not a ReLU, that pads its input or that adds a residual (MobileNetV2's
    projection), and a 3x3 conv after the first op, never join one; training never chains."""
    from cnnlab import layers
    from cnnlab.engine import chain
    from cnnlab.graph import fusion
    cnnlab.config.set_kernels("numba")
    monkeypatch.setattr(chain, "CHAIN_PIECE_BYTES", 1)
    cnnlab.utils.set_random_seed(4)

    def bn_relu(x, name):
        return layers.ReLU(name=name + "_relu")(layers.BatchNormalization(name=name + "_bn")(x))

    inputs = cnnlab.Input((16, 16, 3))
    x = bn_relu(layers.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inputs), "s")
    x = bn_relu(layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw1")(x), "d1")
    x = bn_relu(layers.Conv2D(32, 1, use_bias=False, name="pw1")(x), "p1")
    x = bn_relu(layers.DepthwiseConv2D(3, strides=2, padding="same", name="dw2")(x), "d2")
    x = layers.Conv2D(32, 1, activation="relu", name="pw2")(x)              # no BN between
    x = layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw3")(x)
    twice = layers.Conv2D(32, 1, name="read_twice")(x)
    x = layers.Add()([layers.DepthwiseConv2D(3, padding="same", name="dw4")(twice), twice])
    x = layers.Conv2D(32, 1, activation="tanh", name="tanh")(x)
    x = layers.DepthwiseConv2D(3, padding="same", name="dw5")(x)
    x = layers.Conv2D(32, 1, padding=1, name="padded")(x)              # 10 x 10: a border
    x = layers.Conv2D(32, 3, name="conv3x3")(x)
    block = layers.DepthwiseConv2D(3, name="dw6")(x)                   # 6 x 6
    x = bn_relu(layers.Conv2D(64, 1, use_bias=False, name="expand")(block), "e")
    x = bn_relu(layers.DepthwiseConv2D(3, padding="same", name="dw7")(x), "d7")
    x = layers.BatchNormalization(name="project_bn")(layers.Conv2D(32, 1, name="project")(x))
    x = layers.Add()([x, block])
    outputs = layers.Dense(3, activation="softmax")(layers.GlobalAveragePooling2D()(x))
    model = cnnlab.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((40, 16, 16, 3)).astype(np.float32), rng.integers(0, 3, 40)
    for layer in model.layers:                       # moving statistics that are not 0 and 1
        if isinstance(layer, layers.BatchNormalization):
            for variable in layer.variables:
                variable.value[...] = rng.uniform(0.5, 1.5, variable.value.shape)
    activations, _ = fusion.plan(model)
    folds = fusion.batch_norm_folds(model, activations)
    joins = fusion.residual_joins(model, activations, folds)
    assert [op.layer.name for op in joins] == ["project"]
    chains = fusion.separable_chains(model, activations, folds, joins)
    assert {head.layer.name: [link.node.layer.name for link in links]
            for head, links in chains.items()} == {
        "stem": ["dw1", "pw1", "dw2", "pw2", "dw3", "read_twice"], "expand": ["dw7"]}
    calls = []
    chained_forward = chain.chain_forward
    from cnnlab.layers import conv as conv_layers
    monkeypatch.setattr(conv_layers, "chain_forward", lambda *a: (
        calls.append((len(a[1]), all(run.pieces for run in chain.chain_runs(*a[:2])))),
        chained_forward(*a))[1])
    cnnlab.config.set_threads(1)
    fused = model.predict(x, batch_size=40, verbose=0), model.evaluate(x, y, batch_size=40,
                                                                        verbose=0)
    assert calls == [(7, True), (2, True)] * 2     # both chains in pieces, predict and evaluate
    chain_plan = fusion.separable_chains
    monkeypatch.setattr(fusion, "separable_chains", lambda *a: {})
    plain = model.predict(x, batch_size=40, verbose=0), model.evaluate(x, y, batch_size=40,
                                                                        verbose=0)
    np.testing.assert_array_equal(fused[0], plain[0])
    assert fused[1] == plain[1]
    monkeypatch.setattr(fusion, "separable_chains", chain_plan)
    model.train_on_batch(x[:8], y[:8])
    assert len(calls) == 4                                  # training never chains
