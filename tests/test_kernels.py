"""The compiled kernels against the NumPy reference they replace (float64 to 1e-12, float32 to
its rounding), the switch between them, and the fallback without Numba. Each compiled path is
also what every other test of the op runs (torch in float64, finite differences), since it is
the default; .ci/run repeats those tests on the reference with CNNLAB_KERNELS=numpy."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import cnnlab
from cnnlab.engine import compiled
from cnnlab.engine import normalization as bn

pytest.importorskip("numba")


def _both(function):
    """``function()`` on the compiled kernels, then on the reference (conftest restores the
    switch after each test)."""
    cnnlab.config.set_kernels("numba")
    fast = function()
    cnnlab.config.set_kernels("numpy")
    return fast, function()


def _train_step(x, gamma, beta, dy, relu=False):
    y, (mean, var), cache = bn.batch_norm_train_forward(x, gamma, beta, 1e-3, relu=relu)
    dx, dgamma, dbeta = bn.batch_norm_train_backward(dy, cache)
    return y, mean, var, dx, dgamma, dbeta


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 300), channels=st.integers(1, 37), offset=st.floats(-3, 3),
       relu=st.booleans(), seed=st.integers(0, 2**31 - 1))
@example(rows=81, channels=1, offset=2.0, relu=True, seed=17)     # a sum that cancels
def test_batch_norm_kernels_equal_the_reference_in_float64(rows, channels, offset, relu, seed):
    """Any row count (1 included) and channel count (odd ones, that no SIMD width divides), with
    and without the ReLU fused into the passes."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, channels)) * rng.uniform(0.1, 3, channels) + offset
    gamma, beta = rng.standard_normal(channels), rng.standard_normal(channels)
    dy = rng.standard_normal((rows, channels))
    fast, reference = _both(lambda: _train_step(x, gamma, beta, dy, relu))
    # a sum's rounding scales with its terms, not with the sum: dgamma cancels to 0.007 from 81
    # terms near 1 (rows=81, channels=1, offset 2, relu), 2e-12 apart in relative terms
    xhat = (x - reference[1]) / np.sqrt(reference[2] + 1e-3)
    terms = {"mean": np.abs(x).mean(0), "dgamma": (np.abs(dy) * np.abs(xhat)).sum(0),
             "dbeta": np.abs(dy).sum(0)}
    for name, a, b in zip(("y", "mean", "var", "dx", "dgamma", "dbeta"), fast, reference):
        scale = float(np.max(terms.get(name, np.abs(b))))
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * scale, err_msg=name)


def test_batch_norm_kernels_in_float32_within_rounding():
    """131,072 rows (ResNet-20's first stage at batch 128): the kernels sum in float64, the
    reference in float64 from float32 blocks, so both are within float32's own rounding."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((131072, 16)) * 2 + 0.5).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    gamma, beta = np.float32(1.5) * np.ones(16, np.float32), np.zeros(16, np.float32)
    fast, reference = _both(lambda: _train_step(x, gamma, beta, dy))
    for name, a, b in zip(("y", "mean", "var", "dx", "dgamma", "dbeta"), fast, reference):
        assert a.dtype == np.float32, name
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * np.abs(b).max(), err_msg=name)


def test_the_switch_changes_the_path_taken(monkeypatch):
    cnnlab.config.set_kernels("numba")
    kernels = compiled.module("normalization_kernels")
    calls = []
    monkeypatch.setattr(kernels, "channel_sums",
                        lambda a, b, real=kernels.channel_sums: calls.append(1) or real(a, b))
    x = np.random.default_rng(1).standard_normal((10, 3))
    bn.batch_norm_train_forward(x, np.ones(3), np.zeros(3), 1e-3)
    assert calls == [1]
    cnnlab.config.set_kernels("numpy")
    assert compiled.module("normalization_kernels") is None
    bn.batch_norm_train_forward(x, np.ones(3), np.zeros(3), 1e-3)
    assert calls == [1]                                      # the reference ran
    with pytest.raises(cnnlab.errors.ConfigError, match="set_kernels.s name must be one of"):
        cnnlab.config.set_kernels("fast")


def test_without_numba_the_reference_runs_with_one_warning(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "numba", None)
    monkeypatch.setattr(compiled, "_loaded", {})
    monkeypatch.setattr(compiled, "_numba_missing", None)
    monkeypatch.delitem(sys.modules, "cnnlab.engine.normalization_kernels", raising=False)
    cnnlab.config.set_kernels("numba")
    with pytest.warns(RuntimeWarning, match="pip install numba"):
        assert compiled.module("normalization_kernels") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")                       # once, not at every call
        assert compiled.module("normalization_kernels") is None
        x = np.random.default_rng(2).standard_normal((8, 2))
        y, _, _ = bn.batch_norm_train_forward(x, np.ones(2), np.zeros(2), 1e-3)
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-12)


def test_the_fused_relu_is_the_relu_after_the_normalisation():
    """Against the two ops one after the other (float64, the reference path's BN without a ReLU,
    then ``engine.activations``): the fused forward is ``max(y, 0)`` and its backward is BN's
    backward of the ReLU's backward, on both paths; about half the outputs are cut."""
    from cnnlab.engine import activations
    rng = np.random.default_rng(5)
    x = rng.standard_normal((257, 7))
    gamma, beta, dy = rng.standard_normal(7), np.zeros(7), rng.standard_normal((257, 7))
    cnnlab.config.set_kernels("numpy")
    y, _, cache = bn.batch_norm_train_forward(x, gamma, beta, 1e-3)
    relu_y, relu_cache = activations.relu_forward(y)
    expected = (relu_y, *bn.batch_norm_train_backward(
        activations.relu_backward(dy, relu_cache), cache))
    for kernels in ("numba", "numpy"):
        cnnlab.config.set_kernels(kernels)
        y, _, _, dx, dgamma, dbeta = _train_step(x, gamma, beta, dy, relu=True)
        for name, a, b in zip(("y", "dx", "dgamma", "dbeta"), (y, dx, dgamma, dbeta), expected):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=f"{kernels} {name}")


def test_a_network_without_kernels_never_imports_numba():
    """`import cnnlab` and predicting with a network with no compiled op (Dense layers) do not
    pay Numba's import; the first training step does (the optimizer's update is compiled)."""
    import os
    import subprocess
    import sys
    script = (
        "import sys, numpy as np, cnnlab\n"
        "L = cnnlab.layers\n"
        "m = cnnlab.models.Sequential([L.Input((28, 28, 1)), L.Flatten(), L.Dense(4),\n"
        "                              L.Dense(10, activation='softmax')])\n"
        "m.compile(optimizer='sgd', loss='sparse_categorical_crossentropy')\n"
        "x = np.zeros((8, 28, 28, 1), np.float32)\n"
        "m.predict(x, verbose=0)\n"
        "before = 'numba' in sys.modules\n"
        "m.fit(x, np.arange(8) % 10, epochs=1, verbose=0)\n"
        "print(before, 'numba' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, env={**os.environ, "CNNLAB_KERNELS": "numba"}).stdout.split()
    assert out == ["False", "True"]


# --- Winograd F(4x4, 3x3): the compiled transforms against the einsum references --------------
def _winograd_case(seed, n, h, w, c, f, top, left):
    from cnnlab.engine import winograd
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c))
    out_hw = (h + 2 * top - 2, w + 2 * left - 2)          # 3x3, stride 1, padding top/left
    tiles_hw = winograd.tile_counts(out_hw, 4)
    pads = ((top, top), (left, left))
    m = rng.standard_normal((36, n * tiles_hw[0] * tiles_hw[1], f))
    grad_out = rng.standard_normal((n, *out_hw, f))
    bias = rng.standard_normal(f)
    residual = rng.standard_normal((n, *out_hw, f))
    return x, pads, out_hw, tiles_hw, m, grad_out, bias, residual


#: what ``_winograd_transforms`` returns
TRANSFORMS = ("V", "y", "grad_M", "relu(y)", "y + residual", "relu(y + residual)")


def _winograd_transforms(x, pads, out_hw, tiles_hw, m, grad_out, bias, residual):
    """``TRANSFORMS`` by whichever path the switch selects; the output transform's epilogues
    against the reference's passes after it (as the unfused conv, BN and Add run them)."""
    from cnnlab.engine import winograd
    kernels = compiled.module("winograd_kernels")
    n, f = x.shape[0], m.shape[2]
    if kernels is None:
        y = winograd.output_transform_reference(m, n, tiles_hw, out_hw, winograd.F4, bias)
        return (winograd.input_transform_reference(x, pads, tiles_hw, winograd.F4), y,
                winograd.output_adjoint_reference(grad_out, tiles_hw, winograd.F4),
                np.maximum(y, 0), y + residual, np.maximum(y + residual, 0))
    v = winograd.transform_input(x, pads, tiles_hw, winograd.F4)
    y, rectified, joined, joined_rectified = np.full((4, n, *out_hw, f), np.nan, x.dtype)
    kernels.output_tiles(m, bias, *tiles_hw, y, False, y, False)
    kernels.output_tiles(m, bias, *tiles_hw, rectified, True, y, False)
    kernels.output_tiles(m, bias, *tiles_hw, joined, False, residual, True)
    kernels.output_tiles(m, bias, *tiles_hw, joined_rectified, True, residual, True)
    grad_m = winograd.output_adjoint(grad_out, tiles_hw, winograd.F4)   # the generated kernel
    return v, y, grad_m, rectified, joined, joined_rectified


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 3), h=st.integers(3, 15),
       w=st.integers(3, 15), c=st.integers(1, 19), f=st.integers(1, 19),
       top=st.integers(0, 2), left=st.integers(0, 2))
def test_winograd_kernels_equal_the_reference_in_float64(seed, n, h, w, c, f, top, left):
    """Odd sizes (tiles hanging over the edge), batch 1, padding 0-2, channel counts that no
    SIMD width divides."""
    case = _winograd_case(seed, n, h, w, c, f, top, left)
    fast, reference = _both(lambda: _winograd_transforms(*case))
    for name, a, b in zip(TRANSFORMS, fast, reference):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * np.abs(b).max(), err_msg=name)


@pytest.mark.parametrize("c, f", [(300, 290), (272, 273), (545, 7)])
def test_winograd_kernels_equal_the_reference_past_one_scratch_row(c, f):
    """More channels than a scratch row holds (``winograd_kernels.BLOCK``): done in blocks."""
    case = _winograd_case(c + f, 2, 7, 9, c, f, 1, 0)
    fast, reference = _both(lambda: _winograd_transforms(*case))
    for name, a, b in zip(TRANSFORMS, fast, reference):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * np.abs(b).max(), err_msg=name)


def test_winograd_kernels_in_float32_within_rounding():
    """ResNet-20's first stage (32 x 32 x 16, batch 8): the transforms add at most 6 terms with
    coefficients up to 25 (B) or 8 (A), so they agree to a few float32 roundings of the terms."""
    x, pads, out_hw, tiles_hw, m, grad_out, bias, residual = _winograd_case(
        3, 8, 32, 32, 16, 16, 1, 1)
    case = (x.astype(np.float32), pads, out_hw, tiles_hw, m.astype(np.float32),
            grad_out.astype(np.float32), bias.astype(np.float32), residual.astype(np.float32))
    fast, reference = _both(lambda: _winograd_transforms(*case))
    for name, a, b in zip(TRANSFORMS, fast, reference):
        assert a.dtype == np.float32, name
        np.testing.assert_allclose(a, b, rtol=0, atol=64 * 6e-8 * np.abs(b).max(), err_msg=name)


