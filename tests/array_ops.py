"""The ops that take their array module from their inputs, as calls to run on any module's
arrays: ``tests/test_arrays.py`` runs them on a stand-in for CuPy, ``tests/test_gpu.py`` on
CuPy."""

import numpy as np

from cnnlab.engine import activations, losses, merge

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
