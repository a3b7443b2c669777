"""The ops that take their array module from their inputs, as calls to run on any module's
arrays: ``tests/test_arrays.py`` runs them on a stand-in for CuPy, ``tests/test_gpu.py`` on
CuPy; ``tests/test_placement.py`` trains whole models on the stand-in."""

import types

import numpy as np

from cnnlab import Input, Model, layers
from cnnlab.engine import (
    activations,
    conv,
    dense,
    depthwise,
    losses,
    merge,
    normalization,
    pool,
    updates,
    windows,
)

#: the engine modules whose ops take their array module from their inputs
MODULES = (activations, conv, dense, depthwise, losses, merge, normalization, pool, updates,
           windows)
LOSSES = ["softmax_cross_entropy", "sparse_softmax_cross_entropy", "categorical_crossentropy",
          "sparse_categorical_crossentropy", "mse"]
MERGES = ["add", "subtract", "multiply", "average", "maximum"]


def _through(forward, backward, inputs, grad):
    """``forward(*inputs)``, then its backward: ``backward(grad, cache)``, or for a loss
    (``grad`` None) ``backward(cache)``."""
    out, cache = forward(*inputs)
    return out, backward(cache) if grad is None else backward(grad, cache)


def op_cases(x, y, labels, probs, wide_grad):
    """``(name, zero-argument call)`` for every op that takes its module from its inputs,
    forward and backward together, on the arrays given."""
    cases = [(f"activation {name}", lambda pair=pair: _through(*pair, (x,), y))
             for name, pair in activations.ACTIVATIONS.items()]
    cases.append(("erf", lambda: activations.erf(x)))
    inputs = {"softmax_cross_entropy": (x, probs), "sparse_softmax_cross_entropy": (x, labels),
              "categorical_crossentropy": (probs, probs),
              "sparse_categorical_crossentropy": (probs, labels), "mse": (x, y)}
    for name in LOSSES:
        pair = getattr(losses, f"{name}_forward"), getattr(losses, f"{name}_backward")
        cases.append((f"loss {name}", lambda pair=pair, i=inputs[name]: _through(*pair, i, None)))
    for name in MERGES:
        pair = getattr(merge, f"{name}_forward"), getattr(merge, f"{name}_backward")
        cases.append((f"merge {name}", lambda pair=pair: _through(*pair, ([x, y],), y)))
    cases.append(("merge add + relu", lambda: _through(
        lambda xs: merge.add_forward(xs, relu=True), merge.add_backward, ([x, y],), y)))
    cases.append(("merge concatenate", lambda: _through(
        lambda xs: merge.concatenate_forward(xs, 1), merge.concatenate_backward, ([x, y],),
        wide_grad)))
    return cases


def sample_inputs(seed=0, rows=3, classes=5):
    """``(x, y, labels, probs, wide_grad)``: float64 maps of (rows, classes), integer labels,
    softmax probabilities, and a gradient for the two maps joined side by side."""
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((rows, classes)), rng.standard_normal((rows, classes))
    probs = activations.softmax_forward(x)[0]
    labels = rng.integers(0, classes, rows)
    return x, y, labels, probs, rng.standard_normal((rows, 2 * classes))


def values_in(result, array_type=np.ndarray) -> list:
    """Every array (of ``array_type``, 0-d included) and NumPy scalar in a nested result, in
    order: what two runs of a case are compared on."""
    if isinstance(result, (list, tuple)):
        return [v for item in result for v in values_in(item, array_type)]
    return [result] if isinstance(result, (array_type, np.generic)) else []


