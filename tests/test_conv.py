"""Conv2D forward and backward against torch.nn.functional.conv2d, naive loops and finite
differences, over random kernels, strides, dilations, paddings, sizes, batches and channels."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import (
    assert_close,
    finite_difference_grad,
    naive_conv2d,
    nchw,
    nhwc,
    torch_kernel,
    torch_pad,
)

from cnnlab.engine.conv import conv2d_backward, conv2d_forward
from cnnlab.engine.shapes import resolve_padding
from cnnlab.errors import ShapeError


@st.composite
def conv_cases(draw, unit_steps=False, three_by_three=False):
    """Random convolutions; ``unit_steps``: stride and dilation 1 (what the frequency domain does);
    ``three_by_three``: and a 3x3 kernel (what Winograd does)."""
    kh, kw = (3, 3) if three_by_three else (draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    strides = (1, 1) if unit_steps else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (1, 1) if unit_steps else (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = draw(st.sampled_from(["valid", "same", "int", "pair", "explicit"]))
    if padding == "int":
        padding = draw(st.integers(0, 3))
    elif padding == "pair":
        padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    elif padding == "explicit":
        padding = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(2))
    # the input must be at least one dilated kernel wide, so the output is never empty
    min_h, min_w = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    h = draw(st.integers(min_h, min_h + 8))
    w = draw(st.integers(min_w, min_w + 8))
    return dict(n=draw(st.integers(1, 3)), h=h, w=w, c=draw(st.integers(1, 16)),
                f=draw(st.integers(1, 8)), kernel=(kh, kw), strides=strides, dilation=dilation,
                padding=padding, bias=draw(st.booleans()), seed=draw(st.integers(0, 2**31)))


def run_case(case, dtype, algorithm=None):
    rng = np.random.default_rng(case["seed"])
    kh, kw = case["kernel"]
    x = rng.standard_normal((case["n"], case["h"], case["w"], case["c"])).astype(dtype)
    kernel = rng.standard_normal((kh, kw, case["c"], case["f"])).astype(dtype)
    bias = rng.standard_normal(case["f"]).astype(dtype) if case["bias"] else None
    pads = resolve_padding(case["padding"], (case["h"], case["w"]), case["kernel"],
                           case["strides"], case["dilation"])
    out, cache = conv2d_forward(x, kernel, bias, case["strides"], pads, case["dilation"],
                                algorithm=algorithm)
    grad_out = rng.standard_normal(out.shape).astype(dtype)    # random upstream gradient
    grad_x, grad_kernel, grad_bias = conv2d_backward(grad_out, cache)

    # the reference runs in float64 whatever we run in: torch 2.13's float32 CPU conv (oneDNN)
    # returns garbage for some shapes, e.g. a kernel as wide as the input with stride (1, 3)
    xt, kt = nchw(x.astype(np.float64)), torch_kernel(kernel.astype(np.float64))
    bt = torch.tensor(bias.astype(np.float64), requires_grad=True) if bias is not None else None
    outt = F.conv2d(torch_pad(xt, pads), kt, bt, stride=case["strides"],
                    dilation=case["dilation"])
    (outt * nchw(grad_out.astype(np.float64), grad=False)).sum().backward()   # sum(out * dout)
    scales = {}
    if algorithm in ("fourier", "winograd"):
        # A transform mixes every pixel of a map (Winograd's, of a 4x4 tile), so its rounding
        # error is bounded by norms: |error of out[n, ..., f]| <~ eps * |x[n]| * |kernel[..., f]|
        # (2-norms), and likewise for the gradients. An element whose terms cancel can be far
        # smaller than those norms, so it is measured against them (in float64 this is still
        # 1e-10; model tests stay exact).
        norm = lambda a, axes: np.sqrt((a.astype(np.float64) ** 2).sum(axis=axes))  # noqa: E731
        x_n, k_f, g_n, g_f = norm(x, (1, 2, 3)), norm(kernel, (0, 1, 2)), \
            norm(grad_out, (1, 2, 3)), norm(grad_out, (0, 1, 2))
        scales = {"forward": (x_n[:, None] * k_f[None, :]).max(),
                  "grad_x": g_n.max() * norm(kernel, (0, 1, 2, 3)),
                  "grad_kernel": norm(x, (0, 1, 2, 3)) * g_f.max()}
    assert_close(out, nhwc(outt), dtype, "forward", scales.get("forward"))
    assert_close(grad_x, nhwc(xt.grad), dtype, "grad_x", scales.get("grad_x"))
    assert_close(grad_kernel, kt.grad.numpy().transpose(2, 3, 1, 0), dtype, "grad_kernel",
                 scales.get("grad_kernel"))
    if bias is not None:     # a sum over every output position: measured against its terms
        terms = np.abs(grad_out.astype(np.float64)).sum(axis=(0, 1, 2)).max()
        assert_close(grad_bias, bt.grad.numpy(), dtype, "grad_bias", scale=terms)
    return x, kernel, bias, pads, out


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_cases())
def test_conv2d_matches_torch_float64(case):
    run_case(case, np.float64)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_cases())
def test_conv2d_matches_torch_float32(case):
    run_case(case, np.float32)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_cases(unit_steps=True))
def test_frequency_domain_conv2d_matches_torch_float64(case):
    run_case(case, np.float64, algorithm="fourier")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_cases(unit_steps=True))
def test_frequency_domain_conv2d_matches_torch_float32(case):
    run_case(case, np.float32, algorithm="fourier")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_cases(unit_steps=True, three_by_three=True), st.sampled_from([np.float64, np.float32]))
def test_winograd_conv2d_matches_torch(case, dtype):
    """Forward and both gradients, the input gradient (itself a 3x3 convolution) by Winograd too."""
    import cnnlab.engine.conv as conv
    conv.ALGORITHM = "winograd"
    try:
        run_case(case, dtype, algorithm="winograd")
    finally:
        conv.ALGORITHM = "auto"


@settings(max_examples=25, deadline=None)
@given(conv_cases())
def test_conv2d_matches_naive_loops(case):
    x, kernel, bias, pads, out = run_case(case, np.float64)
    expected = naive_conv2d(x, kernel, bias, case["strides"], pads, case["dilation"])
    assert_close(out, expected, np.float64, "naive loops")


@pytest.mark.parametrize("strides,dilation,padding,algorithm", [
    ((1, 1), (1, 1), "valid", "direct"), ((2, 1), (1, 2), "same", "direct"),
    ((3, 2), (2, 1), ((1, 0), (2, 1)), "direct"), ((1, 1), (1, 1), "valid", "fourier"),
    ((1, 1), (1, 1), ((2, 0), (1, 3)), "fourier")])
def test_conv2d_gradients_match_finite_differences(strides, dilation, padding, algorithm):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 9, 8, 3))
    kernel = rng.standard_normal((3, 4, 3, 5))
    bias = rng.standard_normal(5)
    pads = resolve_padding(padding, (9, 8), (3, 4), strides, dilation)
    out, cache = conv2d_forward(x, kernel, bias, strides, pads, dilation, algorithm=algorithm)
    grad_out = rng.standard_normal(out.shape)
    analytic = conv2d_backward(grad_out, cache)

    def loss():
        return float((conv2d_forward(x, kernel, bias, strides, pads, dilation,
                                     algorithm=algorithm)[0] * grad_out).sum())

    for array, grad in zip((x, kernel, bias), analytic):
        picks, numeric = finite_difference_grad(loss, array)
        np.testing.assert_allclose(grad.reshape(-1)[picks], numeric, rtol=1e-6, atol=1e-7)


def test_first_layer_can_skip_the_input_gradient():
    rng = np.random.default_rng(1)
    x, kernel = rng.standard_normal((2, 6, 6, 1)), rng.standard_normal((3, 3, 1, 4))
    out, cache = conv2d_forward(x, kernel, None)
    grad_x, grad_kernel, grad_bias = conv2d_backward(np.ones_like(out), cache,
                                                     need_input_grad=False)
    assert grad_x is None and grad_bias is None
    assert_close(grad_kernel, conv2d_backward(np.ones_like(out), cache)[1], np.float64)


def test_too_small_input_names_the_formula():
    with pytest.raises(ShapeError, match=r"floor\(\(4 - 5 \+ 0\) / 1\) \+ 1 = 0"):
        conv2d_forward(np.zeros((1, 4, 4, 1)), np.zeros((5, 5, 1, 1)), None)


@pytest.mark.parametrize("algorithm, kernel_size", [("winograd", 3), ("direct", 3),
                                                   ("fourier", 3), ("direct", 1)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cache_bytes, channels", [(None, 6), (20_000, 6), (None, 17)])
def test_a_residual_is_added_before_the_relu_on_every_path(monkeypatch, algorithm, kernel_size,
                                                           dtype, cache_bytes, channels):
    """ResNet's join at inference: ``relu(conv(x) + bias + residual)`` against PyTorch in
    float64, with and without the ReLU. ``cache_bytes``: compiled Winograd's piece budget,
    small enough to cut the batch into pieces and one image into bands of rows (each piece
    reads its own part of the residual); 17 channels: Winograd in one pass
    (``winograd_fused_kernels``), fewer than a vector: in three."""
    import cnnlab.engine.conv as conv
    if cache_bytes is not None:
        monkeypatch.setattr(conv, "WINOGRAD_CACHE_BYTES", cache_bytes)
    rng = np.random.default_rng(kernel_size)
    x = rng.standard_normal((3, 13, 11, channels)).astype(dtype)
    kernel = rng.standard_normal((kernel_size, kernel_size, channels, 17)).astype(dtype)
    bias = rng.standard_normal(17).astype(dtype)
    pad = kernel_size // 2
    pads = ((pad, pad), (pad, pad))
    residual = rng.standard_normal((3, 13, 11, 17)).astype(dtype)
    before = residual.copy()
    expected = nhwc(F.conv2d(torch_pad(nchw(x.astype(np.float64), grad=False), pads),
                             torch_kernel(kernel.astype(np.float64)),
                             torch.tensor(bias.astype(np.float64)))) + residual
    for relu in (False, True):
        out, _ = conv2d_forward(x, kernel, bias, (1, 1), pads, algorithm=algorithm,
                                gradients="none", relu=relu, residual=residual)
        assert out.dtype == dtype
        assert_close(out, np.maximum(expected, 0) if relu else expected, dtype,
                     f"{algorithm}, relu={relu}")
    np.testing.assert_array_equal(residual, before)              # read, never written


def test_a_residual_of_the_wrong_shape_or_in_training_is_refused():
    x, kernel = np.zeros((2, 8, 8, 3)), np.zeros((3, 3, 3, 4))
    pads = ((1, 1), (1, 1))
    with pytest.raises(ValueError, match=r"output's shape \(2, 8, 8, 4\); received \(2, 8, 8, 3\)"):
        conv2d_forward(x, kernel, None, (1, 1), pads, gradients="none",
                       residual=np.zeros((2, 8, 8, 3)))
    with pytest.raises(ValueError, match="inference only"):
        conv2d_forward(x, kernel, None, (1, 1), pads, residual=np.zeros((2, 8, 8, 4)))


def test_the_float32_case_where_torch_is_wrong_is_right_here():
    """Found by hypothesis: torch's float32 CPU conv2d returns garbage for this shape (its float64
    and non-oneDNN paths agree with each other and with us)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 2, 1)).astype(np.float32)
    kernel = rng.standard_normal((1, 2, 1, 5)).astype(np.float32)
    out, _ = conv2d_forward(x, kernel, None, (1, 3))
    expected = naive_conv2d(x.astype(np.float64), kernel.astype(np.float64), None, (1, 3),
                            ((0, 0), (0, 0)), (1, 1))
    assert_close(out, expected, np.float32, "naive loops")


