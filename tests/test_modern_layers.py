"""The layers modern CNNs are made of, against torch.nn.functional in float64 (forward, input
gradient and every parameter gradient, for a random upstream gradient) over random shapes,
strides, dilations and paddings, and against central finite differences: DepthwiseConv2D,
SeparableConv2D, GlobalMaxPooling2D, ZeroPadding2D, Cropping2D, UpSampling2D, and the
activations leaky_relu, elu, silu/swish, hard_sigmoid and gelu, exact and tanh (strings and
layers); and the engine's erf against math.erf."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import assert_close, finite_difference_grad

from cnnlab import layers
from cnnlab.layers.base import CallContext

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def nchw(x, grad=True):
    return torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=grad)


def to_nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def check_layer(layer, x, torch_forward, torch_params=None, rng=None):
    """``torch_forward(x_nchw, *params) -> out`` (NCHW or 2-D); params are torch leaves in the
    layer's variable order, converted by ``torch_params(weights)``."""
    rng = rng or np.random.default_rng(0)
    layer(x)                                                           # build
    out, cache = layer.forward(x, CallContext(training=True))
    grad_out = rng.standard_normal(out.shape)
    grad_x, param_grads = layer.backward(grad_out, cache)
    x_t = nchw(x)
    params_t = [torch.tensor(p, requires_grad=True)
                for p in (torch_params or (lambda w: w))(layer.get_weights())]
    out_t = torch_forward(x_t, *params_t)
    expected = to_nhwc(out_t) if out_t.dim() == 4 else out_t.detach().numpy()
    assert_close(out, expected, np.float64, "output")
    upstream = grad_out.transpose(0, 3, 1, 2) if out_t.dim() == 4 else grad_out
    out_t.backward(torch.tensor(upstream.copy()))
    assert_close(grad_x, to_nhwc(x_t.grad), np.float64, "input gradient")
    for i, (ours, theirs) in enumerate(zip(param_grads, params_t)):
        assert_close(ours, _back(theirs.grad.numpy(), layer.get_weights()[i].shape),
                     np.float64, f"parameter gradient {i}")
    return out


def _back(torch_grad, shape):
    """A torch parameter gradient in the layer's layout (the converters below are transposes)."""
    return torch_grad if torch_grad.shape == shape else BACK[(torch_grad.shape, shape)](torch_grad)


BACK = {}


def depthwise_to_torch(kernel):
    """(KH, KW, C, M) -> torch's grouped (C*M, 1, KH, KW); channel c*M + m, as Keras orders."""
    kh, kw, c, m = kernel.shape
    return kernel.reshape(kh, kw, c * m).transpose(2, 0, 1)[:, None]


def depthwise_from_torch(grad, shape):
    kh, kw, c, m = shape
    return grad[:, 0].transpose(1, 2, 0).reshape(kh, kw, c, m)


@st.composite
def window_cases(draw):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    if strides != (1, 1):
        dilation = (1, 1)                  # Keras refuses strides > 1 with dilation > 1
    padding = draw(st.sampled_from(["valid", "same", 0, 1, 2]))
    min_h, min_w = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    return dict(n=draw(st.integers(1, 3)), h=draw(st.integers(min_h, min_h + 6)),
                w=draw(st.integers(min_w, min_w + 6)), c=draw(st.integers(1, 6)),
                m=draw(st.integers(1, 3)), f=draw(st.integers(1, 5)), kernel=(kh, kw),
                strides=strides, dilation=dilation, padding=padding,
                bias=draw(st.booleans()), seed=draw(st.integers(0, 2**31)))


def explicit_pads(layer, x):
    (top, bottom), (left, right) = layer.pads_for(x.shape[1:3])
    return (left, right, top, bottom)


