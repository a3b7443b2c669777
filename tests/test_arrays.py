"""The ops that take their array module from their inputs (``engine.arrays``): given arrays of
another module, they compute with that module and never with NumPy directly. Checked here with
a stand-in for CuPy (NumPy underneath, so the values can be compared); ``tests/test_gpu.py``
runs the same ops on CuPy itself where there is a GPU."""

import sys

import numpy as np
from array_ops import (
    MODULES,
    NoNumPy,
    StandInArray,
    image_inputs,
    image_op_cases,
    op_cases,
    sample_inputs,
    stand_in_module,
    values_in,
)

from cnnlab import config
from cnnlab.engine import arrays, conv


def test_numpy_arrays_use_numpy_and_never_import_cupy(monkeypatch):
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    assert arrays.array_module(np.ones(2), 3.0, [1]) is np
    assert "cupy" not in sys.modules


def _on_stand_ins(monkeypatch, cases_of, inputs) -> set:
    """Every case on stand-in copies of ``inputs``, each engine module's ``np`` taken away:
    arrays of the stand-in's type back (a NumPy array would be data leaving the device), bit
    for bit the NumPy reference's values (compiled kernels off: a stand-in runs the reference,
    and every convolution on im2col). Returns the stand-in module's functions the ops used."""
    monkeypatch.setattr(conv, "ALGORITHM", "direct")
    kernels = config.kernels()
    config.set_kernels("numpy")
    try:
        expected = {name: case() for name, case in cases_of(*inputs)}
    finally:
        config.set_kernels(kernels)
    looked_up: set = set()
    monkeypatch.setitem(sys.modules, "cupy", stand_in_module(looked_up))
    for module in MODULES:
        monkeypatch.setattr(module, "np", NoNumPy())
    for name, case in cases_of(*[a.view(StandInArray) for a in inputs]):
        result = case()
        for got, want in zip(values_in(result), values_in(expected[name]), strict=True):
            assert type(got) is StandInArray or np.ndim(got) == 0, name   # reductions: scalars
            np.testing.assert_array_equal(np.asarray(got), want, err_msg=name)
    return looked_up


def test_ops_compute_with_the_module_of_their_inputs(monkeypatch):
    """The activations, losses and merges, forward and backward."""
    looked_up = _on_stand_ins(monkeypatch, op_cases, sample_inputs())
    assert {"maximum", "exp", "log", "tanh", "where", "arange", "clip", "stack",
            "concatenate", "split"} <= looked_up


def test_image_ops_compute_with_the_module_of_their_inputs(monkeypatch):
    """Dense, BatchNormalization, pooling, convolutions, dropout, the window helpers and the
    optimizer updates."""
    looked_up = _on_stand_ins(monkeypatch, image_op_cases, image_inputs())
    assert {"empty", "zeros", "ones", "copyto", "multiply", "stack", "concatenate", "sqrt",
            "any", "maximum", "broadcast_to", "asarray", "lib.stride_tricks.as_strided",
            "vstack", "matmul", "ascontiguousarray", "clip", "result_type", "empty_like",
            "zeros_like"} <= looked_up


def test_a_recycled_array_is_handed_out_again_only_when_nothing_else_holds_it():
    """``arrays.recycled`` gives a call site its previous array back once the caller has let
    go of it, and a new one while anything (a variable, a view) still refers to it or the shape
    or dtype changed."""
    workspace = {}
    first = arrays.recycled(workspace, "out", (2, 3), np.float32)
    first_id = id(first)
    del first
    again = arrays.recycled(workspace, "out", (2, 3), np.float32)
    assert id(again) == first_id
    held = arrays.recycled(workspace, "out", (2, 3), np.float32)
    assert held is not again                       # `again` still holds the first
    view = held[1:]
    del held
    assert id(arrays.recycled(workspace, "out", (2, 3), np.float32)) != id(view.base)
    assert arrays.recycled(workspace, "out", (3, 2), np.float32).shape == (3, 2)
    assert arrays.recycled(None, "out", (2, 3), np.float64).dtype == np.float64


def test_a_free_list_hands_back_the_last_free_array_of_a_shape_and_forgets_what_a_pass_left():
    """``arrays.FreeList.take`` gives back the most recently taken array of that shape and
    dtype that nothing (a variable, a view) refers to any more, else a new one; a pass that did
    not take an array lets it go at the next ``start_pass``."""
    free = arrays.FreeList()
    first = free.take((2, 3), np.float32)
    second = free.take((2, 3), np.float32)
    assert second is not first                     # `first` still holds its array
    first_id, second_id = id(first), id(second)
    del first, second
    assert id(free.take((2, 3), np.float32)) == second_id      # the later one first
    assert id(free.take([2, 3], "float32")) == second_id       # the same shape and dtype
    view = free.take((2, 3), np.float32)[1:]
    assert id(view.base) == second_id
    assert id(free.take((2, 3), np.float32)) == first_id       # the view holds the other
    assert free.take((2, 3), np.float64).dtype == np.float64
    assert free.take((3, 2), np.float32).shape == (3, 2)
    del view
    free.start_pass()
    kept = free.take((2, 3), np.float32)           # taken in the pass before: kept
    assert id(kept) in (first_id, second_id)
    kept_id = id(kept)
    del kept
    free.start_pass()                              # (3, 2) and float64 were not taken again
    assert [id(a) for kept in free._kept.values() for a in kept] == [kept_id]
    free.start_pass()                              # nor was anything in the last pass
    assert free._kept == {}