def test_cook_toom_builds_f4_exactly_and_f4_5x5_correlates():
    """``winograd.cook_toom`` from F4's points gives F4's matrices exactly; F(4x4, 5x5)'s,
    applied in one dimension, ``A^T [(G g) * (B^T d)]``, equal the correlation of 8 values with
    5 taps to float64 rounding; a wrong number of points is refused."""
    from cnnlab.engine import winograd
    rebuilt = winograd.cook_toom(4, 3, (0, 1, -1, 2, -2))
    for mine, shipped in zip(rebuilt, winograd.F4):
        np.testing.assert_array_equal(mine, shipped)
    tiling = winograd.F4_5
    assert (tiling.m, tiling.alpha, tiling.taps) == (4, 8, 5)
    rng = np.random.default_rng(0)
    d, g = rng.standard_normal(8), rng.standard_normal(5)
    expected = [d[i:i + 5] @ g for i in range(4)]
    np.testing.assert_allclose(tiling.at @ ((tiling.g @ g) * (tiling.bt @ d)), expected,
                               rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="takes 7 finite points"):
        winograd.cook_toom(4, 5, (0, 1, -1))


@pytest.mark.parametrize("m", [2, 4])
def test_winograd_kernel_transforms_are_g_g_g_transposed_and_its_adjoint(m):
    """U = G g G^T as the formula reads it (einsum over the 3x3 taps, float64) for F(2x2) and
    F(4x4), odd channel counts; its transform back is the adjoint (<U(g), h> = <g, U^T(h)>); in
    float32, U is within a few float32 roundings of the float64 U."""
    from cnnlab.engine import winograd
    tiles = {2: winograd.F2, 4: winograd.F4}[m]
    rng = np.random.default_rng(m)
    kernel = rng.standard_normal((3, 3, 5, 7))
    u = winograd.kernel_transform(kernel, tiles)
    expected = np.einsum("ai,ijcf,bj->abcf", tiles.g, kernel, tiles.g).reshape(-1, 5, 7)
    assert u.shape == (tiles.alpha ** 2, 5, 7) and u.dtype == np.float64
    np.testing.assert_allclose(u, expected, rtol=1e-14, atol=1e-14)
    grad_u = rng.standard_normal(u.shape)
    back = winograd.kernel_grad_transform(grad_u, tiles)
    assert back.shape == (3, 3, 5, 7)
    assert np.vdot(u, grad_u) == pytest.approx(np.vdot(kernel, back), rel=1e-12)
    u32 = winograd.kernel_transform(kernel.astype(np.float32), tiles)
    assert u32.dtype == np.float32
    assert np.abs(u32 - expected).max() <= 4 * np.finfo(np.float32).eps * np.abs(expected).max()