def test_the_switch_selects_the_winograd_tiling():
    """Compiled: F(4x4) with the kernels; reference: F(2x2) in NumPy. Both convolve alike."""
    from cnnlab.engine import conv, winograd
    rng = np.random.default_rng(4)
    x, kernel = rng.standard_normal((2, 9, 7, 5)), rng.standard_normal((3, 3, 5, 6))
    pads = ((1, 1), (1, 1))
    tilings = []

    def run():
        tilings.append(winograd.tiling())
        out, cache = conv.conv2d_forward(x, kernel, None, (1, 1), pads, algorithm="winograd")
        assert cache.tiles[0].shape[0] == tilings[-1].alpha ** 2
        return out
    fast, reference = _both(run)
    assert tilings == [winograd.F4, winograd.F2]
    direct = conv.conv2d_forward(x, kernel, None, (1, 1), pads, algorithm="direct")[0]
    np.testing.assert_allclose(fast, direct, rtol=1e-12, atol=1e-12 * np.abs(direct).max())
    np.testing.assert_allclose(reference, direct, rtol=1e-12, atol=1e-12 * np.abs(direct).max())


# --- depthwise convolution: the compiled kernels against the per-tap NumPy reference ----------
def _depthwise_pass(x, kernel, bias, strides, pads, dilation, grad_out, relu=False):
    from cnnlab.engine import depthwise
    out, cache = depthwise.depthwise_conv2d_forward(x, kernel, bias, strides, pads, dilation)
    grads = depthwise.depthwise_conv2d_backward(grad_out, cache, True)
    rectified, _ = depthwise.depthwise_conv2d_forward(x, kernel, bias, strides, pads, dilation,
                                                      relu=True)
    return out, *grads, rectified


def _depthwise_case(seed, n, h, w, c, m, kh, kw, strides, dilation, pads, with_bias):
    from cnnlab.engine.shapes import output_hw
    rng = np.random.default_rng(seed)
    out_hw = output_hw((h, w), (kh, kw), strides, pads, dilation)
    return (rng.standard_normal((n, h, w, c)), rng.standard_normal((kh, kw, c, m)),
            rng.standard_normal(c * m) if with_bias else None, strides, pads, dilation,
            rng.standard_normal((n, *out_hw, c * m)))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 3), h=st.integers(1, 11),
       w=st.integers(1, 11), c=st.integers(1, 19), m=st.integers(1, 3), kh=st.integers(1, 3),
       kw=st.integers(1, 3), strides=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       pads=st.tuples(st.tuples(st.integers(0, 2), st.integers(0, 2)),
                      st.tuples(st.integers(0, 2), st.integers(0, 2))),
       with_bias=st.booleans())
@example(seed=3, n=2, h=6, w=7, c=70, m=1, kh=3, kw=3, strides=(1, 1), dilation=(1, 1),
         pads=((1, 1), (1, 1)), with_bias=True)     # past ROWS_MAX_CHANNELS: the pixel loops
@example(seed=4, n=1, h=5, w=9, c=5, m=1, kh=1, kw=3, strides=(1, 1), dilation=(1, 2),
         pads=((2, 0), (0, 2)), with_bias=False)    # padding past the kernel's reach
def test_depthwise_kernels_equal_the_reference_in_float64(seed, n, h, w, c, m, kh, kw, strides,
                                                          dilation, pads, with_bias):
    """Any stride, dilation and (asymmetric) padding, depth multipliers 1-3, batch 1, channel
    counts no SIMD width divides: the output and all three gradients, on the row loops (one
    filter per channel, stride 1 along the width, up to 64 channels) and the pixel loops; and
    the output with the ReLU fused (inference), which is also ``max(out, 0)``."""
    from hypothesis import assume
    (top, bottom), (left, right) = pads
    assume(h + top + bottom >= (kh - 1) * dilation[0] + 1)
    assume(w + left + right >= (kw - 1) * dilation[1] + 1)
    case = _depthwise_case(seed, n, h, w, c, m, kh, kw, strides, dilation, pads, with_bias)
    fast, reference = _both(lambda: _depthwise_pass(*case))
    for name, a, b in zip(("out", "dx", "dkernel", "dbias", "relu(out)"), fast, reference):
        if b is None:
            assert a is None, name
            continue
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * np.abs(b).max(), err_msg=name)
    np.testing.assert_array_equal(fast[-1], np.maximum(fast[0], 0))


@settings(max_examples=120, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 2), h=st.integers(1, 12),
       w=st.integers(1, 14), extra=st.integers(0, 21), kh=st.integers(1, 3),
       kw=st.integers(1, 3), strides=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       pads=st.tuples(st.tuples(st.integers(-2, 2), st.integers(-2, 2)),
                      st.tuples(st.integers(-2, 2), st.integers(-2, 2))),
       relu=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]))
@example(seed=6, n=1, h=5, w=9, extra=0, kh=1, kw=3, strides=(1, 1), dilation=(1, 2),
         pads=((0, -2), (-2, 0)), relu=False,
         dtype=np.float64)                      # negative padding: the input gradient's crop
@example(seed=5, n=1, h=6, w=13, extra=3, kh=3, kw=3, strides=(1, 1), dilation=(1, 1),
         pads=((1, 1), (1, 1)), relu=True,
         dtype=np.float32)                      # a row's last block and last channels moved back
@example(seed=7, n=2, h=12, w=13, extra=5, kh=3, kw=3, strides=(2, 2), dilation=(1, 1),
         pads=((0, 1), (0, 1)), relu=True, dtype=np.float32)      # mobilenet's strided layers
@example(seed=8, n=1, h=7, w=14, extra=1, kh=3, kw=3, strides=(2, 1), dilation=(2, 1),
         pads=((2, -1), (1, 1)), relu=False, dtype=np.float64)    # kernel rows 2 apart, a crop
@example(seed=9, n=1, h=1, w=9, extra=0, kh=2, kw=3, strides=(1, 1), dilation=(2, 1),
         pads=((1, 1), (1, 1)), relu=True, dtype=np.float32)      # no kernel row on the image
def test_depthwise_register_blocks_equal_the_pixel_loops_bit_for_bit(seed, n, h, w, extra, kh,
                                                                     kw, strides, dilation, pads,
                                                                     relu, dtype):
    """``forward_blocks`` (vector sums in registers, one filter per channel, at least one
    64-byte vector of channels; any stride; 3-tap kernel rows a row at a time at strides 1
    and 2) against ``forward_pixels``: the same bits, NaN and
    signed zeros planted, the ReLU on and off; and it reads nothing outside the input (set in a
    buffer of NaN) nor writes outside the output (set in a fenced buffer)."""
    from hypothesis import assume

    from cnnlab.engine import depthwise_kernels as kernels
    (top, bottom), (left, right) = pads
    assume(h + top + bottom >= (kh - 1) * dilation[0] + 1)
    assume(w + left + right >= (kw - 1) * dilation[1] + 1)
    assume(top + h > 0 and left + w > 0)
    rng = np.random.default_rng(seed)
    c = kernels.VECTOR_BYTES // np.dtype(dtype).itemsize + extra
    x, _, _ = _fenced(rng, (n, h, w, c), dtype, np.nan)
    x[...] = rng.standard_normal(x.shape)
    x.reshape(-1)[rng.integers(0, x.size, 3)] = [np.nan, -0.0, 0.0]
    kernel = rng.standard_normal((kh, kw, c, 1)).astype(dtype)
    bias = rng.standard_normal(c).astype(dtype)
    out_hw = ((h + top + bottom - (kh - 1) * dilation[0] - 1) // strides[0] + 1,
              (w + left + right - (kw - 1) * dilation[1] - 1) // strides[1] + 1)
    expected = np.empty((n, *out_hw, c), dtype)
    kernels.forward_pixels(x, kernel, bias, strides, dilation, top, left, relu, expected)
    out, buffer, start = _fenced(rng, expected.shape, dtype, -7.0)
    kernels.forward_blocks(x, kernel, bias, strides, dilation, top, left, relu, out)
    assert (np.delete(buffer, np.arange(start, start + out.size)) == -7.0).all()
    assert np.array_equal(out.view(f"u{out.itemsize}"), expected.view(f"u{out.itemsize}"))


def test_depthwise_kernels_in_float32_within_rounding():
    """MobileNet's first depthwise layer (32 x 32 x 32, batch 16): the output and input gradient
    add 9 products each; the kernel gradient sums 16,384 products, in float32 along each
    image's 32 rows then float64 on the compiled path and in blocked float32 on the reference,
    so both are within float32's rounding."""
    case = _depthwise_case(2, 16, 32, 32, 32, 1, 3, 3, (1, 1), (1, 1), ((1, 1), (1, 1)), True)
    case32 = tuple(a.astype(np.float32) if isinstance(a, np.ndarray) else a for a in case)
    fast, reference = _both(lambda: _depthwise_pass(*case32))
    exact = _depthwise_pass(*case)
    for name, a, b, truth in zip(("out", "dx", "dkernel", "dbias", "relu(out)"), fast,
                                 reference, exact):
        assert a.dtype == np.float32, name
        for got in (a, b):
            np.testing.assert_allclose(got, truth, rtol=0, atol=2e-6 * np.abs(truth).max(),
                                       err_msg=name)


# --- max pooling: the compiled windows against the NumPy taps --------------------------------
def _max_pool_pass(x, pool, strides, pads, grad_out):
    from cnnlab.engine import pool as pool_ops
    out, cache = pool_ops.max_pool2d_forward(x, pool, strides, pads)
    inferred, _ = pool_ops.max_pool2d_forward(x, pool, strides, pads, keep_cache=False)
    return out, cache[0], inferred, pool_ops.max_pool2d_backward(grad_out, cache)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 3), h=st.integers(1, 11),
       w=st.integers(1, 11), c=st.integers(1, 19), kh=st.integers(1, 4), kw=st.integers(1, 4),
       strides=st.tuples(st.integers(1, 4), st.integers(1, 4)), pad=st.booleans(),
       ties=st.booleans(), nan=st.booleans())
@example(seed=0, n=1, h=4, w=4, c=3, kh=2, kw=2, strides=(2, 2), pad=False, ties=True, nan=True)
@example(seed=10306, n=2, h=8, w=8, c=10, kh=4, kw=1, strides=(1, 4), pad=False, ties=False,
         nan=True)      # up to 4 windows' gradients into one cell, cancelling to 8e-6
