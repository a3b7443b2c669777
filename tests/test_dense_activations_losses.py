"""Dense, flatten, activations, dropout and losses against PyTorch and finite differences."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from reference import assert_close, finite_difference_grad

from cnnlab.engine import activations as act
from cnnlab.engine import losses
from cnnlab.engine.dense import dense_backward, dense_forward, flatten_backward, flatten_forward

DTYPES = [np.float64, np.float32]


def torch_check(forward, backward, torch_fn, x, dtype, rng, cache_is_out=False):
    out, cache = forward(x)
    grad_out = rng.standard_normal(out.shape).astype(dtype)
    grad_x = backward(grad_out, cache)
    xt = torch.tensor(x, requires_grad=True)
    outt = torch_fn(xt)
    (outt * torch.tensor(grad_out)).sum().backward()
    assert_close(out, outt.detach().numpy(), dtype, "forward")
    assert_close(grad_x, xt.grad.numpy(), dtype, "grad_x")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,torch_fn", [
    ("relu", F.relu), ("tanh", torch.tanh), ("sigmoid", torch.sigmoid),
    ("softmax", lambda t: F.softmax(t, dim=-1)), ("log_softmax", lambda t: F.log_softmax(t, -1))])
def test_activations_match_torch(name, torch_fn, dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((4, 3, 7)) * 3).astype(dtype)
    x[0, 0, :3] = 0.0                                       # relu's kink: gradient 0, as torch
    forward, backward = act.ACTIVATIONS[name]
    torch_check(forward, backward, torch_fn, x, dtype, rng)


@pytest.mark.parametrize("name", ["relu", "tanh", "sigmoid", "softmax", "log_softmax"])
def test_activation_gradients_match_finite_differences(name):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5)) + 0.1
    forward, backward = act.ACTIVATIONS[name]
    grad_out = rng.standard_normal((3, 5))
    grad_x = backward(grad_out, forward(x)[1])
    picks, numeric = finite_difference_grad(lambda: float((forward(x)[0] * grad_out).sum()), x)
    np.testing.assert_allclose(grad_x.reshape(-1)[picks], numeric, rtol=1e-6, atol=1e-8)


def test_softmax_is_finite_for_huge_logits():
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], dtype=np.float32)
    out, _ = act.softmax_forward(x)
    log_out, _ = act.log_softmax_forward(x)
    assert np.isfinite(out).all() and np.isfinite(log_out).all()
    assert_close(log_out, F.log_softmax(torch.tensor(x), -1).numpy(), np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", [5, 1])
def test_dense_matches_torch(dtype, bias, batch):
    """Batch 1 included: its weight gradient is an outer product, which goes to BLAS with a row
    of zeros added (``windows.transposed_product``)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((batch, 12)).astype(dtype)
    kernel = rng.standard_normal((12, 7)).astype(dtype)
    b = rng.standard_normal(7).astype(dtype) if bias else None
    out, cache = dense_forward(x, kernel, b)
    grad_out = rng.standard_normal(out.shape).astype(dtype)
    grad_x, grad_kernel, grad_bias = dense_backward(grad_out, cache)
    xt, kt = torch.tensor(x, requires_grad=True), torch.tensor(kernel.T.copy(), requires_grad=True)
    bt = torch.tensor(b, requires_grad=True) if bias else None
    outt = F.linear(xt, kt, bt)
    (outt * torch.tensor(grad_out)).sum().backward()
    assert_close(out, outt.detach().numpy(), dtype, "forward")
    assert_close(grad_x, xt.grad.numpy(), dtype, "grad_x")
    assert_close(grad_kernel, kt.grad.numpy().T, dtype, "grad_kernel")
    if bias:
        assert_close(grad_bias, bt.grad.numpy(), dtype, "grad_bias")


def test_dense_gradients_match_finite_differences():
    rng = np.random.default_rng(3)
    x, kernel, b = rng.standard_normal((4, 6)), rng.standard_normal((6, 3)), rng.standard_normal(3)
    grad_out = rng.standard_normal((4, 3))
    grads = dense_backward(grad_out, dense_forward(x, kernel, b)[1])
    for array, grad in zip((x, kernel, b), grads):
        picks, numeric = finite_difference_grad(
            lambda: float((dense_forward(x, kernel, b)[0] * grad_out).sum()), array)
        np.testing.assert_allclose(grad.reshape(-1)[picks], numeric, rtol=1e-6, atol=1e-8)


def test_flatten_is_nhwc_row_major_and_round_trips():
    x = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    out, cache = flatten_forward(x)
    assert out.shape == (2, 60) and out[1, 7] == x[1, 0, 1, 2]
    assert np.array_equal(flatten_backward(out, cache), x)