@pytest.mark.parametrize("padding", ["same", "valid", ((2, 0), (1, 2))])
def test_winograd_gradients_match_finite_differences(padding):
    """On the path the kernels switch selects: F(4x4) compiled by default, F(2x2) in NumPy in
    the reference job."""
    import cnnlab.engine.conv as conv
    rng = np.random.default_rng(11)
    x, kernel, bias = (rng.standard_normal((2, 9, 7, 3)), rng.standard_normal((3, 3, 3, 4)),
                       rng.standard_normal(4))
    pads = resolve_padding(padding, (9, 7), (3, 3), (1, 1), (1, 1))
    conv.ALGORITHM = "winograd"           # the input gradient's convolution too
    try:
        out, cache = conv2d_forward(x, kernel, bias, (1, 1), pads, algorithm="winograd")
        grad_out = rng.standard_normal(out.shape)
        analytic = conv2d_backward(grad_out, cache)

        def loss():
            return float((conv2d_forward(x, kernel, bias, (1, 1), pads,
                                         algorithm="winograd")[0] * grad_out).sum())

        for array, grad in zip((x, kernel, bias), analytic):
            picks, numeric = finite_difference_grad(loss, array)
            np.testing.assert_allclose(grad.reshape(-1)[picks], numeric, rtol=1e-6, atol=1e-7)
    finally:
        conv.ALGORITHM = "auto"