def test_max_pool_kernels_equal_the_reference_in_float64(seed, n, h, w, c, kh, kw, strides, pad,
                                                          ties, nan):
    """Windows that tile the image, overlap or leave gaps; 'same' padding (a padded cell never
    wins); ties (integer values: the first maximum wins); a NaN (the output is NaN, the winner
    stays): output, winners and inference output bit for bit; the gradient to 1e-12 of the
    largest incoming gradient (where windows overlap, a cell's gradients are summed in another
    order, and a sum that cancels keeps that rounding however small it ends)."""
    from hypothesis import assume

    from cnnlab.engine.shapes import output_hw
    pads = tuple(((k - 1) // 2, k // 2) for k in (kh, kw)) if pad else ((0, 0), (0, 0))
    assume(h + sum(pads[0]) >= kh and w + sum(pads[1]) >= kw)
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, (n, h, w, c)).astype(float) if ties else rng.standard_normal(
        (n, h, w, c))
    if nan:
        x[tuple(rng.integers(0, s) for s in x.shape)] = np.nan
    grad_out = rng.standard_normal((n, *output_hw((h, w), (kh, kw), strides, pads), c))
    fast, reference = _both(lambda: _max_pool_pass(x, (kh, kw), strides, pads, grad_out))
    for name, a, b in zip(("out", "winner", "inferred"), fast, reference):
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    np.testing.assert_allclose(fast[3], reference[3], rtol=1e-12,
                               atol=1e-12 * np.abs(grad_out).max(initial=0), err_msg="dx")


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 3), h=st.integers(1, 11),
       w=st.integers(1, 11), c=st.integers(1, 19), kh=st.integers(1, 4), kw=st.integers(1, 4),
       strides=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       pads=st.tuples(st.tuples(st.integers(0, 2), st.integers(0, 2)),
                      st.tuples(st.integers(0, 2), st.integers(0, 2))))
@example(seed=0, n=2, h=8, w=8, c=16, kh=3, kw=3, strides=(2, 2), dilation=(1, 1),
         pads=((0, 1), (0, 1)))                                  # ResNet's strided layers
def test_im2col_col2im_and_the_strided_input_gradient_equal_the_reference_in_float64(
        seed, n, h, w, c, kh, kw, strides, dilation, pads):
    """Windows that overlap (stride < kernel), tile or leave gaps (stride > kernel), dilated,
    padded unevenly: im2col copies (with and without the ones column of a folded bias) and the
    col2im gather adds each pixel's taps in the reference's order, so both equal the reference
    bit for bit; the strided convolution's input gradient built on them equals the per-tap
    products' to 1e-12."""
    from hypothesis import assume

    from cnnlab.engine import conv, windows
    from cnnlab.engine.shapes import output_hw
    assume(h + sum(pads[0]) >= (kh - 1) * dilation[0] + 1)
    assume(w + sum(pads[1]) >= (kw - 1) * dilation[1] + 1)
    rng = np.random.default_rng(seed)
    ho, wo = output_hw((h, w), (kh, kw), strides, pads, dilation)
    grad_windows = rng.standard_normal((n, ho, wo, kh, kw, c))
    fast, reference = _both(lambda: windows.col2im(grad_windows, (n, h, w, c), strides, pads,
                                                   dilation))
    np.testing.assert_array_equal(fast, reference)
    image = rng.standard_normal((n, h, w, c))
    for ones_column in (False, True):
        fast, reference = _both(lambda ones=ones_column: windows.im2col(
            image, (kh, kw), strides, pads, dilation, ones))
        np.testing.assert_array_equal(fast, reference)
    assume(strides != (1, 1))
    x, kernel = rng.standard_normal((n, h, w, c)), rng.standard_normal((kh, kw, c, 5))
    grad_out = rng.standard_normal((n, ho, wo, 5))

    def input_grad():
        _, cache = conv.conv2d_forward(x, kernel, None, strides, pads, dilation,
                                       algorithm="direct")
        return conv.conv2d_backward(grad_out, cache)[0]
    fast, reference = _both(input_grad)
    np.testing.assert_allclose(fast, reference, rtol=1e-12,
                               atol=1e-12 * np.abs(reference).max(initial=1))


def test_max_pool_gradient_finds_the_maximum_of_a_window_of_more_than_256_cells():
    """A 17 x 17 window has 289 taps: their index outgrew the byte it was kept in, and the
    gradient went to the wrong cell. Checked against the argmax of each window, on both paths."""
    from cnnlab.engine import pool as pool_ops
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 34, 17, 3))
    for kernels in ("numba", "numpy"):
        cnnlab.config.set_kernels(kernels)
        out, cache = pool_ops.max_pool2d_forward(x, (17, 17), (17, 17))
        dx = pool_ops.max_pool2d_backward(np.ones_like(out), cache)
        for n, oy, c in np.ndindex(2, 2, 3):
            window = x[n, oy * 17:(oy + 1) * 17, :, c]
            expected = np.zeros_like(window)
            expected[np.unravel_index(window.argmax(), window.shape)] = 1
            np.testing.assert_array_equal(dx[n, oy * 17:(oy + 1) * 17, :, c], expected,
                                          err_msg=kernels)


# --- optimizer updates: one pass against the reference's pass per term ----------------------
def _update_case(rule, dtype, size, seed, decay, clip, scale, flags):
    """Three steps of one update rule from the same start; the parameter and slots after each."""
    import math

    from cnnlab.engine import updates
    rng = np.random.default_rng(seed)
    param = rng.standard_normal(size).astype(dtype)
    slots = [np.abs(rng.standard_normal(size)).astype(dtype) for _ in range(3)]
    grads = [rng.standard_normal(size).astype(dtype) * 3 for _ in range(3)]
    if size > 2:
        grads[1][2] = np.nan                                         # NaN must go through
    common = {"decay": decay, "clip": clip if clip else math.inf, "scale": scale}
    states = []
    for step, grad in enumerate(grads):
        if rule == "sgd":
            updates.sgd(param, grad, slots[0] if flags[0] else None, lr=0.1,
                        momentum=0.9 if flags[0] else 0.0, nesterov=flags[0] and flags[1],
                        first_step=step == 0, **common)
        elif rule == "adam":
            updates.adam(param, grad, slots[0], slots[1], step_size=0.01 / (1 - 0.9 ** (step + 1)),
                         beta_1=0.9, beta_2=0.999, bias_root=math.sqrt(1 - 0.999 ** (step + 1)),
                         epsilon=1e-7, **common)
        else:
            updates.rmsprop(param, grad, slots[0], slots[1] if flags[1] else None,
                            slots[2] if flags[0] else None, lr=0.01, rho=0.9,
                            momentum=0.5 if flags[0] else 0.0, epsilon=1e-7, **common)
        states.append([param.copy(), *(s.copy() for s in slots)])
    return states


@settings(max_examples=60, deadline=None)
@given(rule=st.sampled_from(["sgd", "adam", "rmsprop"]),
       dtype=st.sampled_from([np.float32, np.float64]), size=st.integers(1, 70),
       seed=st.integers(0, 2**31 - 1), decay=st.sampled_from([0.0, 1e-3]),
       clip=st.sampled_from([None, 0.5]), scale=st.sampled_from([1.0, 0.3]),
       flags=st.tuples(st.booleans(), st.booleans()))
def test_update_kernels_equal_the_reference_bit_for_bit(rule, dtype, size, seed, decay, clip,
                                                        scale, flags):
    """Each rule with weight decay, clipping, a clip-norm scale, momentum, Nesterov and
    centering on and off, in float32 and float64, on sizes no SIMD width divides, a NaN in the
    gradient included: the same operations in the same order, so the same bits (float32 too:
    every scalar is in the parameter's dtype on both paths)."""
    with np.errstate(invalid="ignore"):                              # the NaN's sqrt
        fast, reference = _both(lambda: _update_case(rule, dtype, size, seed, decay, clip,
                                                     scale, flags))
    for step, (a_state, b_state) in enumerate(zip(fast, reference)):
        for name, a, b in zip(("param", "slot0", "slot1", "slot2"), a_state, b_state):
            assert a.dtype == dtype
            np.testing.assert_array_equal(a, b, err_msg=f"{rule} step {step} {name}")


@pytest.mark.parametrize("rule", ["sgd", "adam", "rmsprop"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_update_slots_that_would_be_subnormal_are_stored_as_zero(rule, dtype):
    """A slot whose gradients have stopped decays through the subnormals, where x86 arithmetic
    is ~10-100x slower (``updates``' docstring): such a value is stored as +0, on both paths
    alike, and a slot that stays normal keeps its plain value."""
    from cnnlab.engine import updates
    tiny = np.finfo(dtype).tiny
    start = np.array([tiny, -tiny, 1.05 * tiny, 4 * tiny, -4 * tiny, 0.5], dtype)

    def step():
        param, grad = np.ones(6, dtype), np.zeros(6, dtype)
        slots = [start.copy(), np.abs(start), start.copy()]
        if rule == "sgd":
            updates.sgd(param, grad, slots[0], lr=0.1, momentum=0.9)
        elif rule == "adam":
            updates.adam(param, grad, slots[0], slots[1], step_size=0.1, beta_1=0.9,
                         beta_2=0.999, bias_root=1.0, epsilon=1e-7)
        else:
            updates.rmsprop(param, grad, slots[1], slots[0], slots[2], lr=0.1, rho=0.9,
                            momentum=0.9, epsilon=1e-7)
        return [param, *slots]

    fast, reference = _both(step)
    for a, b in zip(fast, reference, strict=True):
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))      # bit for bit
    for slot in fast[1:]:
        assert not ((slot != 0) & (np.abs(slot) < tiny)).any(), slot
    assert fast[1][3] == dtype(4 * tiny) * dtype(0.9)            # normal: the plain product
    assert fast[1][0] == 0 and not np.signbit(fast[1][1])         # subnormal: +0


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=4),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**31 - 1))
def test_merge_kernel_and_its_gradient_equal_the_reference_bit_for_bit(shape, dtype, seed):
    """ResNet's join, ``max(a + b, 0)``, and its gradient (the compiled ReLU gradient,
    ``activations_kernels``), on sizes no SIMD width divides, with NaN, infinities and signed
    zeros planted: the same bits on both paths (a NaN sum stays NaN, a sum of -0 is +0, a
    masked negative gradient is -0)."""
    from cnnlab.engine import merge
    rng = np.random.default_rng(seed)
    a, b, dy = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
    specials = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0], dtype)
    for array in (a, b, dy):
        flat = array.reshape(-1)
        flat[rng.integers(0, flat.size, 2)] = rng.choice(specials, 2)
    def join_and_back():
        out, cache = merge.add_forward([a, b], relu=True)
        return out, merge.add_backward(dy, cache)

    with np.errstate(invalid="ignore"):
        fast, reference = _both(join_and_back)
    assert fast[0].dtype == dtype and fast[1][0].dtype == dtype
    for x, y in ((fast[0], reference[0]), (fast[1][0], reference[1][0]),
                 (fast[1][1], reference[1][1])):
        assert np.array_equal(x.view(f"u{x.itemsize}"), y.view(f"u{y.itemsize}"))   # bits


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_bias_relu_epilogue_equals_the_references_two_passes_bit_for_bit(dtype, monkeypatch):
    """``dense.add_bias`` with a ReLU (the epilogue of a GEMM the compiled one does not take:
    fewer than one vector of columns, a float16 output): one compiled pass, bit for bit the
    reference's ``out += bias`` then ``np.maximum(out, 0)``, with NaN, infinities and signed
    zeros among the values and the bias; and the switch takes each path."""
    from cnnlab.engine import dense
    rng = np.random.default_rng(1)
    specials = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0], dtype)
    out = rng.standard_normal((3, 5, 7, 11)).astype(dtype)
    bias = rng.standard_normal(11).astype(dtype)
    out.reshape(-1)[rng.integers(0, out.size, 12)] = rng.choice(specials, 12)
    bias[:5] = specials

    def epilogue():
        result = out.copy()
        dense.add_bias(result, bias, relu=True)
        return result

    with np.errstate(invalid="ignore"):
        fast, reference = _both(epilogue)
    assert fast.dtype == dtype and np.isnan(fast).any() and (fast == np.inf).any()
    assert np.array_equal(fast.view(f"u{fast.itemsize}"),
                          reference.view(f"u{reference.itemsize}"))       # bits
    calls = []
    cnnlab.config.set_kernels("numba")
    kernels = compiled.module("activations_kernels")
    monkeypatch.setattr(kernels, "bias_relu", lambda *args: calls.append(args))
    dense.add_bias(out.copy(), bias, relu=True)
    cnnlab.config.set_kernels("numpy")
    dense.add_bias(out.copy(), bias, relu=True)
    assert len(calls) == 1