def image_op_cases(images, kernel, bias, gamma):
    """``(name, zero-argument call)`` for the image ops that take their module from their
    inputs: Dense, BatchNormalization (training, with and without its ReLU, the two-pass
    variance, and inference), max, average and global average pooling, convolutions on the
    im2col path, depthwise convolutions, dropout (its draws from a NumPy generator), the window
    helpers under them, and the optimizer updates; forward and backward together, on
    ``image_inputs``' arrays."""
    n, h, w, c = images.shape
    rows = images.reshape(-1, c)                                          # (N*H*W, C)
    grad_rows = rows[::-1] * 0.5 + 0.25
    flat = images.reshape(n, -1)                                          # (N, H*W*C)
    offset = rows + 100.0                          # a mean that dwarfs the spread: two passes
    same = ((1, 1), (1, 1))

    def batch_norm(x, relu):
        y, stats, cache = normalization.batch_norm_train_forward(x, gamma, gamma * 0.5, 1e-3,
                                                                 relu=relu)
        return y, stats, normalization.batch_norm_train_backward(grad_rows, cache)

    def infer(x):
        y, cache = normalization.batch_norm_infer_forward(x, gamma, gamma * 0.5, gamma * 0.1,
                                                          gamma * gamma, 1e-3)
        return y, normalization.batch_norm_infer_backward(grad_rows, cache)

    cases = [
        ("dense", lambda: _through(dense.dense_forward, dense.dense_backward,
                                   (flat, kernel, bias), flat[:, :kernel.shape[1]] * 2.0)),
        ("column sums", lambda: windows.column_sums(rows, np.float64)),
        ("column sums, blocked", lambda: windows.column_sums(
            rows.repeat(windows.SUM_BLOCK // len(rows) + 1, axis=0))),
        ("im2col", lambda: windows.im2col(images, (3, 3), (1, 1), same)),
        ("col2im", lambda: windows.col2im(
            windows.sliding_windows(windows.pad_images(images, same), (3, 3), (1, 1), (1, 1),
                                    (h, w)), images.shape, (1, 1), same)),
        ("batch norm", lambda: batch_norm(rows, False)),
        ("batch norm + relu", lambda: batch_norm(rows, True)),
        ("batch norm, two passes", lambda: batch_norm(offset, False)),
        ("batch norm, inference", lambda: infer(rows)),
    ]
    for name, (size, stride, pads) in {"2x2": ((2, 2), (2, 2), ((0, 0), (0, 0))),
                                       "3x3 stride 1 same": ((3, 3), (1, 1), same)}.items():
        out_hw = (h // stride[0], w // stride[1]) if stride == (2, 2) else (h, w)
        grad = images[:, :out_hw[0], :out_hw[1]] * 0.5
        cases.append((f"max pool {name}", lambda a=(size, stride, pads), g=grad: _through(
            lambda x: pool.max_pool2d_forward(x, *a), pool.max_pool2d_backward, (images,), g)))
        cases.append((f"average pool {name}", lambda a=(size, stride, pads), g=grad: _through(
            lambda x: pool.avg_pool2d_forward(x, *a), pool.avg_pool2d_backward, (images,), g)))
    cases.append(("global average pool", lambda: _through(
        pool.global_avg_pool2d_forward, pool.global_avg_pool2d_backward, (images,),
        images[:, 0, 0] * 3.0)))
    filters = kernel.reshape(-1)[:9 * c * 2].reshape(3, 3, c, 2)         # (3, 3, C, F=2)
    for name, (window, stride, pads) in {"3x3 same": (filters, (1, 1), same),
                                         "3x3 stride 2": (filters, (2, 2), ((0, 1), (0, 1))),
                                         "1x1": (filters[:1, :1], (1, 1), ((0, 0), (0, 0)))
                                         }.items():
        out_hw = (h // stride[0], w // stride[1])
        grad = images[:, :out_hw[0], :out_hw[1], :2] * 0.5
        cases.append((f"conv {name}", lambda a=(window, bias[:2], stride, pads), g=grad: _through(
            lambda x: conv.conv2d_forward(x, *a, algorithm="direct"), conv.conv2d_backward,
            (images,), g)))
    depth = kernel.reshape(-1)[:9 * c * 2].reshape(3, 3, c, 2)          # (3, 3, C, M=2)
    depth_bias = kernel.reshape(-1)[-2 * c:]                              # (C*M,)
    for name, (stride, pads) in {"same": ((1, 1), same),
                                 "stride 2": ((2, 2), ((0, 1), (0, 1)))}.items():
        out_hw = (h // stride[0], w // stride[1])
        grad = images[:, :out_hw[0], :out_hw[1]].repeat(2, axis=3) * 0.5    # (N, Ho, Wo, C*M)
        cases.append((f"depthwise conv {name}", lambda a=(depth, depth_bias, stride, pads),
                      g=grad: _through(
            lambda x: depthwise.depthwise_conv2d_forward(x, *a),
            depthwise.depthwise_conv2d_backward, (images,), g)))
    cases.append(("dropout", lambda: _through(
        lambda x: activations.dropout_forward(x, 0.3, np.random.default_rng(3)),
        activations.dropout_backward, (images,), images * 2.0)))

    def update(rule, slots, **settings):
        param, written = kernel.copy(), [kernel * 0.0 + 0.5 for _ in range(slots)]
        rule(param, kernel[::-1] * 0.1, *written, **settings)
        return param, written

    cases += [
        ("sgd", lambda: update(updates.sgd, 1, lr=0.1, momentum=0.9, nesterov=True, decay=0.01,
                               clip=0.05)),
        ("adam", lambda: update(updates.adam, 2, step_size=0.01, beta_1=0.9, beta_2=0.999,
                                bias_root=0.3, epsilon=1e-7)),
        ("rmsprop", lambda: update(updates.rmsprop, 3, lr=0.01, rho=0.9, momentum=0.5,
                                   epsilon=1e-7, scale=0.5)),
    ]
    return cases


def image_inputs(seed=0, n=2, size=6, channels=3, units=4):
    """``(images (N, H, W, C), kernel (H*W*C, units), bias (units,), gamma (C,))`` in float64."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, size, size, channels)),
            rng.standard_normal((size * size * channels, units)), rng.standard_normal(units),
            rng.uniform(0.5, 2.0, channels))


# --- a stand-in for CuPy: NumPy underneath, so values can be compared -----------------------------
class StandInArray(np.ndarray):
    """An array that says it is CuPy's, as ``cupy.ndarray`` does."""

    def get(self) -> np.ndarray:
        """A NumPy copy, as ``cupy.ndarray.get`` copies off the device."""
        return np.array(self.view(np.ndarray))

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        """Arithmetic with a NumPy array (not a scalar) is refused, as CuPy refuses it: data on
        the host that should have been moved to the device first."""
        operands = inputs + tuple(kwargs.get("out", ()))
        if any(type(a) is np.ndarray and a.ndim for a in operands):
            raise TypeError(f"{ufunc.__name__} mixes a host (NumPy) array with a device one")
        plain = [a.view(np.ndarray) if isinstance(a, StandInArray) else a for a in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(a.view(np.ndarray) if isinstance(a, StandInArray) else a
                                  for a in kwargs["out"])
        result = getattr(ufunc, method)(*plain, **kwargs)
        if isinstance(result, tuple):
            return tuple(r.view(StandInArray) if isinstance(r, np.ndarray) else r
                         for r in result)
        return result.view(StandInArray) if isinstance(result, np.ndarray) else result


StandInArray.__module__ = "cupy"


def stand_in_module(looked_up: set):
    """A module named ``cupy`` that records which functions the ops take from it and runs
    NumPy's, returning stand-in arrays."""
    def lookup(name):
        function = getattr(np, name)
        if not callable(function) or isinstance(function, type):
            return function

        def call(*args, **kwargs):
            looked_up.add(name)
            if name == "asarray" and type(args[0]) is np.ndarray:   # host to device: a copy
                args = (np.array(args[0]), *args[1:])
            result = function(*args, **kwargs)
            return result.view(StandInArray) if isinstance(result, np.ndarray) else result
        return call
    def as_strided(x, shape=None, strides=None):     # CuPy's signature: no read-only views
        looked_up.add("lib.stride_tricks.as_strided")
        return np.lib.stride_tricks.as_strided(x, shape, strides, subok=True)

    module = types.ModuleType("cupy")
    module.__getattr__ = lookup
    module.lib = types.SimpleNamespace(stride_tricks=types.SimpleNamespace(as_strided=as_strided))
    return module


class NoNumPy:
    """Put in place of an op module's ``np``: any use of it fails the test, but for the dtypes
    and constants that name a type or a value on either module."""

    ALLOWED = {"uint8", "int32", "float32", "float64", "inf", "ndarray"}

    def __getattr__(self, name):
        if name in self.ALLOWED:
            return getattr(np, name)
        raise AssertionError(f"np.{name} was used directly")


def small_network():
    """Every kind of layer whose state a training step touches: a convolution,
    BatchNormalization's variables and moving statistics, a residual Add, max pooling, dropout
    (its mask drawn on the host), a dense head. (N, 8, 8, 3) -> (N, 4) probabilities."""
    x = Input((8, 8, 3))
    h = layers.Conv2D(6, 3, padding="same", use_bias=False)(x)
    h = layers.ReLU()(layers.BatchNormalization(momentum=0.5)(h))
    shortcut = layers.Conv2D(6, 1)(x)
    h = layers.Add()([layers.Conv2D(6, 3, padding="same")(h), shortcut])
    h = layers.MaxPooling2D(2)(layers.ReLU()(h))
    h = layers.Dropout(0.25)(layers.Flatten()(h))
    return Model(x, layers.Dense(4, activation="softmax")(h))
