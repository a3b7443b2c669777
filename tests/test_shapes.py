"""The article's formula helper against the output shapes PyTorch produces, and 'same' padding
against TensorFlow's documented rule (output ceil(W / S), odd padding pixel after)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlab.engine.shapes import conv_output_size, dropped_pixels, resolve_padding, same_padding
from cnnlab.errors import ConfigError, ShapeError


def test_article_numbers():
    assert conv_output_size(28, 5) == 24                 # conv 5x5, stride 1, no padding
    assert conv_output_size(24, 2, stride=2) == 12       # 2x2 max pool, stride 2
    assert conv_output_size(12, 5) == 8
    assert conv_output_size(8, 2, stride=2) == 4
    assert conv_output_size(5, 3, stride=2, pad_before=1) == 3   # floor((5 - 3 + 2) / 2) + 1


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 40), kernel=st.integers(1, 7), stride=st.integers(1, 4),
       pad=st.integers(0, 3), dilation=st.integers(1, 3))
def test_formula_matches_torch_conv_shapes(size, kernel, stride, pad, dilation):
    expected_ok = size + 2 * pad - dilation * (kernel - 1) - 1 >= 0
    if not expected_ok:
        with pytest.raises(ShapeError):
            conv_output_size(size, kernel, stride, pad, pad, dilation)
        return
    out = F.conv2d(torch.zeros(1, 1, size, 1), torch.zeros(1, 1, kernel, 1), stride=(stride, 1),
                   padding=(pad, 0), dilation=(dilation, 1))
    assert conv_output_size(size, kernel, stride, pad, pad, dilation) == out.shape[2]


@settings(max_examples=100, deadline=None)
@given(size=st.integers(2, 40), kernel=st.integers(1, 6), stride=st.integers(1, 4))
def test_formula_matches_torch_pool_shapes(size, kernel, stride):
    if kernel > size:
        return
    out = F.max_pool2d(torch.zeros(1, 1, size, size), kernel, stride)
    assert conv_output_size(size, kernel, stride) == out.shape[2]


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 40), kernel=st.integers(1, 7), stride=st.integers(1, 4),
       dilation=st.integers(1, 2))
def test_same_padding_is_tensorflows_rule(size, kernel, stride, dilation):
    before, after = same_padding(size, kernel, stride, dilation)
    assert conv_output_size(size, kernel, stride, before, after, dilation) == math.ceil(size / stride)
    assert after - before in (0, 1)                       # the odd pixel goes after
    k_eff = dilation * (kernel - 1) + 1
    assert before + after == max((math.ceil(size / stride) - 1) * stride + k_eff - size, 0)


def test_even_kernel_same_padding_is_asymmetric():
    assert same_padding(28, 2, 1) == (0, 1)
    assert same_padding(28, 4, 1) == (1, 2)
    assert same_padding(7, 3, 2) == (1, 1)
    assert same_padding(8, 3, 2) == (0, 1)


def test_dropped_pixels_reports_what_floor_leaves_out():
    assert dropped_pixels(28, 5, 2) == 1                   # (28 - 5) mod 2
    assert dropped_pixels(24, 2, 2) == 0


def test_zero_or_negative_output_is_refused_with_numbers():
    with pytest.raises(ShapeError, match=r"floor\(\(3 - 5 \+ 0\) / 1\) \+ 1 = -1"):
        conv_output_size(3, 5)


@pytest.mark.parametrize("padding", ["full", -1, (1, 2, 3), 1.5, ((1,), (2,)), True])
def test_bad_padding_is_named(padding):
    with pytest.raises(ConfigError, match="padding"):
        resolve_padding(padding, (5, 5), (3, 3), (1, 1))


def test_padding_forms():
    assert resolve_padding(2, (5, 5), (3, 3), (1, 1)) == ((2, 2), (2, 2))
    assert resolve_padding((1, 0), (5, 5), (3, 3), (1, 1)) == ((1, 1), (0, 0))
    assert resolve_padding(((1, 0), (0, 2)), (5, 5), (3, 3), (1, 1)) == ((1, 0), (0, 2))
    assert np.array_equal(resolve_padding("SAME", (28, 28), (5, 5), (1, 1)), ((2, 2), (2, 2)))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), h=st.integers(1, 7), w=st.integers(1, 7), c=st.integers(1, 5),
       pads=st.tuples(st.tuples(st.integers(0, 3), st.integers(0, 3)),
                      st.tuples(st.integers(0, 3), st.integers(0, 3))),
       value=st.sampled_from([0.0, -np.inf, 2.5]), dtype=st.sampled_from([np.float32, np.float64]))
def test_padding_by_slices_equals_numpys_pad(n, h, w, c, pads, value, dtype):
    """Any (asymmetric) padding, the -inf max pooling pads with, both float types."""
    from cnnlab.engine.windows import pad_images, pad_images_reference
    x = np.random.default_rng(n * h * w * c).standard_normal((n, h, w, c)).astype(dtype)
    fast, reference = pad_images(x, pads, value), pad_images_reference(x, pads, value)
    assert fast.dtype == reference.dtype and fast.shape == reference.shape
    np.testing.assert_array_equal(fast, reference)