def _counting(monkeypatch, module: str, name: str) -> list:
    """The compiled kernel ``module.name`` wrapped so that each call is recorded in the list
    returned (and still runs); kernels switched on."""
    cnnlab.config.set_kernels("numba")
    kernels = compiled.module(module)
    calls, real = [], getattr(kernels, name)
    monkeypatch.setattr(kernels, name, lambda *args: calls.append(args) or real(*args))
    return calls


def _fenced_copy(rng, values):
    """``values`` copied into a buffer of NaN (:func:`_fenced`)."""
    copy, _, _ = _fenced(rng, values.shape, values.dtype, np.nan)
    copy[...] = values
    return copy


def _fenced(rng, shape, dtype, fence):
    """A C-contiguous array of ``shape`` inside a flat buffer whose other cells hold ``fence``:
    a kernel that reads past its edges takes a NaN in, one that writes past them changes the
    fence."""
    size = int(np.prod(shape))
    buffer = np.full(size + 64, fence, dtype)
    start = int(rng.integers(1, 33))
    view = buffer[start:start + size].reshape(shape)
    return view, buffer, start


@settings(max_examples=60, deadline=None)
@given(rows=st.one_of(st.integers(1, 40), st.integers(256, 300)), depth=st.integers(1, 70),
       features=st.integers(1, 70),
       has_bias=st.booleans(), relu=st.booleans(), seed=st.integers(0, 2**31 - 1))
@example(rows=256, depth=1, features=8, has_bias=True, relu=True, seed=0)    # whole blocks
@example(rows=259, depth=27, features=17, has_bias=False, relu=False, seed=1)  # both edges moved
def test_the_compiled_linear_equals_the_reference_in_float64(rows, depth, features, has_bias,
                                                               relu, seed):
    """``dense.linear``, the GEMM and its epilogue, on any shape (odd ones, that neither the
    block's rows nor a vector's lanes divide; too few rows or columns, which the reference
    takes): the compiled kernel equals BLAS's product and the reference epilogue to 1e-12 of
    the sum's terms, and never reads or writes outside its arrays (each sits in a buffer of
    NaN, and its output's fence stays as it was)."""
    from cnnlab.engine import dense
    rng = np.random.default_rng(seed)
    a, _, _ = _fenced(rng, (rows, depth), np.float64, np.nan)
    b, _, _ = _fenced(rng, (depth, features), np.float64, np.nan)
    a[...] = rng.standard_normal((rows, depth))
    b[...] = rng.standard_normal((depth, features))
    bias = rng.standard_normal(features) if has_bias else None

    def run():
        out, buffer, start = _fenced(rng, (rows, features), np.float64, -7.0)
        dense.linear(a, b, bias, relu, out)
        fence = np.delete(buffer, np.arange(start, start + out.size))
        assert (fence == -7.0).all(), "written outside the output"
        return out.copy()

    fast, reference = _both(run)
    assert not np.isnan(fast).any(), "read outside an input"
    scale = np.abs(a) @ np.abs(b) + (np.abs(bias) if has_bias else 0)
    assert (np.abs(fast - reference) <= 1e-12 * scale).all()
    expected = a @ b + (bias if has_bias else 0)
    np.testing.assert_allclose(fast, np.maximum(expected, 0) if relu else expected,
                               rtol=0, atol=1e-12 * scale.max())


@pytest.mark.parametrize("shape", [(256, 5, 16), (500, 27, 16), (371, 144, 40), (300, 64, 128)])
def test_the_compiled_linear_in_float32_within_the_rounding_of_its_sums(shape):
    """float32: within K units of rounding of the sum of the terms' sizes (the reduction
    length's bound), against float64; the bias and the ReLU's NaN and signed zero as the
    reference gives them."""
    from cnnlab.engine import dense
    rows, depth, features = shape
    rng = np.random.default_rng(depth)
    a = rng.standard_normal((rows, depth)).astype(np.float32)
    b = rng.standard_normal((depth, features)).astype(np.float32)
    bias = rng.standard_normal(features).astype(np.float32)
    a[0, 0], bias[1], bias[2] = np.nan, -np.inf, 0.0
    b[:, 2] = -0.0                                          # column 2: sums of -0, bias +0

    def run(relu):
        out = np.empty((rows, features), np.float32)
        with np.errstate(invalid="ignore"):
            return dense.linear(a, b, bias, relu, out)

    for relu in (False, True):
        fast, reference = _both(lambda relu=relu: run(relu))
        assert np.array_equal(np.isnan(fast), np.isnan(reference))
        assert np.array_equal(np.signbit(fast[:, 2]), np.signbit(reference[:, 2]))
        assert np.isnan(fast[0]).all()                                # row 0 read the NaN
        finite = np.isfinite(reference)
        exact = a.astype(np.float64) @ b + bias
        scale = np.abs(a.astype(np.float64)) @ np.abs(b) + np.abs(bias)
        bound = (depth + 2) * np.finfo(np.float32).eps * scale
        exact = np.maximum(exact, 0) if relu else exact
        assert (np.abs(fast - exact)[finite] <= bound[finite]).all()
        assert np.array_equal(fast[~finite], reference[~finite], equal_nan=True)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 2), h=st.integers(1, 12),
       w=st.integers(1, 14), c=st.integers(1, 4), extra=st.integers(0, 20),
       kh=st.integers(1, 5), kw=st.integers(1, 5),
       strides=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       pads=st.tuples(st.tuples(st.integers(0, 2), st.integers(0, 2)),
                      st.tuples(st.integers(0, 2), st.integers(0, 2))),
       has_bias=st.booleans(), relu=st.booleans())
@example(seed=1, n=2, h=32, w=32, c=3, extra=8, kh=3, kw=3, strides=(1, 1), dilation=(1, 1),
         pads=((1, 1), (1, 1)), has_bias=True, relu=True)           # an RGB stem
@example(seed=2, n=1, h=5, w=13, c=1, extra=0, kh=5, kw=5, strides=(1, 1), dilation=(1, 1),
         pads=((0, 0), (0, 0)), has_bias=False, relu=False)         # a row of one block
def test_the_implicit_gemm_convolution_kernels_equal_the_reference_in_float64(
        seed, n, h, w, c, extra, kh, kw, strides, dilation, pads, has_bias, relu):
    """``conv_kernels.implicit_gemm`` (the inference path of convolutions with few channels)
    on any stride, dilation, padding and odd size, against the reference (im2col and BLAS) to
    1e-12 of the sum's terms; the input in a buffer of NaN, the output fenced: it reads and
    writes nothing outside them, its side pixels one by one included."""
    from hypothesis import assume

    from cnnlab.engine import conv, dense_kernels
    from cnnlab.engine import conv_kernels as kernels
    from cnnlab.engine.shapes import output_hw
    (top, bottom), (left, right) = pads
    assume(h + top + bottom >= (kh - 1) * dilation[0] + 1)
    assume(w + left + right >= (kw - 1) * dilation[1] + 1)
    rng = np.random.default_rng(seed)
    f = 8 + extra
    x, _, _ = _fenced(rng, (n, h, w, c), np.float64, np.nan)
    x[...] = rng.standard_normal(x.shape)
    kernel = rng.standard_normal((kh, kw, c, f))
    bias = rng.standard_normal(f)
    cnnlab.config.set_kernels("numpy")
    reference, _ = conv.conv2d_forward(x, kernel, bias if has_bias else None, strides, pads,
                                       dilation, algorithm="direct", relu=relu)
    out, buffer, start = _fenced(rng, (n, *output_hw((h, w), (kh, kw), strides, pads,
                                                     dilation), f), np.float64, -7.0)
    kernels.implicit_gemm(x, dense_kernels.pack(kernel.reshape(-1, f)), kh, kw, bias, has_bias,
                          relu, strides, dilation, top, left, out)
    assert (np.delete(buffer, np.arange(start, start + out.size)) == -7.0).all()
    assert not np.isnan(out).any(), "read outside the input"
    scale = conv.conv2d_forward(np.abs(x), np.abs(kernel), np.abs(bias) if has_bias else None,
                                strides, pads, dilation, algorithm="direct")[0]
    assert (np.abs(out - reference) <= 1e-12 * scale).all()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 2), h=st.integers(1, 12),
       w=st.integers(1, 14), c=st.integers(1, 4), extra=st.integers(0, 20),
       kh=st.integers(1, 5), kw=st.integers(1, 5),
       strides=st.tuples(st.integers(1, 3), st.integers(1, 3)), dilation_h=st.integers(1, 2),
       top_bottom=st.tuples(st.integers(0, 2), st.integers(0, 2)))
@example(seed=1, n=2, h=28, w=28, c=1, extra=24, kh=5, kw=5, strides=(1, 1), dilation_h=1,
         top_bottom=(0, 0))                                           # the article's conv1
@example(seed=2, n=1, h=3, w=7, c=3, extra=0, kh=3, kw=3, strides=(1, 2), dilation_h=1,
         top_bottom=(1, 1))                                           # one output column block
