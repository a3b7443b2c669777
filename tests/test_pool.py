"""Pooling against PyTorch (autograd through an independent construction), naive loops and
finite differences."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import assert_close, finite_difference_grad, naive_pool, nchw, nhwc, torch_pad

from cnnlab.engine.pool import (
    avg_pool2d_backward,
    avg_pool2d_forward,
    global_avg_pool2d_backward,
    global_avg_pool2d_forward,
    max_pool2d_backward,
    max_pool2d_forward,
)
from cnnlab.engine.shapes import resolve_padding


@st.composite
def pool_cases(draw):
    pool = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    return dict(n=draw(st.integers(1, 3)), h=draw(st.integers(pool[0], pool[0] + 9)),
                w=draw(st.integers(pool[1], pool[1] + 9)), c=draw(st.integers(1, 16)), pool=pool,
                strides=strides, padding=draw(st.sampled_from(["valid", "same"])),
                ties=draw(st.booleans()), seed=draw(st.integers(0, 2**31)))


def make(case, dtype):
    rng = np.random.default_rng(case["seed"])
    shape = (case["n"], case["h"], case["w"], case["c"])
    # ties: few distinct values, so many windows hold their maximum more than once
    x = (rng.integers(0, 3, shape) if case["ties"] else rng.standard_normal(shape)).astype(dtype)
    pads = resolve_padding(case["padding"], (case["h"], case["w"]), case["pool"], case["strides"])
    return rng, x, pads


def check_max(case, dtype):
    rng, x, pads = make(case, dtype)
    out, cache = max_pool2d_forward(x, case["pool"], case["strides"], pads)
    grad_out = rng.standard_normal(out.shape).astype(dtype)
    grad_x = max_pool2d_backward(grad_out, cache)
    xt = nchw(x)
    outt = F.max_pool2d(torch_pad(xt, pads, value=-np.inf), case["pool"], case["strides"])
    (outt * nchw(grad_out, grad=False)).sum().backward()
    assert_close(out, nhwc(outt), dtype, "forward")
    # exact equality of where gradients go: each window's to its first maximum, as PyTorch
    assert_close(grad_x, nhwc(xt.grad), dtype, "grad_x")
    assert_close(out, naive_pool(x, case["pool"], case["strides"], pads, "max"), dtype, "naive")


def check_avg(case, dtype):
    rng, x, pads = make(case, dtype)
    out, cache = avg_pool2d_forward(x, case["pool"], case["strides"], pads)
    grad_out = rng.standard_normal(out.shape).astype(dtype)
    grad_x = avg_pool2d_backward(grad_out, cache)
    xt = nchw(x)
    # Keras 'same' averages real cells only: window sums divided by window counts, in torch
    sums = F.avg_pool2d(torch_pad(xt, pads), case["pool"], case["strides"], divisor_override=1)
    ones = torch.ones_like(xt[:1, :1])
    counts = F.avg_pool2d(torch_pad(ones, pads), case["pool"], case["strides"],
                          divisor_override=1)
    outt = sums / counts
    (outt * nchw(grad_out, grad=False)).sum().backward()
    assert_close(out, nhwc(outt), dtype, "forward")
    assert_close(grad_x, nhwc(xt.grad), dtype, "grad_x")
    assert_close(out, naive_pool(x, case["pool"], case["strides"], pads, "avg"), dtype, "naive")


@settings(max_examples=100, deadline=None)
@given(pool_cases())
def test_max_pool_matches_torch_float64(case):
    check_max(case, np.float64)


@settings(max_examples=50, deadline=None)
@given(pool_cases())
def test_max_pool_matches_torch_float32(case):
    check_max(case, np.float32)


@settings(max_examples=100, deadline=None)
@given(pool_cases())
def test_avg_pool_matches_torch_float64(case):
    check_avg(case, np.float64)


@settings(max_examples=50, deadline=None)
@given(pool_cases())
def test_avg_pool_matches_torch_float32(case):
    check_avg(case, np.float32)


def test_max_pool_tie_sends_gradient_to_first_maximum_only():
    x = np.ones((1, 2, 2, 1))
    out, cache = max_pool2d_forward(x, (2, 2), (2, 2))
    grad = max_pool2d_backward(np.full(out.shape, 5.0), cache)
    assert grad[0, :, :, 0].tolist() == [[5.0, 0.0], [0.0, 0.0]]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_global_average_pool_matches_torch(dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 5, 4, 6)).astype(dtype)
    out, cache = global_avg_pool2d_forward(x)
    grad_out = rng.standard_normal(out.shape).astype(dtype)
    grad_x = global_avg_pool2d_backward(grad_out, cache)
    xt = nchw(x)
    outt = F.adaptive_avg_pool2d(xt, 1)[:, :, 0, 0]
    (outt * torch.tensor(grad_out)).sum().backward()
    assert_close(out, outt.detach().numpy(), dtype, "forward")
    assert_close(grad_x, nhwc(xt.grad), dtype, "grad_x")


@pytest.mark.parametrize("kind,padding", [("max", "valid"), ("avg", "same"), ("max", "same")])
def test_pool_gradients_match_finite_differences(kind, padding):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 7, 6, 3))
    pads = resolve_padding(padding, (7, 6), (3, 2), (2, 2))
    forward, backward = ((max_pool2d_forward, max_pool2d_backward) if kind == "max"
                         else (avg_pool2d_forward, avg_pool2d_backward))
    out, cache = forward(x, (3, 2), (2, 2), pads)
    grad_out = rng.standard_normal(out.shape)
    grad_x = backward(grad_out, cache)
    picks, numeric = finite_difference_grad(
        lambda: float((forward(x, (3, 2), (2, 2), pads)[0] * grad_out).sum()), x)
    np.testing.assert_allclose(grad_x.reshape(-1)[picks], numeric, rtol=1e-6, atol=1e-7)
