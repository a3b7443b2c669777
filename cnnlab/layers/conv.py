"""``Conv2D``, ``DepthwiseConv2D`` and ``SeparableConv2D``: hold their kernels and bias and call
``engine.conv`` and ``engine.depthwise``.

Input shape ``(N, H, W, C)``; output shape ``(N, Ho, Wo, filters)`` with
``Ho = floor((H - KH_eff + P_top + P_bottom) / sh) + 1`` (``engine.shapes.conv_output_size``).

>>> import numpy as np
>>> from cnnlab import layers
>>> conv = layers.Conv2D(32, 5, activation='relu')
>>> conv(np.zeros((2, 28, 28, 1))).shape
(2, 24, 24, 32)
>>> conv.get_weights()[0].shape      # (KH, KW, C_in, C_out), Keras layout
(5, 5, 1, 32)
"""

from __future__ import annotations

from cnnlab.engine import initializers
from cnnlab.engine.chain import ChainOp, chain_forward
from cnnlab.engine.conv import conv2d_backward, conv2d_forward
from cnnlab.engine.dense import dense_backward, dense_forward
from cnnlab.engine.depthwise import depthwise_conv2d_backward, depthwise_conv2d_forward
from cnnlab.engine.normalization import fold_affine
from cnnlab.engine.shapes import as_pair, output_hw, resolve_padding, validate_padding
from cnnlab.layers.base import Layer, check_positive_int, linear_weights


class Conv2D(Layer):
    """2-D convolution over NHWC images.

    Args:
        filters: number of output channels F.
        kernel_size: int or (KH, KW).
        strides: int or (sh, sw); how far the kernel jumps between outputs.
        padding: 'valid' (none), 'same' (TensorFlow semantics: output ``ceil(H / s)``), an int,
            (P_h, P_w), or ((top, bottom), (left, right)).
        dilation_rate: int or (dh, dw); the gap between kernel taps.
        activation: None, 'relu', 'softmax', 'tanh', 'sigmoid', 'linear'.
        use_bias: whether to add a bias per filter.
        kernel_initializer, bias_initializer: initializer names.
    """

    input_rank = 4
    folds_output_affine = True
    folds_output_residual = True
    folds_output_pool = True
    fresh_output = True                      # every path writes a new output array

    def __init__(self, filters: int, kernel_size, strides=(1, 1), padding="valid",
                 dilation_rate=(1, 1), activation=None, use_bias: bool = True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 input_shape=None, name=None, dtype=None, trainable=True):
        super().__init__(name=name, dtype=dtype, trainable=trainable, input_shape=input_shape,
                         activation=activation)
        owner = self._describe()
        self.filters = check_positive_int(filters, "filters", owner)
        self.kernel_size = as_pair(kernel_size, "kernel_size", owner)
        self.strides = as_pair(strides, "strides", owner)
        self.dilation_rate = as_pair(dilation_rate, "dilation_rate", owner)
        validate_padding(padding, owner)
        self.padding = padding.lower() if isinstance(padding, str) else padding
        self._set_weight_options(use_bias, kernel_initializer, bias_initializer)

    def pads_for(self, input_hw):
        """Explicit ((top, bottom), (left, right)) padding for an input of this height and width."""
        return resolve_padding(self.padding, input_hw, self.kernel_size, self.strides,
                               self.dilation_rate, self._describe())

    def build_params(self, input_shape):
        channels = input_shape[-1]
        self.add_weight("kernel", (*self.kernel_size, channels, self.filters),  # (KH, KW, C, F)
                        self.kernel_initializer)
        if self.use_bias:
            self.add_weight("bias", (self.filters,), self.bias_initializer)  # (F,)

    def compute_output_shape(self, input_shape):
        h, w = input_shape[0], input_shape[1]
        ho, wo = output_hw((h, w), self.kernel_size, self.strides, self.pads_for((h, w)),
                           self.dilation_rate)
        return ho, wo, self.filters

    def kernel_and_bias(self, ctx):
        """The weights this call runs with: kernel ``(KH, KW, C, F)``, bias ``(F,)`` or None."""
        return self.folded_weights(ctx.output_affine)

    def folded_weights(self, affine):
        """The kernel and bias (or None), with ``affine``, a ``(scale, shift)`` per output
        channel, folded in (None: the layer's own)."""
        return linear_weights(self, affine)

    def fuses(self, activation, ctx):
        """At inference (no backward pass follows), a ReLU runs inside the convolution: compiled
        Winograd applies it in its output transform, the im2col and 1x1 paths in the same pass
        as the bias (``dense.add_bias``), so the map is not read and written again. Not in
        subclasses, whose own ops have no such step (DepthwiseConv2D has its own)."""
        return activation == "relu" and not ctx.keep_cache and type(self) is Conv2D

    def call(self, x, ctx, activation="linear"):
        # ctx.workspace: the im2col buffer and kernel spectrum the caller keeps for this call
        # site between steps (one per thread and per node, so concurrent calls never share one)
        kernel, bias = self.kernel_and_bias(ctx)
        if ctx.output_chain is not None:
            return self._with_chain(x, kernel, bias, activation == "relu", ctx), None
        return conv2d_forward(x, kernel, bias, self.strides, self.pads_for(x.shape[1:3]),
                              self.dilation_rate, ctx.workspace, gradients=ctx.gradients,
                              relu=activation == "relu", free=ctx.free_list,
                              residual=ctx.output_residual, max_pool=ctx.output_pool)

    def chain_op(self, kernel, bias, relu: bool, input_hw) -> ChainOp:
        """This convolution, on maps of ``input_hw``, with these weights, as an op of a chain
        (``engine.chain``)."""
        return ChainOp(isinstance(self, DepthwiseConv2D), kernel, bias, self.strides,
                       self.pads_for(input_hw), self.dilation_rate, relu)

    def _with_chain(self, x, kernel, bias, relu: bool, ctx):
        """This layer and ``ctx.output_chain``'s after it (inference: ``graph.fusion``'s 7.) by
        ``engine.chain``: the last one's output."""
        ops, hw = [], x.shape[1:3]
        for layer, (k, b), r in [(self, (kernel, bias), relu)] + [
                (layer, layer.folded_weights(affine), r) for layer, affine, r in ctx.output_chain]:
            op = layer.chain_op(k, b, r, hw)
            ops.append(op)
            hw = output_hw(hw, k.shape[:2], op.strides, op.pads, op.dilation)
        return chain_forward(x, ops, ctx.free_list)

    def call_backward(self, grad_out, cache, input_grad):
        grad_x, grad_kernel, grad_bias = conv2d_backward(grad_out, cache, input_grad)
        return grad_x, ([grad_kernel, grad_bias] if self.use_bias else [grad_kernel])

    def get_config(self):
        padding = self.padding if isinstance(self.padding, (str, int)) else _to_lists(self.padding)
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": list(self.kernel_size), "strides": list(self.strides),
                "padding": padding, "dilation_rate": list(self.dilation_rate),
                "activation": self.activation, "use_bias": self.use_bias,
                "kernel_initializer": self.kernel_initializer,
                "bias_initializer": self.bias_initializer}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("padding"), list):
            config["padding"] = _to_tuples(config["padding"])
        return super().from_config(config)


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, (list, tuple)) else value