def test_the_implicit_kernel_gradient_kernels_equal_the_reference_in_float64(
        seed, n, h, w, c, extra, kh, kw, strides, dilation_h, top_bottom):
    """``conv_kernels.implicit_kernel_grad`` (the kernel gradient of a convolution that trained
    by the implicit GEMM) on any stride, height dilation and padding, F from 8 to 28 (whole
    vectors of float64 or not), against the reference (im2col, then ``cols^T @ grad_out``) to
    1e-12 of the sum's terms. Its inputs sit in buffers of NaN and its sums inside a fence: it
    reads and writes nothing outside them. ``x`` comes as ``conv.kernel_grad_input`` pads it
    for the taps past a kernel row's last block."""
    from hypothesis import assume

    from cnnlab.engine import conv
    from cnnlab.engine import conv_kernels as kernels
    from cnnlab.engine.shapes import output_hw
    top, bottom = top_bottom
    pads = ((top, bottom), (0, 0))
    assume(h + top + bottom >= (kh - 1) * dilation_h + 1 and w >= kw)
    rng = np.random.default_rng(seed)
    f = 8 + extra
    x = rng.standard_normal((n, h, w, c))
    kernel = rng.standard_normal((kh, kw, c, f))
    out_shape = (n, *output_hw((h, w), (kh, kw), strides, pads, (dilation_h, 1)), f)
    grad_out, _, _ = _fenced(rng, out_shape, np.float64, np.nan)
    grad_out[...] = rng.standard_normal(out_shape)
    cnnlab.config.set_kernels("numpy")

    def reference(x, grad_out):
        _, cache = conv.conv2d_forward(x, kernel, None, strides, pads, (dilation_h, 1),
                                       algorithm="direct")
        return conv.conv2d_backward(grad_out, cache, need_input_grad=False)[1]
    cnnlab.config.set_kernels("numba")
    wide = _fenced_copy(rng, conv.kernel_grad_input(x, kw, pads))
    run, blocks = kernels.taps_padded(kw, c), -(-f // 8)
    sums, buffer, start = _fenced(rng, (kh * run, blocks * 8), np.float64, -7.0)
    sums[...] = 0
    kernels.implicit_kernel_grad(wide, grad_out, kh, kw, strides, dilation_h, top, sums)
    assert (np.delete(buffer, np.arange(start, start + sums.size)) == -7.0).all()
    assert not np.isnan(sums).any(), "read outside the input or the output gradient"
    fast = conv._implicit_kernel_grad(x, grad_out, kernel, strides, pads, (dilation_h, 1))
    assert np.array_equal(fast.reshape(-1, f)[:, :8],
                          sums.reshape(kh, run, -1)[:, :kw * c, :8].reshape(-1, 8))
    scale = reference(np.abs(x), np.abs(grad_out))
    assert (np.abs(fast - reference(x, grad_out)) <= 1e-12 * scale).all()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 2), h=st.integers(2, 12),
       w=st.integers(2, 14), c=st.integers(1, 4), extra=st.integers(0, 20),
       kh=st.integers(1, 4), kw=st.integers(1, 4),
       strides=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       pads=st.tuples(st.tuples(st.integers(0, 1), st.integers(0, 1)),
                      st.tuples(st.integers(0, 1), st.integers(0, 1))),
       pool=st.one_of(st.just((2, 2)), st.tuples(st.integers(1, 3), st.integers(1, 3))),
       has_bias=st.booleans(), relu=st.booleans(), ties=st.booleans())
@example(seed=1, n=2, h=28, w=28, c=1, extra=24, kh=5, kw=5, strides=(1, 1),
         pads=((0, 0), (0, 0)), pool=(2, 2), has_bias=True, relu=False, ties=False)  # article
@example(seed=2, n=1, h=25, w=25, c=1, extra=16, kh=3, kw=3, strides=(1, 1),
         pads=((0, 0), (0, 0)), pool=(2, 2), has_bias=True, relu=True, ties=True)  # face_net
def test_the_pooled_implicit_gemm_and_its_kernel_gradient_equal_the_reference_in_float64(
        seed, n, h, w, c, extra, kh, kw, strides, pads, pool, has_bias, relu, ties):
    """``conv_kernels.implicit_gemm_pooled`` (a convolution of few channels and the 2x2 max
    pooling of its output, in one pass) and ``implicit_kernel_grad_pooled`` (its kernel
    gradient from the pooling's, for any pool whose windows tile), on any stride, padding and
    odd size (rows and columns no window reads included), F from 8 to 28: the pooled values
    to 1e-12 of the sum's terms of the reference (im2col and BLAS, then
    ``max_pool2d_forward``'s NumPy passes), its winners those of the compiled convolution's
    output pooled apart (the same sums, so the same ties: with ``ties``, integer inputs make
    many), and the kernel gradient to 1e-12 of the reference's (the pooling's backward, then
    ``cols^T @ grad_out``). Inputs sit in buffers of NaN and outputs inside fences: nothing
    outside them is read or written."""
    from hypothesis import assume

    from cnnlab.engine import conv, dense_kernels, pool_kernels
    from cnnlab.engine import conv_kernels as kernels
    from cnnlab.engine import pool as pooling
    from cnnlab.engine.shapes import output_hw
    (top, bottom), (left, right) = pads
    assume(h + top + bottom >= kh and w + left + right >= kw)
    ho, wo = output_hw((h, w), (kh, kw), strides, pads, (1, 1))
    assume(ho >= pool[0] and wo >= pool[1])
    rng = np.random.default_rng(seed)
    f = 8 + extra

    def values(shape):
        return rng.integers(-2, 3, shape).astype(float) if ties else rng.standard_normal(shape)
    x, _, _ = _fenced(rng, (n, h, w, c), np.float64, np.nan)
    x[...] = values(x.shape)
    kernel, bias = values((kh, kw, c, f)), values(f)
    wide = conv.widened(x, pads[1])                             # as conv.py hands it over
    panels = dense_kernels.pack(kernel.reshape(-1, f))
    shape = (n, ho // pool[0], wo // pool[1], f)
    plain = np.empty((n, ho, wo, f))                   # the compiled convolution, pooled apart
    kernels.implicit_gemm(wide, panels, kh, kw, bias, has_bias, False, strides, (1, 1), top, 0,
                          plain)
    apart, winner = np.empty(shape), np.empty(shape, np.uint8)
    pool_kernels.max_pool(plain, *pool, *pool, 0, 0, apart, winner, True)
    out = apart
    if pool == (2, 2):
        out, out_buffer, out_start = _fenced(rng, shape, np.float64, -7.0)
        fused_winner = np.full(shape, 99, np.uint8)
        kernels.implicit_gemm_pooled(wide, panels, kh, kw, bias, has_bias, relu, strides,
                                     (1, 1), top, 0, np.full((2, wo, f), np.nan), out,
                                     fused_winner, True)
        assert (np.delete(out_buffer, np.arange(out_start, out_start + out.size)) == -7.0).all()
        assert not np.isnan(out).any(), "read outside the input"
        np.testing.assert_array_equal(fused_winner, winner)
        np.testing.assert_array_equal(out, np.maximum(apart, 0) if relu else apart)
    elif relu:
        out = np.maximum(apart, 0)
    cnnlab.config.set_kernels("numba")
    wide_for_grad = _fenced_copy(rng, conv.kernel_grad_input(x, kw, pads))

    cnnlab.config.set_kernels("numpy")

    def reference(x, kernel, bias, grad_pooled=None):
        conv_out, cache = conv.conv2d_forward(x, kernel, bias if has_bias else None, strides,
                                              pads, algorithm="direct")
        pooled, pool_cache = pooling.max_pool2d_forward(conv_out, pool, pool)
        if grad_pooled is None:
            return pooled
        pool_cache = pool_cache._replace(winner=winner)       # the same windows' winners
        grad_out = pooling.max_pool2d_backward(grad_pooled, pool_cache)
        return conv.conv2d_backward(grad_out, cache, need_input_grad=False)[1]
    scale = reference(np.abs(x), np.abs(kernel), np.abs(bias))
    expected = reference(x, kernel, bias)
    expected = np.maximum(expected, 0) if relu else expected
    assert (np.abs(out - expected) <= 1e-12 * scale).all()

    grad_pooled, _, _ = _fenced(rng, shape, np.float64, np.nan)
    grad_pooled[...] = rng.standard_normal(shape)
    run, blocks = kernels.taps_padded(kw, c), -(-f // 8)
    sums, sums_buffer, sums_start = _fenced(rng, (kh * run, blocks * 8), np.float64, -7.0)
    sums[...] = 0
    kernels.implicit_kernel_grad_pooled(wide_for_grad, grad_pooled, winner, pool[1], kh, kw,
                                        strides, 1, top, np.full((pool[0], wo, f), np.nan), sums)
    assert (np.delete(sums_buffer, np.arange(sums_start, sums_start + sums.size)) == -7.0).all()
    assert not np.isnan(sums).any(), "read outside the input or the gradient"
    cnnlab.config.set_kernels("numba")
    fast = conv._implicit_kernel_grad(x, grad_pooled, kernel, strides, pads, (1, 1),
                                      pooling.MaxPoolCache(winner, (n, ho, wo, f), pool, pool,
                                                           ((0, 0), (0, 0)), None))
    assert np.array_equal(fast.reshape(-1, f)[:, :8],
                          sums.reshape(kh, run, -1)[:, :kw * c, :8].reshape(-1, 8))
    cnnlab.config.set_kernels("numpy")
    exact = reference(x, kernel, bias, grad_pooled)
    bound = reference(np.abs(x), np.abs(kernel), np.abs(bias), np.abs(grad_pooled))
    assert (np.abs(fast - exact) <= 1e-12 * bound).all()


def test_the_pooled_implicit_gemm_takes_its_relu_as_np_maximum_does(monkeypatch):
    """At inference the one-pass conv + 2x2 pool runs the ReLU after the pooling: a window
    whose maximum is -inf gives +0, one with a NaN stays NaN, as ``np.maximum(., 0)`` after
    the unfused conv and pool gives them (the reference path)."""
    from cnnlab.engine import conv, pool
    calls = _counting(monkeypatch, "conv_kernels", "implicit_gemm_pooled")
    x = np.full((1, 4, 6, 1), -np.inf)
    x[0, 0, 2] = np.nan                            # the second window
    x[0, :2, 4:, 0] = [[-3.0, -1.0], [-2.0, 5.0]]  # the third: finite, one positive
    kernel = np.arange(1.0, 9.0).reshape(1, 1, 1, 8)
    fused, _ = conv.conv2d_forward(x, kernel, None, gradients="none", relu=True, max_pool=(2, 2))
    assert len(calls) == 1
    cnnlab.config.set_kernels("numpy")
    apart, _ = conv.conv2d_forward(x, kernel, None, gradients="none")
    expected = np.maximum(pool.max_pool2d_forward(apart, (2, 2), (2, 2))[0], 0)
    np.testing.assert_array_equal(fused, expected)
    assert (fused[0, 0, 0] == 0).all() and not np.signbit(fused[0, 0, 0]).any()
    assert np.isnan(fused[0, 0, 1]).all() and (fused[0, 0, 2] == 5 * kernel[0, 0, 0]).all()


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 3), h=st.integers(1, 14),
       w=st.integers(1, 14), c=st.integers(8, 20), f=st.integers(8, 20),
       pads=st.tuples(*[st.tuples(st.integers(0, 4), st.integers(0, 4))] * 2),
       has_residual=st.booleans(), relu=st.booleans(), keep=st.booleans(),
       taps=st.sampled_from([3, 5]))
@example(seed=0, n=1, h=4, w=4, c=8, f=8, pads=((1, 1), (1, 1)), has_residual=True,
         relu=True, keep=True, taps=3)                         # one tile, whole vectors
@example(seed=0, n=2, h=12, w=12, c=16, f=8, pads=((0, 0), (0, 0)), has_residual=False,
         relu=True, keep=True, taps=5)                         # the article's conv2, smaller
