"""Optimizer update rules against torch.optim; initializers' statistics against their formulas."""

import numpy as np
import pytest
import torch

from cnnlab import optimizers
from cnnlab.engine import initializers
from cnnlab.errors import ConfigError


def run_both(ours, make_theirs, steps=6, before_step=None):
    """Our optimizer and torch's on the same gradients; ``before_step(torch_params, step)`` adds
    what torch's optimizer does not (decoupled weight decay for SGD)."""
    rng = np.random.default_rng(0)
    params = [rng.standard_normal((4, 3)), rng.standard_normal(3)]
    torch_params = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    theirs = make_theirs(torch_params)
    for step in range(steps):
        grads = [rng.standard_normal(p.shape) for p in params]
        ours.apply(list(zip(params, grads)))
        for tp, g in zip(torch_params, grads):
            tp.grad = torch.tensor(g)
        if before_step is not None:
            with torch.no_grad():
                before_step(torch_params, step)
        theirs.step()
    for p, tp in zip(params, torch_params):
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("momentum,nesterov,weight_decay", [
    (0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 0.0), (0.5, False, 1e-2), (0.8, True, 5e-3)])
def test_sgd_matches_torch(momentum, nesterov, weight_decay):
    """Weight decay is decoupled, as in Keras 3: p -= lr * wd * p, then torch's SGD step."""
    def decay(params, step):
        for p in params:
            p -= 0.05 * weight_decay * p

    run_both(optimizers.SGD(0.05, momentum=momentum, nesterov=nesterov,
                            weight_decay=weight_decay),
             lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=momentum, nesterov=nesterov),
             before_step=decay)


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_adam_with_keras_defaults_matches_torch(weight_decay):
    ours = optimizers.Adam(weight_decay=weight_decay)
    assert (ours.learning_rate, ours.beta_1, ours.beta_2, ours.epsilon) == (0.001, 0.9, 0.999, 1e-7)
    run_both(ours, lambda ps: torch.optim.AdamW(ps, lr=0.001, betas=(0.9, 0.999), eps=1e-7,
                                                weight_decay=weight_decay))


def test_optimizer_state_round_trips():
    rng = np.random.default_rng(1)
    p = rng.standard_normal(5)
    opt = optimizers.Adam(0.01)
    for _ in range(3):
        opt.apply([("dense/kernel", p, rng.standard_normal(5))])
    p2 = p.copy()
    clone = optimizers.Adam.from_config(opt.get_config())
    assert sorted(opt.state_arrays()) == ["dense/kernel/m", "dense/kernel/v", "iterations"]
    clone.load_state_arrays(opt.state_arrays(), {"dense/kernel": p2})
    g = rng.standard_normal(5)
    opt.apply([("dense/kernel", p, g)])
    clone.apply([("dense/kernel", p2, g)])
    np.testing.assert_array_equal(p, p2)


@pytest.mark.parametrize("bad", [dict(learning_rate=-1), dict(momentum=1.5),
                                 dict(learning_rate=float("nan")), dict(nesterov=True)])
def test_bad_hyper_parameters_are_named(bad):
    with pytest.raises(ConfigError, match=next(iter(bad)) if "nesterov" not in bad else "nesterov"):
        optimizers.SGD(**bad)


def test_unknown_optimizer_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'adam'"):
        optimizers.get("adma")


def test_glorot_uniform_limits_and_variance():
    w = initializers.glorot_uniform((5, 5, 32, 64), np.random.default_rng(0), "float64")
    fan_in, fan_out = 5 * 5 * 32, 5 * 5 * 64
    limit = np.sqrt(6 / (fan_in + fan_out))
    assert np.abs(w).max() <= limit
    assert w.var() == pytest.approx(limit ** 2 / 3, rel=0.02)


def test_he_normal_is_truncated_with_the_right_std():
    w = initializers.he_normal((3, 3, 64, 128), np.random.default_rng(0), "float64")
    std = np.sqrt(2 / (3 * 3 * 64))
    assert w.std() == pytest.approx(std, rel=0.02)
    assert np.abs(w).max() <= 2 * std / 0.87962566103423978 + 1e-12


def test_initializers_are_seeded():
    a = initializers.glorot_uniform((3, 4), np.random.default_rng(5))
    b = initializers.glorot_uniform((3, 4), np.random.default_rng(5))
    assert a.dtype == np.float32 and np.array_equal(a, b)
    assert not initializers.zeros((3,)).any()


def test_he_uniform_lecun_normal_and_orthogonal_follow_their_formulas():
    rng = np.random.default_rng(1)
    w = initializers.he_uniform((3, 3, 64, 128), rng, "float64")
    limit = np.sqrt(6 / (3 * 3 * 64))
    assert np.abs(w).max() <= limit and w.var() == pytest.approx(limit ** 2 / 3, rel=0.02)
    w = initializers.lecun_normal((256, 512), rng, "float64")
    assert w.std() == pytest.approx(np.sqrt(1 / 256), rel=0.02)
    assert np.abs(w).max() <= 2 * np.sqrt(1 / 256) / 0.87962566103423978 + 1e-12
    for shape in ((3, 3, 8, 16), (64, 10), (10, 64)):
        q = initializers.orthogonal(shape, rng, "float64").reshape(-1, shape[-1])
        small = min(q.shape)
        gram = q.T @ q if q.shape[0] >= q.shape[1] else q @ q.T
        np.testing.assert_allclose(gram, np.eye(small), atol=1e-12)


def test_lr_is_learning_rate_and_setting_either_changes_the_next_step():
    """Before the fix ``optimizer.lr`` was None until the first step and then overwritten by
    each step: setting it was silently ignored."""
    opt = optimizers.SGD(learning_rate=0.1)
    assert opt.lr == 0.1
    w, g = np.ones(3), np.full(3, 2.0)
    opt.lr = 0.01                                       # Keras 2's spelling
    opt.apply([(w, g)])
    np.testing.assert_allclose(w, 1 - 0.01 * 2)
    opt.learning_rate = 0.5
    assert opt.lr == 0.5
    opt.apply([(w, g)])
    np.testing.assert_allclose(w, 1 - 0.01 * 2 - 0.5 * 2)
    with pytest.raises(ConfigError, match="learning_rate"):
        opt.lr = -1.0
    assert opt.learning_rate == 0.5