@SETTINGS
@given(case=window_cases())
def test_depthwise_conv2d_equals_torch_grouped_convolution(case):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((case["n"], case["h"], case["w"], case["c"]))
    layer = layers.DepthwiseConv2D(case["kernel"], case["strides"], case["padding"],
                                   depth_multiplier=case["m"], dilation_rate=case["dilation"],
                                   use_bias=case["bias"], dtype="float64")
    layer(x)
    weights = [w + rng.standard_normal(w.shape) for w in layer.get_weights()]
    layer.set_weights(weights)
    c = case["c"]

    def torch_forward(x_t, kernel, bias=None):
        padded = F.pad(x_t, explicit_pads(layer, x))
        return F.conv2d(padded, kernel, bias, case["strides"], 0, case["dilation"], groups=c)

    shape = weights[0].shape
    BACK[((shape[2] * shape[3], 1, *shape[:2]), shape)] = lambda g: depthwise_from_torch(g, shape)
    check_layer(layer, x, torch_forward,
                lambda w: [depthwise_to_torch(w[0])] + list(w[1:]), rng)


@SETTINGS
@given(case=window_cases())
def test_separable_conv2d_equals_torch_depthwise_then_pointwise(case):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((case["n"], case["h"], case["w"], case["c"]))
    layer = layers.SeparableConv2D(case["f"], case["kernel"], case["strides"], case["padding"],
                                   depth_multiplier=case["m"], dilation_rate=case["dilation"],
                                   use_bias=case["bias"], dtype="float64")
    layer(x)
    weights = [w + rng.standard_normal(w.shape) for w in layer.get_weights()]
    layer.set_weights(weights)
    c, f = case["c"], case["f"]

    def torch_forward(x_t, depthwise, pointwise, bias=None):
        padded = F.pad(x_t, explicit_pads(layer, x))
        mid = F.conv2d(padded, depthwise, None, case["strides"], 0, case["dilation"], groups=c)
        return F.conv2d(mid, pointwise, bias)

    depth_shape, point_shape = weights[0].shape, weights[1].shape
    BACK[((c * case["m"], 1, *depth_shape[:2]), depth_shape)] = \
        lambda g: depthwise_from_torch(g, depth_shape)
    BACK[((f, c * case["m"], 1, 1), point_shape)] = lambda g: g.transpose(2, 3, 1, 0)
    check_layer(layer, x, torch_forward,
                lambda w: [depthwise_to_torch(w[0]), w[1].transpose(3, 2, 0, 1)] + list(w[2:]),
                rng)


@SETTINGS
@given(n=st.integers(1, 3), h=st.integers(1, 7), w=st.integers(1, 7), c=st.integers(1, 5),
       seed=st.integers(0, 2**31))
def test_global_max_pooling_equals_torch(n, h, w, c, seed):
    x = np.random.default_rng(seed).standard_normal((n, h, w, c))
    check_layer(layers.GlobalMaxPooling2D(dtype="float64"), x,
                lambda t: t.amax(dim=(2, 3)))


@SETTINGS
@given(n=st.integers(1, 2), h=st.integers(3, 7), w=st.integers(3, 7), c=st.integers(1, 4),
       edges=st.tuples(*[st.integers(0, 2)] * 4), size=st.tuples(st.integers(1, 3),
                                                               st.integers(1, 3)),
       seed=st.integers(0, 2**31))
def test_padding_cropping_and_upsampling_equal_torch(n, h, w, c, edges, size, seed):
    x = np.random.default_rng(seed).standard_normal((n, h, w, c))
    top, bottom, left, right = edges
    check_layer(layers.ZeroPadding2D(((top, bottom), (left, right)), dtype="float64"), x,
                lambda t: F.pad(t, (left, right, top, bottom)))
    crop = ((min(top, h - 1 - min(bottom, h - 1)), min(bottom, h - 1)),
            (min(left, w - 1 - min(right, w - 1)), min(right, w - 1)))
    (ct, cb), (cl, cr) = crop
    check_layer(layers.Cropping2D(crop, dtype="float64"), x,
                lambda t: t[:, :, ct:h - cb, cl:w - cr])
    check_layer(layers.UpSampling2D(size, dtype="float64"), x,
                lambda t: F.interpolate(t, scale_factor=size, mode="nearest"))