def test_the_one_pass_winograd_kernels_equal_the_reference_in_float64(
        seed, n, h, w, c, f, pads, has_residual, relu, keep, taps):
    """``winograd_fused_kernels.conv3x3`` and ``conv5x5`` on odd sizes (tiles hanging over
    the output's edges, blocks partly filled, channel and filter counts that a vector does
    not divide), padding 0-4 on each side, with and without the residual, the ReLU and V
    copied out: equal to the reference (im2col and BLAS, the residual's Add and ReLU after it;
    V by ``winograd.input_transform_reference``) to 1e-12 of the largest sum of its terms; the
    input in a buffer of NaN, the output and V fenced."""
    from hypothesis import assume

    from cnnlab.engine import conv, winograd
    from cnnlab.engine import winograd_fused_kernels as kernels
    (top, bottom), (left, right) = pads
    assume(h + top + bottom >= taps and w + left + right >= taps)
    rng = np.random.default_rng(seed)
    x, _, _ = _fenced(rng, (n, h, w, c), np.float64, np.nan)
    x[...] = rng.standard_normal(x.shape)
    kernel, bias = rng.standard_normal((taps, taps, c, f)), rng.standard_normal(f)
    out_hw = (h + top + bottom - taps + 1, w + left + right - taps + 1)
    tiling = kernels.TILINGS[taps]
    residual = rng.standard_normal((n, *out_hw, f))
    cnnlab.config.set_kernels("numpy")
    reference, _ = conv.conv2d_forward(x, kernel, bias, (1, 1), pads, algorithm="direct")
    if has_residual:
        reference = reference + residual
    if relu:
        reference = np.maximum(reference, 0)
    out, buffer, start = _fenced(rng, (n, *out_hw, f), np.float64, -7.0)
    tiles_hw = winograd.tile_counts(out_hw, 4)
    v, v_buffer, v_start = _fenced(rng, (tiling.alpha ** 2, n * tiles_hw[0] * tiles_hw[1], c),
                                   np.float64, -7.0)
    convolve = kernels.conv3x3 if taps == 3 else kernels.conv5x5
    convolve(x, top, left, kernels.pack_kernel(kernel, tiling), bias,
             residual if has_residual else out,
             has_residual, relu, out, kernels.block_tiles(c, f, 8, taps),
             (v if keep else out).reshape(-1), keep)
    assert (np.delete(buffer, np.arange(start, start + out.size)) == -7.0).all()
    assert (np.delete(v_buffer, np.arange(v_start, v_start + v.size)) == -7.0).all()
    assert not np.isnan(out).any(), "read outside the input, or an output not written"
    if keep:
        expected = winograd.input_transform_reference(x, pads, tiles_hw, tiling)
        np.testing.assert_allclose(v, expected, rtol=0, atol=1e-12 * np.abs(expected).max())
    else:
        assert (v == -7.0).all()
    scale = conv.conv2d_forward(np.abs(x), np.abs(kernel), np.abs(bias), (1, 1), pads,
                                algorithm="direct")[0].max() + np.abs(residual).max()
    np.testing.assert_allclose(out, reference, rtol=0, atol=1e-12 * scale)


@pytest.mark.parametrize("taps, c, f", [(3, 16, 16), (3, 8, 21), (5, 9, 40), (5, 32, 64)])
def test_the_one_pass_winograds_packed_kernel_is_u_packed_point_by_point(taps, c, f):
    """``pack_kernel`` lays the kernel's columns out as panels before the transform; each
    point's row equals ``dense_kernels.pack`` of that point's U (``kernel_transform``), float64
    to rounding."""
    from cnnlab.engine import dense_kernels, winograd
    from cnnlab.engine import winograd_fused_kernels as kernels
    tiling = kernels.TILINGS[taps]
    kernel = np.random.default_rng(taps * c).standard_normal((taps, taps, c, f))
    packed = kernels.pack_kernel(kernel, tiling)
    u = winograd.kernel_transform(kernel, tiling)
    assert packed.shape[0] == tiling.alpha ** 2
    for point in range(tiling.alpha ** 2):
        np.testing.assert_allclose(packed[point], dense_kernels.pack(u[point]), rtol=0,
                                   atol=1e-14 * np.abs(u).max())


def test_the_one_pass_winograd_in_float32_within_rounding():
    """ResNet-20's first stage (batch 8, 32 x 32 x 16 -> 16, its shortcut and ReLU) against
    float64: F(4x4)'s float32 error, a few units of rounding of the largest output (as the
    three-pass path's, ``test_winograd_kernels_in_float32_within_rounding``)."""
    from cnnlab.engine import conv, winograd
    from cnnlab.engine import winograd_fused_kernels as kernels
    rng = np.random.default_rng(4)
    x, kernel = rng.standard_normal((8, 32, 32, 16)), rng.standard_normal((3, 3, 16, 16)) / 12
    bias, residual = rng.standard_normal(16), rng.standard_normal((8, 32, 32, 16))
    pads = ((1, 1), (1, 1))
    exact = np.maximum(conv.conv2d_forward(x, kernel, bias, (1, 1), pads,
                                           algorithm="direct")[0] + residual, 0)
    single = [a.astype(np.float32) for a in (x, kernel, bias, residual)]
    out = np.empty((8, 32, 32, 16), np.float32)
    kernels.conv3x3(single[0], 1, 1, kernels.pack_kernel(single[1], winograd.F4), single[2],
                    single[3], True, True, out,
        kernels.block_tiles(16, 16, 4), out.reshape(-1), False)
    np.testing.assert_allclose(out, exact, rtol=0,
                               atol=64 * np.finfo(np.float32).eps * np.abs(exact).max())


@pytest.mark.parametrize("gradients, c, f, calls_expected", [
    ("none", 16, 16, 1), ("input", 16, 16, 1), ("all", 16, 16, 3), ("kernel", 16, 16, 3),
    ("none", 15, 16, 0), ("none", 16, 15, 0)])
def test_winograd_takes_one_pass_where_its_vectors_fit(monkeypatch, gradients, c, f,
                                                       calls_expected):
    """The switch: a Winograd convolution whose channels and filters fill a vector or more
    (float32: 16) takes the one-pass kernel, in one call where no V is kept (inference, the
    input gradient's), piece by piece, copying V out, where a kernel gradient follows (a
    cache budget small enough for 3 pieces); the rest take the three passes. Either way the
    output, and the kernel gradient from the kept V, equal PyTorch's in float64 to float32's
    rounding."""
    import torch

    from cnnlab.engine import conv
    monkeypatch.setattr(conv, "WINOGRAD_CACHE_BYTES", 36 * 9 * (c + f) * 4)  # one image
    calls = _counting(monkeypatch, "winograd_fused_kernels", "conv3x3")
    rng = np.random.default_rng(c * f)
    x = rng.standard_normal((3, 10, 9, c)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, c, f)).astype(np.float32)
    out, cache = conv.conv2d_forward(x, kernel, None, (1, 1), ((1, 1), (1, 1)),
                                     algorithm="winograd", gradients=gradients)
    assert len(calls) == calls_expected
    xt = torch.tensor(x.astype(np.float64)).permute(0, 3, 1, 2)
    kt = torch.tensor(kernel.astype(np.float64)).permute(3, 2, 0, 1).requires_grad_()
    expected = torch.nn.functional.conv2d(xt, kt, padding=1)
    np.testing.assert_allclose(out, expected.permute(0, 2, 3, 1).detach().numpy(), rtol=0,
                               atol=1e-5 * expected.abs().max().item())
    if gradients in ("all", "kernel"):
        grad_out = rng.standard_normal(out.shape).astype(np.float32)
        grad_kernel = conv.conv2d_backward(grad_out, cache, need_input_grad=False)[1]
        (expected * torch.tensor(grad_out.astype(np.float64)).permute(0, 3, 1, 2)).sum() \
            .backward()
        torch_grad = kt.grad.permute(2, 3, 1, 0).numpy()
        np.testing.assert_allclose(grad_kernel, torch_grad, rtol=0,
                                   atol=1e-5 * np.abs(torch_grad).max())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cache_bytes, n, size, pad", [
    (None, 3, 12, 0), (64 * 9 * 48 * 8, 5, 13, 2), (64 * 3 * 48 * 8, 2, 14, 1)])