def test_dropout_is_inverted_and_matches_torch_given_the_mask():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((200, 50))
    out, mask = act.dropout_forward(x, 0.3, np.random.default_rng(9))
    keep = mask != 0
    assert 0.65 < keep.mean() < 0.75
    np.testing.assert_allclose(out, np.where(keep, x / 0.7, 0.0), rtol=1e-12)
    # torch's dropout is x * bernoulli_mask / (1 - p): the same function of the same mask
    np.testing.assert_allclose(out, (torch.tensor(x) * torch.tensor(keep) / 0.7).numpy(),
                               rtol=1e-12)
    grad = act.dropout_backward(np.ones_like(x), mask)
    np.testing.assert_array_equal(grad, mask)
    again, _ = act.dropout_forward(x, 0.3, np.random.default_rng(9))
    np.testing.assert_array_equal(out, again)               # seeded: repeatable


# --- losses ---------------------------------------------------------------------------------
def logits_and_labels(dtype, scale=3.0, n=6, k=5):
    rng = np.random.default_rng(5)
    logits = (rng.standard_normal((n, k)) * scale).astype(dtype)
    labels = rng.integers(0, k, n)
    return logits, labels, np.eye(k, dtype=dtype)[labels]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_fused_softmax_cross_entropy_matches_torch(dtype, scale):
    logits, labels, onehot = logits_and_labels(dtype, scale)
    lt = torch.tensor(logits, requires_grad=True)
    expected = F.cross_entropy(lt, torch.tensor(labels))
    expected.backward()
    for forward, backward, target in [
            (losses.softmax_cross_entropy_forward, losses.softmax_cross_entropy_backward, onehot),
            (losses.sparse_softmax_cross_entropy_forward,
             losses.sparse_softmax_cross_entropy_backward, labels)]:
        loss, cache = forward(logits, target)
        grad = backward(cache)
        assert np.isfinite(loss) and np.isfinite(grad).all()
        assert_close(loss, expected.item(), dtype, "loss")
        assert_close(grad, lt.grad.numpy(), dtype, "grad")


@pytest.mark.parametrize("dtype", DTYPES)
def test_probability_cross_entropy_matches_torch(dtype):
    logits, labels, onehot = logits_and_labels(dtype)
    probs, _ = act.softmax_forward(logits)
    pt = torch.tensor(probs, requires_grad=True)
    expected = -(torch.tensor(onehot) * torch.log(pt)).sum() / len(labels)
    expected.backward()
    for forward, backward, target in [
            (losses.categorical_crossentropy_forward, losses.categorical_crossentropy_backward,
             onehot),
            (losses.sparse_categorical_crossentropy_forward,
             losses.sparse_categorical_crossentropy_backward, labels)]:
        loss, cache = forward(probs, target)
        assert_close(loss, expected.item(), dtype, "loss")
        assert_close(backward(cache), pt.grad.numpy(), dtype, "grad")


def test_probability_cross_entropy_is_clipped_like_keras():
    loss, _ = losses.categorical_crossentropy_forward(np.array([[0.0, 1.0]]),
                                                      np.array([[1.0, 0.0]]))
    assert loss == pytest.approx(-np.log(1e-7))


@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_matches_torch(dtype):
    rng = np.random.default_rng(6)
    pred, target = rng.standard_normal((4, 3, 2)).astype(dtype), rng.standard_normal((4, 3, 2))
    pt = torch.tensor(pred, requires_grad=True)
    expected = F.mse_loss(pt, torch.tensor(target.astype(dtype)))
    expected.backward()
    loss, cache = losses.mse_forward(pred, target.astype(dtype))
    assert_close(loss, expected.item(), dtype, "loss")
    assert_close(losses.mse_backward(cache), pt.grad.numpy(), dtype, "grad")


def test_loss_gradients_match_finite_differences():
    logits, labels, onehot = logits_and_labels(np.float64)
    for forward, backward, target in [
            (losses.softmax_cross_entropy_forward, losses.softmax_cross_entropy_backward, onehot),
            (losses.sparse_softmax_cross_entropy_forward,
             losses.sparse_softmax_cross_entropy_backward, labels),
            (losses.mse_forward, losses.mse_backward, onehot)]:
        grad = backward(forward(logits, target)[1])
        picks, numeric = finite_difference_grad(
            lambda f=forward, t=target: float(f(logits, t)[0]), logits)
        np.testing.assert_allclose(grad.reshape(-1)[picks], numeric, rtol=1e-6, atol=1e-9)