ACTIVATIONS = {
    "leaky_relu": lambda t: F.leaky_relu(t, 0.2),
    "elu": F.elu,
    "silu": F.silu,
    "swish": F.silu,
    # torch's own hardsigmoid backward multiplies by 1/6 rounded to float32 (1e-8 off in
    # float64); relu6(x + 3) / 6 is the same function with an exact float64 backward
    "hard_sigmoid": lambda t: F.relu6(t + 3) / 6,
    "gelu": F.gelu,
    "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_strings_equal_torch(name):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5, 4, 2)) * 3
    x[0, 0, 0] = [3.0, -3.0]                      # hard_sigmoid's corners: zero slope, as torch
    check_layer(layers.Activation(name, dtype="float64"), x, ACTIVATIONS[name])
    check_layer(layers.Conv2D(3, 1, activation=name, dtype="float64"), x,
                lambda t, k, b: ACTIVATIONS[name](F.conv2d(t, k, b)),
                lambda w: [w[0].transpose(3, 2, 0, 1), w[1]])


def test_activation_layers_with_their_parameters_equal_torch():
    x = np.random.default_rng(2).standard_normal((2, 4, 4, 3)) * 2
    check_layer(layers.LeakyReLU(negative_slope=0.1, dtype="float64"), x,
                lambda t: F.leaky_relu(t, 0.1))
    check_layer(layers.LeakyReLU(dtype="float64"), x, lambda t: F.leaky_relu(t, 0.3))
    check_layer(layers.ELU(alpha=0.7, dtype="float64"), x, lambda t: F.elu(t, 0.7))


@pytest.mark.parametrize("make", [
    lambda: layers.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2,
                                   dtype="float64"),
    lambda: layers.SeparableConv2D(4, 3, dilation_rate=2, padding="same", dtype="float64"),
    lambda: layers.GlobalMaxPooling2D(dtype="float64"),
    lambda: layers.UpSampling2D((2, 3), dtype="float64"),
    lambda: layers.Cropping2D(((1, 0), (0, 2)), dtype="float64"),
    lambda: layers.ZeroPadding2D(1, dtype="float64"),
    lambda: layers.ELU(dtype="float64"),
    lambda: layers.Activation("silu", dtype="float64"),
    lambda: layers.Activation("gelu", dtype="float64"),
    lambda: layers.Activation("gelu_tanh", dtype="float64"),
])
def test_gradients_match_finite_differences(make):
    layer = make()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 7, 6, 3))
    layer(x)
    layer.set_weights([w + rng.standard_normal(w.shape) for w in layer.get_weights()])
    out, cache = layer.forward(x, CallContext(training=True))
    weight = rng.standard_normal(out.shape)
    grad_x, param_grads = layer.backward(weight, cache)

    def objective():
        return float((layer.forward(x, CallContext())[0] * weight).sum())

    for target, grad in [(x, grad_x), *zip(layer.weights, param_grads)]:
        picks, numeric = finite_difference_grad(objective, target, max_entries=15)
        np.testing.assert_allclose(grad.reshape(-1)[picks], numeric, rtol=1e-6, atol=1e-8)


def test_modern_layers_round_trip_their_config_and_refuse_bad_arguments():
    from cnnlab.errors import ConfigError, ShapeError
    for layer in (layers.DepthwiseConv2D(3, depth_multiplier=2), layers.SeparableConv2D(8, 3),
                  layers.ZeroPadding2D(((1, 2), (3, 4))), layers.Cropping2D(1),
                  layers.UpSampling2D(3), layers.LeakyReLU(0.1), layers.ELU(0.5),
                  layers.GlobalMaxPooling2D()):
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
    with pytest.raises(ConfigError, match="depth_multiplier=0"):
        layers.DepthwiseConv2D(3, depth_multiplier=0)
    with pytest.raises(ConfigError, match="interpolation='nearest'"):
        layers.UpSampling2D(interpolation="bilinear")
    with pytest.raises(ShapeError, match="leaves 0 x"):
        layers.Cropping2D(((2, 2), (0, 0)))(np.zeros((1, 4, 4, 1)))


def test_erf_is_double_precision():
    import math

    from cnnlab.engine.activations import erf
    xs = np.concatenate([np.linspace(-8, 8, 40001), np.linspace(-1e-3, 1e-3, 101), [0.0]])
    reference = np.array([math.erf(v) for v in xs])
    np.testing.assert_allclose(erf(xs), reference, rtol=2e-15, atol=1e-300)