def test_a_5x5_training_step_by_one_pass_winograd_equals_pytorch(monkeypatch, dtype,
                                                                 cache_bytes, n, size, pad):
    """F(4x4, 5x5) in training: the forward pass by one-pass Winograd, copying V out, the
    kernel gradient from it by the generated adjoint (``adjoint5x5``) and its products, the
    input gradient by one-pass Winograd again; against PyTorch in float64 (1e-10; float32 to
    its rounding). ``cache_bytes``: the piece budget, one image a piece (second case) or bands
    of rows of one image (third), each piece reading its rows and the 4 below."""
    import torch

    from cnnlab.engine import conv
    if cache_bytes is not None:
        monkeypatch.setattr(conv, "WINOGRAD_CACHE_BYTES", cache_bytes)
    monkeypatch.setattr(conv, "ONE_PASS_MIN_TILES", {3: 64, 5: 1})
    forward = _counting(monkeypatch, "winograd_fused_kernels", "conv5x5")
    adjoint = _counting(monkeypatch, "winograd_fused_kernels", "adjoint5x5")
    rng = np.random.default_rng(n * size)
    x = rng.standard_normal((n, size, size - 1, 17)).astype(dtype)
    kernel = (rng.standard_normal((5, 5, 17, 19)) / 10).astype(dtype)
    bias = rng.standard_normal(19).astype(dtype)
    pads = ((pad, pad), (pad, pad))
    out, cache = conv.conv2d_forward(x, kernel, bias, (1, 1), pads)
    assert isinstance(cache, conv.WinogradCache) and cache.tiling.alpha == 8
    assert len(forward) == len(cache.pieces) and len(cache.pieces) > (cache_bytes is not None)
    grad_out = rng.standard_normal(out.shape).astype(dtype)
    grad_x, grad_kernel, grad_bias = conv.conv2d_backward(grad_out, cache)
    assert len(forward) == len(cache.pieces) + 1 and adjoint
    xt = torch.tensor(x.astype(np.float64)).permute(0, 3, 1, 2).requires_grad_()
    kt = torch.tensor(kernel.astype(np.float64)).permute(3, 2, 0, 1).requires_grad_()
    bt = torch.tensor(bias.astype(np.float64)).requires_grad_()
    expected = torch.nn.functional.conv2d(xt, kt, bt, padding=pad)
    (expected * torch.tensor(grad_out.astype(np.float64)).permute(0, 3, 1, 2)).sum().backward()
    tolerance = 1e-10 if dtype == np.float64 else 2e-5
    for name, ours, theirs in (
            ("y", out, expected.detach().permute(0, 2, 3, 1)),
            ("grad_x", grad_x, xt.grad.permute(0, 2, 3, 1)),
            ("grad_kernel", grad_kernel, kt.grad.permute(2, 3, 1, 0)), ("grad_bias", grad_bias,
                                                                       bt.grad)):
        assert ours.dtype == dtype, name
        theirs = theirs.numpy()
        np.testing.assert_allclose(ours, theirs, rtol=0,
                                   atol=tolerance * np.abs(theirs).max(), err_msg=name)
    if dtype == np.float64:         # and central differences of sum(y * grad_out), same path
        def objective(x_, kernel_):
            return float((conv.conv2d_forward(x_, kernel_, bias, (1, 1), pads)[0]
                          * grad_out).sum())
        for array, grad, index in ((kernel, grad_kernel, (2, 3, 5, 7)),
                                   (kernel, grad_kernel, (4, 0, 16, 18)),
                                   (x, grad_x, (n - 1, size // 2, 3, 11))):
            values = []
            for step in (1e-6, -1e-6):
                moved = array.copy()
                moved[index] += step
                values.append(objective(moved, kernel) if array is x else objective(x, moved))
            numeric = (values[0] - values[1]) / 2e-6
            assert abs(numeric - grad[index]) <= 1e-6 * max(1.0, abs(numeric)), index


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 3), h=st.integers(1, 13),
       w=st.integers(1, 13), f=st.integers(1, 40), taps=st.sampled_from([3, 5]))
def test_the_generated_adjoint_kernels_equal_the_reference_in_float64(seed, n, h, w, f, taps):
    """``grad_M = A grad_y A^T`` by ``adjoint3x3`` / ``adjoint5x5`` (odd sizes: the tiles'
    overhang has no gradient; filters no SIMD width divides, fewer than a vector padded to
    one) against the formula as einsum reads it."""
    from cnnlab.engine import winograd
    tiling = {3: winograd.F4, 5: winograd.F4_5}[taps]
    grad_out = np.random.default_rng(seed).standard_normal((n, h, w, f))
    tiles_hw = winograd.tile_counts((h, w), 4)
    cnnlab.config.set_kernels("numba")
    kernels, name = compiled.module("winograd_fused_kernels"), f"adjoint{taps}x{taps}"
    real, calls = getattr(kernels, name), []
    setattr(kernels, name, lambda *args: calls.append(args) or real(*args))
    try:
        fast = winograd.output_adjoint(grad_out, tiles_hw, tiling)
    finally:
        setattr(kernels, name, real)
    assert len(calls) == 1                              # the compiled kernel ran
    reference = winograd.output_adjoint_reference(grad_out, tiles_hw, tiling)
    assert fast.shape == reference.shape == (tiling.alpha ** 2, n * tiles_hw[0] * tiles_hw[1], f)
    np.testing.assert_allclose(fast, reference, rtol=1e-12,
                               atol=1e-12 * np.abs(reference).max())


@pytest.mark.parametrize("taps, gradients, c, f, strides, size, min_tiles, one_pass", [
    (5, "none", 16, 32, 1, 11, 8, True), (5, "input", 32, 16, 1, 11, 8, True),
    (5, "all", 16, 32, 1, 11, 8, True), (5, "none", 15, 32, 1, 11, 8, False),
    (5, "none", 16, 32, 2, 11, 8, False), (3, "none", 24, 48, 1, 11, 8, True),
    (3, "none", 16, 16, 1, 3, 1, False), (5, "none", 16, 32, 1, 11, 19, False)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_convolutions_without_a_kernel_gradient_take_one_pass_winograd(
        monkeypatch, taps, gradients, c, f, strides, size, min_tiles, one_pass, dtype):
    """The switch (``conv.ONE_PASS_MIN_CHANNELS``): a 3x3 stride-1 convolution with no
    kernel gradient after it (inference; an input gradient, with its full padding), a 5x5 one
    in training too, with 16 or more channels and filters, an output of a tile or more and at
    least ``ONE_PASS_MIN_TILES`` tiles (here ``min_tiles``; 18 in the last case) runs by
    one-pass Winograd, whatever the cost model picks (face_net's second layer, 3x3 24 -> 48:
    im2col); a 3x3 training forward pass, fewer channels, a stride, a 3 x 3 output or fewer
    tiles keep their path. Every case, with its residual and ReLU, equals PyTorch in float64 (float32:
    to F(4x4, 5x5)'s rounding, measured ~5e-6 of the largest output)."""
    import torch

    from cnnlab.engine import conv
    monkeypatch.setattr(conv, "ONE_PASS_MIN_TILES", {3: min_tiles, 5: min_tiles})
    calls = _counting(monkeypatch, "winograd_fused_kernels", f"conv{taps}x{taps}")
    rng = np.random.default_rng(c + f + strides)
    pad = taps - 1 if gradients == "input" else 0 if size < 11 else taps // 2 - 1
    x = rng.standard_normal((3, size, size - 1 if size > 3 else size, c)).astype(dtype)
    kernel = (rng.standard_normal((taps, taps, c, f)) / 10).astype(dtype)
    bias = rng.standard_normal(f).astype(dtype)
    expected = torch.nn.functional.conv2d(
        torch.tensor(x.astype(np.float64)).permute(0, 3, 1, 2),
        torch.tensor(kernel.astype(np.float64)).permute(3, 2, 0, 1),
        torch.tensor(bias.astype(np.float64)), stride=strides,
        padding=pad).permute(0, 2, 3, 1).numpy()
    residual = rng.standard_normal(expected.shape).astype(dtype)
    expected = np.maximum(expected + residual, 0)
    out, _ = conv.conv2d_forward(x, kernel, bias, (strides, strides), ((pad, pad), (pad, pad)),
                                 gradients=gradients, relu=gradients == "none",
                                 residual=residual if gradients == "none" else None)
    assert len(calls) == one_pass
    if gradients != "none":                        # the residual and ReLU are inference's
        out = np.maximum(out + residual, 0)
    tolerance = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(out, expected, rtol=0, atol=tolerance * np.abs(expected).max())


def test_a_3x3_training_forward_pass_is_left_to_the_cost_model():
    """The one-pass rule takes a 3x3 convolution where no kernel gradient follows and a 5x5 one
    in training too; a 3x3 training forward pass is the cost model's (which prices
    Winograd's three passes; where it picks Winograd, the one-pass kernel runs it)."""
    from cnnlab.engine import conv
    cnnlab.config.set_kernels("numba")
    same, valid = ((1, 1), (1, 1)), ((0, 0), (0, 0))
    assert conv._one_pass((64, 16, 16, 32), (3, 3, 32, 32), same, "none", None)
    assert conv._one_pass((64, 16, 16, 32), (3, 3, 32, 32), same, "input", None)
    assert not conv._one_pass((64, 16, 16, 32), (3, 3, 32, 32), same, "all", None)
    assert not conv._one_pass((64, 16, 16, 32), (3, 3, 32, 32), same, "kernel", None)
    assert conv._one_pass((64, 12, 12, 32), (5, 5, 32, 64), valid, "all", None)
    assert not conv._one_pass((2, 12, 12, 32), (5, 5, 32, 64), valid, "all", None)  # 8 tiles


def test_convolutions_of_few_channels_skip_im2col(monkeypatch):
    """The switch: a convolution of at most ``IMPLICIT_MAX_CHANNELS`` input channels takes the
    implicit GEMM, padded along the width by a copy, at inference and in training, where its
    kernel gradient reads the windows the same way (at dilation 1 along the width); with more
    channels, a dilated width in training, or on the reference, im2col. Each path's output and
    gradients equal PyTorch's in float64."""
    import torch

    from cnnlab.engine import conv
    forward = _counting(monkeypatch, "conv_kernels", "implicit_gemm")
    backward = _counting(monkeypatch, "conv_kernels", "implicit_kernel_grad")
    rng = np.random.default_rng(0)

    def run(channels, gradients, switch="numba", dilation=(1, 1)):
        cnnlab.config.set_kernels(switch)
        x = rng.standard_normal((2, 9, 11, channels))
        kernel, bias = rng.standard_normal((3, 3, channels, 20)), rng.standard_normal(20)
        before = len(forward), len(backward)
        out, cache = conv.conv2d_forward(x, kernel, bias, (2, 1), ((1, 1), (1, 1)), dilation,
                                         algorithm="direct", gradients=gradients,
                                         relu=gradients == "none")
        tensors = [torch.from_numpy(a).requires_grad_() for a in (x, kernel, bias)]
        expected = torch.nn.functional.conv2d(
            tensors[0].permute(0, 3, 1, 2), tensors[1].permute(3, 2, 0, 1), tensors[2],
            stride=(2, 1), padding=1, dilation=dilation).permute(0, 2, 3, 1)
        if gradients == "none":
            expected = torch.relu(expected)
        np.testing.assert_allclose(out, expected.detach().numpy(), rtol=1e-10, atol=1e-10)
        if gradients != "none":
            grad_out = rng.standard_normal(out.shape)
            expected.backward(torch.from_numpy(grad_out))
            for got, tensor in zip(conv.conv2d_backward(grad_out, cache), tensors):
                np.testing.assert_allclose(got, tensor.grad.numpy(), rtol=1e-10, atol=1e-10)
        return len(forward) - before[0], len(backward) - before[1]

    assert run(conv.IMPLICIT_MAX_CHANNELS, "none") == (1, 0)
    assert run(conv.IMPLICIT_MAX_CHANNELS, "all") == (1, 1)
    assert run(1, "kernel") == (1, 1)
    assert run(3, "all", dilation=(2, 2)) == (0, 0)
    assert run(conv.IMPLICIT_MAX_CHANNELS + 1, "all") == (0, 0)
    assert run(3, "all", switch="numpy") == (0, 0)


@settings(max_examples=50, deadline=None)
@given(rows=st.one_of(st.integers(1, 40), st.integers(256, 3000)), depth=st.integers(1, 40),
       features=st.integers(1, 50), seed=st.integers(0, 2**31 - 1))
@example(rows=2000, depth=27, features=16, seed=0)       # whole vectors: b read in place
@example(rows=300, depth=5, features=17, seed=1)         # fewer than a block of rows of out
def test_the_compiled_transposed_product_equals_the_reference_in_float64(rows, depth, features,
                                                                         seed):
    """``windows.transposed_product`` (a weight gradient, ``a.T @ b``): the compiled kernel
    (M in chunks, ``a`` read in place, K and F padded to whole blocks) equals BLAS's to 1e-12
    of the sum's terms on any shape, odd ones and several chunks included, and reads nothing
    outside its inputs (each in a buffer of NaN)."""
    from cnnlab.engine import windows
    rng = np.random.default_rng(seed)
    a, _, _ = _fenced(rng, (rows, depth), np.float64, np.nan)
    b, _, _ = _fenced(rng, (rows, features), np.float64, np.nan)
    a[...] = rng.standard_normal(a.shape)
    b[...] = rng.standard_normal(b.shape)
    fast, reference = _both(lambda: windows.transposed_product(a, b))
    assert fast.shape == (depth, features) and not np.isnan(fast).any()
    assert (np.abs(fast - reference) <= 1e-12 * (np.abs(a).T @ np.abs(b))).all()


def test_the_compiled_transposed_product_in_float32_within_the_rounding_of_its_sums():
    """float32 over 65,536 rows (ResNet-20's stem, 64 images: 43 chunks) and 3,000 (4 chunks,
    F not a whole vector): within M units of rounding of the sum of the terms' sizes against
    float64, and taken by the kernel."""
    from cnnlab.engine import windows
    rng = np.random.default_rng(0)
    for rows, depth, features in ((65536, 27, 16), (3000, 25, 33)):
        a = rng.standard_normal((rows, depth)).astype(np.float32)
        b = rng.standard_normal((rows, features)).astype(np.float32)
        cnnlab.config.set_kernels("numba")
        assert windows.compiled_transposed_product(a, b) is not None
        got = windows.transposed_product(a, b)
        exact = a.astype(np.float64).T @ b
        bound = rows * np.finfo(np.float32).eps * (np.abs(a.astype(np.float64)).T @ np.abs(b))
        assert got.dtype == np.float32 and (np.abs(got - exact) <= bound).all()


def test_linear_takes_the_compiled_kernel_exactly_where_it_applies(monkeypatch):
    """The switch and the shapes: the kernel runs on one float dtype with at least
    ``LINEAR_MIN_ROWS`` rows, no fewer than its columns, and a vector of columns; fewer rows or
    columns, a float16 or mixed dtype, a strided view or the reference switch go to BLAS's
    product."""
    from cnnlab.engine import dense
    calls = _counting(monkeypatch, "dense_kernels", "matmul")
    kernels = compiled.module("dense_kernels")
    rng = np.random.default_rng(0)

    def run(rows, depth, features, dtype=np.float32, b_dtype=None, strided=False):
        a = rng.standard_normal((rows, depth * (2 if strided else 1))).astype(dtype)
        a = a[:, ::2] if strided else a
        b = rng.standard_normal((depth, features)).astype(b_dtype or dtype)
        out = np.empty((rows, features), np.result_type(a, b))
        before = len(calls)
        dense.linear(a, b, None, False, out)
        np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=1e-2, atol=1e-2)
        return len(calls) - before

    lanes, rows = kernels.VECTOR_BYTES // 4, dense.LINEAR_MIN_ROWS
    assert run(rows, 3, lanes) == 1
    assert run(rows - 1, 3, lanes) == 0
    assert run(rows, 3, lanes - 1) == 0
    assert run(rows, 3, rows + 1) == 0                  # fewer rows than columns
    assert run(rows, 3, 8, np.float64) == 1
    assert run(rows, 3, 16, np.float16) == 0
    assert run(rows, 3, 16, np.float32, np.float64) == 0
    assert run(rows, 3, 16, strided=True) == 0
    cnnlab.config.set_kernels("numpy")
    assert run(rows, 3, lanes) == 0


def test_merge_kernel_leaves_float16_and_three_inputs_to_the_reference():
    """Numba has no float16 arithmetic, and the kernel joins two maps: those go to the
    reference, with the same values, whatever the switch says."""
    from cnnlab.engine import merge
    rng = np.random.default_rng(0)
    for xs in ([rng.standard_normal((2, 3, 5)).astype(np.float16) for _ in range(2)],
               [rng.standard_normal((2, 3, 5)) for _ in range(3)]):
        fast, reference = _both(lambda xs=xs: merge.add_forward(xs, relu=True)[0])
        assert fast.dtype == xs[0].dtype
        np.testing.assert_array_equal(fast, reference)
        np.testing.assert_array_equal(fast, np.maximum(sum(xs), 0))


def test_sgd_on_many_parameters_at_once_equals_the_reference_one_by_one():
    """``updates.sgd_each`` (what ``optimizers.SGD`` runs, its scalars typed once per dtype)
    against the NumPy reference parameter by parameter: float32 and float64 mixed, a scale of
    each parameter's own (clipnorm), a strided view and a float16 parameter (both left to the
    reference), two steps (the first takes the gradient as its buffer): the same bits."""
    from cnnlab.engine import updates
    rng = np.random.default_rng(3)
    base = rng.standard_normal((6, 5))
    def parameters():
        return [base[0].astype(np.float32), base[:2].copy(), base[:, 1].astype(np.float16),
                base.astype(np.float32)[:, 2]]           # the last a strided view
    grads = [np.full(p.shape, 0.5, p.dtype) + np.arange(p.size).reshape(p.shape).astype(p.dtype)
             for p in parameters()]
    scales = [1.0, 0.3, 1.0, 0.7]
    def run(each):
        params = parameters()
        buffers = [np.zeros_like(p) for p in params]
        for step in (1, 2):
            common = dict(lr=0.1, momentum=0.9, nesterov=True, first_step=step == 1,
                          decay=1e-3, clip=1.5)
            if each:
                updates.sgd_each(list(zip(params, grads, buffers, scales)), **common)
            else:
                for p, g, b, s in zip(params, grads, buffers, scales):
                    updates.sgd(p, g, b, scale=s, **common)
        return params + buffers

    cnnlab.config.set_kernels("numba")
    fast = run(each=True)
    cnnlab.config.set_kernels("numpy")
    reference = run(each=False)
    for a, b in zip(fast, reference):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_update_kernels_leave_what_they_cannot_take_to_the_reference():
    """A kernel writes one contiguous block of float32 or float64. A parameter that is a strided
    view (a column of a matrix, passed by hand) is updated by the reference, in place, never
    through a copy; a float16 one too (Numba has no float16 arithmetic). A gradient of another
    shape is refused before any kernel could read past its end."""
    from cnnlab.engine import updates
    cnnlab.config.set_kernels("numba")
    matrix = np.ones((4, 3))
    column = matrix[:, 1]
    updates.sgd(column, np.full(4, 2.0), None, lr=0.5)
    np.testing.assert_array_equal(matrix, [[1, 0, 1]] * 4)
    with pytest.raises(cnnlab.errors.ShapeError, match=r"gradient of a parameter has shape "
                                                       r"\(128,\); its parameter has \(4, 128\)"):
        cnnlab.optimizers.SGD(0.1).apply([(np.ones((4, 128)), np.ones(128))])   # no broadcast
    half = np.ones(3, np.float16)
    cnnlab.optimizers.SGD(0.25, momentum=0.5).apply([(half, np.ones(3, np.float16))])
    assert half.dtype == np.float16 and np.array_equal(half, [0.75] * 3)


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(0, 9), min_size=0, max_size=4), seed=st.integers(0, 2**31 - 1),
       strided=st.booleans())