def _to_tuples(value):
    return tuple(_to_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


class DepthwiseConv2D(Conv2D):
    """Each input channel convolved with its own ``depth_multiplier`` filters (no sum over
    channels): ``(N, H, W, C) -> (N, Ho, Wo, C * depth_multiplier)``, the same output-size formula
    as ``Conv2D``. Kernel ``(KH, KW, C, depth_multiplier)``, as in Keras; ``engine.depthwise``.
    """

    folds_output_residual = False          # its op has no residual epilogue
    folds_output_pool = False              # nor a pooled one

    def __init__(self, kernel_size, strides=(1, 1), padding="valid", depth_multiplier: int = 1,
                 dilation_rate=(1, 1), activation=None, use_bias: bool = True,
                 depthwise_initializer="glorot_uniform", bias_initializer="zeros",
                 input_shape=None, name=None, dtype=None, trainable=True):
        self.depth_multiplier = check_positive_int(depth_multiplier, "depth_multiplier",
                                                   type(self).__name__)
        super().__init__(1, kernel_size, strides, padding, dilation_rate, activation, use_bias,
                         depthwise_initializer, bias_initializer, input_shape, name, dtype,
                         trainable)

    def build_params(self, input_shape):
        channels = input_shape[-1]
        self.filters = channels * self.depth_multiplier
        self.add_weight("kernel", (*self.kernel_size, channels, self.depth_multiplier),
                        self.kernel_initializer)                           # (KH, KW, C, M)
        if self.use_bias:
            self.add_weight("bias", (self.filters,), self.bias_initializer)  # (C*M,)

    def compute_output_shape(self, input_shape):
        self.filters = input_shape[-1] * self.depth_multiplier
        return super().compute_output_shape(input_shape)

    def folded_weights(self, affine):
        """The kernel ``(KH, KW, C, M)`` and bias (or None), with ``affine``, a ``(scale,
        shift)`` per output channel, folded in (None: the layer's own); output channel
        ``c * M + m`` is kernel ``[..., c, m]``."""
        kernel, bias = linear_weights(self)                                  # (KH, KW, C, M)
        if affine is None:
            return kernel, bias
        flat, bias = fold_affine(kernel.reshape(*kernel.shape[:2], -1), bias, *affine)
        return flat.reshape(kernel.shape), bias

    def fuses(self, activation, ctx):
        """At inference a ReLU runs inside the depthwise loops, on each row while it is in L1."""
        return activation == "relu" and not ctx.keep_cache

    def call(self, x, ctx, activation="linear"):
        kernel, bias = self.kernel_and_bias(ctx)
        if ctx.output_chain is not None:
            return self._with_chain(x, kernel, bias, activation == "relu", ctx), None
        return depthwise_conv2d_forward(x, kernel, bias, self.strides,
                                        self.pads_for(x.shape[1:3]), self.dilation_rate,
                                        ctx.free_list, relu=activation == "relu")

    def call_backward(self, grad_out, cache, input_grad):
        grad_x, grad_kernel, grad_bias = depthwise_conv2d_backward(grad_out, cache, input_grad)
        return grad_x, ([grad_kernel, grad_bias] if self.use_bias else [grad_kernel])

    def get_config(self):
        config = super().get_config()
        del config["filters"]
        config["depthwise_initializer"] = config.pop("kernel_initializer")
        return {**config, "depth_multiplier": self.depth_multiplier}


class SeparableConv2D(Conv2D):
    """A depthwise convolution (``depth_multiplier`` filters per channel, no bias) followed by a
    1x1 convolution that mixes the channels into ``filters``: the factorised convolution of
    MobileNet and Xception, at about ``1/filters + 1/(KH*KW)`` of a full conv's multiply-adds.
    Variables ``depthwise_kernel (KH, KW, C, M)``, ``pointwise_kernel (1, 1, C*M, filters)``,
    ``bias (filters,)``, as in Keras.
    """

    folds_output_affine = False            # its output comes from the pointwise step
    folds_output_residual = False
    folds_output_pool = False

    def __init__(self, filters: int, kernel_size, strides=(1, 1), padding="valid",
                 depth_multiplier: int = 1, dilation_rate=(1, 1), activation=None,
                 use_bias: bool = True, depthwise_initializer="glorot_uniform",
                 pointwise_initializer="glorot_uniform", bias_initializer="zeros",
                 input_shape=None, name=None, dtype=None, trainable=True):
        self.depth_multiplier = check_positive_int(depth_multiplier, "depth_multiplier",
                                                   type(self).__name__)
        initializers.get(pointwise_initializer)
        self.pointwise_initializer = pointwise_initializer
        super().__init__(filters, kernel_size, strides, padding, dilation_rate, activation,
                         use_bias, depthwise_initializer, bias_initializer, input_shape, name,
                         dtype, trainable)

    def build_params(self, input_shape):
        channels = input_shape[-1]
        self.add_weight("depthwise_kernel",
                        (*self.kernel_size, channels, self.depth_multiplier),
                        self.kernel_initializer)                           # (KH, KW, C, M)
        self.add_weight("pointwise_kernel", (1, 1, channels * self.depth_multiplier,
                                             self.filters),
                        self.pointwise_initializer)                        # (1, 1, C*M, F)
        if self.use_bias:
            self.add_weight("bias", (self.filters,), self.bias_initializer)  # (F,)

    def call(self, x, ctx):
        depthwise, pointwise = (self.compute_weight(v.value) for v in self.variables[:2])
        mid, depth_cache = depthwise_conv2d_forward(x, depthwise, None, self.strides,
                                                    self.pads_for(x.shape[1:3]),
                                                    self.dilation_rate)  # (N, Ho, Wo, C*M)
        bias = self.compute_weight(self.variables[2].value) if self.use_bias else None
        rows = mid.reshape(-1, mid.shape[-1])                                # (N*Ho*Wo, C*M)
        out, point_cache = dense_forward(rows, pointwise[0, 0], bias)       # (N*Ho*Wo, F)
        return out.reshape(*mid.shape[:3], self.filters), (depth_cache, point_cache, mid.shape)

    def call_backward(self, grad_out, cache, input_grad):
        depth_cache, point_cache, mid_shape = cache
        grad_mid, grad_point, grad_bias = dense_backward(
            grad_out.reshape(-1, self.filters), point_cache, True)
        grad_x, grad_depth, _ = depthwise_conv2d_backward(grad_mid.reshape(mid_shape),
                                                          depth_cache, input_grad)
        grads = [grad_depth, grad_point.reshape(1, 1, *grad_point.shape)]
        return grad_x, grads + ([grad_bias] if self.use_bias else [])

    def get_config(self):
        config = super().get_config()
        config["depthwise_initializer"] = config.pop("kernel_initializer")
        return {**config, "depth_multiplier": self.depth_multiplier,
                "pointwise_initializer": self.pointwise_initializer}