def test_bfloat16_rounding_kernel_results_equal_the_reference_bit_for_bit(shape, seed, strided):
    """The ``mixed_bfloat16`` policy's rounding (``precision_kernels``) on any shape, 0-d and
    empty included, from random bit patterns (NaNs of both signs, infinities, subnormals, ties):
    the reference's bits."""
    from cnnlab.engine import precision
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**32, int(np.prod(shape)) * 2, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32)
    x = values[::2].reshape(shape) if strided else values[:values.size // 2].reshape(shape)
    got, want = _both(lambda: precision.round_to_bfloat16(x))
    assert got.shape == want.shape == x.shape and got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def kernel_modules() -> list[str]:
    """The engine's compiled-kernel modules (``*_kernels.py``), by name."""
    folder = os.path.dirname(compiled.__file__)
    return sorted(name[:-3] for name in os.listdir(folder) if name.endswith("_kernels.py"))


def public_kernels() -> dict:
    """``{"module.name": dispatcher}`` of every kernel called from Python (not a ``_name``
    helper inlined into them), each under the module that defines it: a shared one is imported
    by others too."""
    import importlib

    import numba
    return {f"{name}.{key}": obj for name in kernel_modules()
            for key, obj in vars(importlib.import_module(f"cnnlab.engine.{name}")).items()
            if isinstance(obj, numba.core.registry.CPUDispatcher) and not key.startswith("_")
            and obj.py_func.__module__ == f"cnnlab.engine.{name}"}


def test_every_kernel_releases_the_gil():
    """Training splits a batch over threads (``config.threads()``), each running kernels on its
    shard; a kernel that held the GIL would run the shards one after another (measured on
    ResNet-20 at 2 threads before ``nogil``: 0.547 s a step compiled, 0.521 s on the reference;
    after: 0.418 s against 0.552 s). Helpers inlined into the kernels (``_name``) are never
    called from Python."""
    import inspect
    assert kernel_modules() == [
        "activations_kernels", "conv_kernels", "dense_kernels", "depthwise_kernels",
        "merge_kernels", "normalization_kernels", "pool_kernels", "precision_kernels",
        "update_kernels", "windows_kernels", "winograd_fused_kernels", "winograd_kernels"]
    kernels = public_kernels()
    assert len(kernels) == 2 + 4 + 4 + 5 + 1 + 8 + 2 + 1 + 3 + 4 + 4 + 2
    for kernel in kernels.values():
        assert kernel.targetoptions.get("nogil") is True, inspect.getsource(kernel.py_func)[:60]


ONE_SIGNATURE_RUN = """
import os, sys
import numpy as np
import cnnlab
from cnnlab import layers
sys.path.insert(0, os.path.dirname(sys.argv[1]))
from test_kernels import public_kernels

def bn_relu(x):
    return layers.ReLU()(layers.BatchNormalization()(x))

cnnlab.utils.set_random_seed(0)
inputs = cnnlab.Input((16, 16, 3))
x = bn_relu(layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs))     # a stem
x = bn_relu(layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x))
x = bn_relu(layers.Conv2D(32, 1, use_bias=False)(x))
y = bn_relu(layers.Conv2D(32, 3, padding="same", use_bias=False)(x))
x = layers.ReLU()(layers.Add()([layers.BatchNormalization()(
    layers.Conv2D(32, 3, padding="same", use_bias=False)(y)), x]))             # a residual block
x = layers.MaxPooling2D(2)(layers.Conv2D(32, 3, padding="same", activation="relu")(x))
outputs = layers.Dense(4, activation="softmax")(layers.GlobalAveragePooling2D()(x))
model = cnnlab.Model(inputs, outputs)
model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
rng = np.random.default_rng(0)
for batch in (8, 128):
    images = rng.random((batch, 16, 16, 3)).astype(np.float32)
    model.train_on_batch(images, rng.integers(0, 4, batch))
    model.predict_on_batch(images)
for name, kernel in public_kernels().items():
    if len(kernel.signatures) > 1:
        print(name, kernel.signatures)
"""


def test_every_kernel_compiles_one_signature_in_training_and_prediction():
    """A first run compiles each kernel it calls once per signature (0.2-1 s each on an empty
    cache), so a kernel called with a None here and an array there, or a 1-D bias here and a
    2-D dummy there, costs a second compile. A float32 network with every kind of layer the
    compiled paths fuse (a stem, a depthwise-separable chain, BatchNormalization with and
    without a ReLU cut, a residual Add, a pooled convolution), trained and predicting at
    batches 8 and 128, compiles one signature of each kernel (fresh process: the signatures
    of this one's other tests would count)."""
    run = subprocess.run([sys.executable, "-c", ONE_SIGNATURE_RUN, __file__],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout == "", run.stdout


BOUNDS_CHECKED_RUN = """
import sys
import numba
import numpy as np
import pytest


@numba.njit
def past_the_end(a):
    return a[a.shape[0]]


try:                       # what makes this run able to fail: a read past the end raises
    past_the_end(np.zeros(3))
    sys.exit("bounds checking is off")
except IndexError:
    pass
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", sys.argv[1], "-k", "equal_the_reference"]))
"""


def test_kernels_stay_in_bounds(tmp_path):
    """The equality tests above, again in a fresh process with Numba's bounds checking on
    (``NUMBA_BOUNDSCHECK=1``) and an empty cache, so every kernel is compiled with checks: on
    hypothesis' shapes (odd sizes, batch 1, tiles over the edge) no kernel reads or writes
    outside its arrays. (A read one past a row planted in ``input_tiles`` fails it.)"""
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(tmp_path),
           "CNNLAB_KERNELS": "numba"}
    run = subprocess.run([sys.executable, "-c", BOUNDS_CHECKED_RUN, __file__], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "16 passed" in run.stdout, run.stdout[-2000:]
