"""The training tools modern recipes use, each against torch.optim / torch.optim.lr_scheduler or
Keras' published formula over 20 steps: AdamW, RMSprop, decoupled weight decay, clipping,
learning-rate schedules, label smoothing and ReduceLROnPlateau; and their errors."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

import cnnlab
from cnnlab import callbacks, layers, losses, optimizers
from cnnlab.errors import ConfigError
from cnnlab.training import schedules

STEPS = 20


def trajectories(ours, make_theirs, clip=None):
    """Our optimizer and torch's on the same 20 gradients (torch's clipping applied by hand)."""
    rng = np.random.default_rng(0)
    params = [rng.standard_normal((4, 3)), rng.standard_normal(3)]
    torch_params = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    theirs = make_theirs(torch_params)
    for _ in range(STEPS):
        grads = [rng.standard_normal(p.shape) * 3 for p in params]
        ours.apply(list(zip(params, grads)))
        for tp, g in zip(torch_params, grads):
            tp.grad = torch.tensor(g)
        if clip is not None:
            clip(torch_params)
        theirs.step()
    for p, tp in zip(params, torch_params):
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_adamw_equals_torch_adamw():
    ours = optimizers.AdamW(0.01)
    assert ours.weight_decay == 0.004                      # Keras 3's default
    trajectories(ours, lambda ps: torch.optim.AdamW(ps, lr=0.01, eps=1e-7, weight_decay=0.004))


@pytest.mark.parametrize("momentum,centered", [(0.0, False), (0.9, False), (0.5, True)])
def test_rmsprop_follows_keras_formula(momentum, centered):
    """Keras' rule, written out in NumPy here: epsilon inside the square root."""
    rng = np.random.default_rng(1)
    ours_p = [rng.standard_normal(5)]
    ref = ours_p[0].copy()
    v, a, m = np.zeros(5), np.zeros(5), np.zeros(5)
    opt = optimizers.RMSprop(0.01, rho=0.8, momentum=momentum, centered=centered,
                             weight_decay=0.01)
    for _ in range(STEPS):
        g = rng.standard_normal(5)
        opt.apply([(ours_p[0], g)])
        ref -= 0.01 * 0.01 * ref                           # decoupled weight decay first
        v = 0.8 * v + 0.2 * g * g
        a = 0.8 * a + 0.2 * g if centered else a
        increment = 0.01 * g / np.sqrt(v - a * a + 1e-7)
        m = momentum * m + increment
        ref -= m if momentum else increment
    np.testing.assert_allclose(ours_p[0], ref, rtol=1e-12)


def keras_clip_norm(tensors, max_norm):
    """Keras' rule, g * max_norm / norm when norm > max_norm (torch's clip_grad_norm_ divides
    by norm + 1e-6, 1e-7 away in float64)."""
    norm = math.sqrt(sum(float((t.grad ** 2).sum()) for t in tensors))
    if norm > max_norm:
        for t in tensors:
            t.grad *= max_norm / norm


def test_clipping_equals_keras_rule_and_torch_clip_value():
    def norm_each(params):
        for p in params:
            keras_clip_norm([p], 1.0)

    trajectories(optimizers.SGD(0.1, clipnorm=1.0), lambda ps: torch.optim.SGD(ps, lr=0.1),
                 clip=norm_each)
    trajectories(optimizers.SGD(0.1, global_clipnorm=1.0), lambda ps: torch.optim.SGD(ps, lr=0.1),
                 clip=lambda ps: keras_clip_norm(ps, 1.0))
    trajectories(optimizers.Adam(0.1, clipvalue=0.5), lambda ps: torch.optim.Adam(ps, lr=0.1,
                                                                                   eps=1e-7),
                 clip=lambda ps: torch.nn.utils.clip_grad_value_(ps, 0.5))


def torch_lrs(make_scheduler, steps=STEPS):
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("ours,theirs", [
    (lambda: schedules.ExponentialDecay(1.0, decay_steps=1, decay_rate=0.9),
     lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9)),
    (lambda: schedules.ExponentialDecay(1.0, decay_steps=4, decay_rate=0.5, staircase=True),
     lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=4, gamma=0.5)),
    (lambda: schedules.CosineDecay(1.0, decay_steps=STEPS - 1),
     lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=STEPS - 1)),
    (lambda: schedules.OneCycle(1.0, total_steps=STEPS),
     lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=1.0, total_steps=STEPS,
                                                   cycle_momentum=False)),
    (lambda: schedules.OneCycle(0.3, total_steps=STEPS, pct_start=0.25, div_factor=10,
                                final_div_factor=100),
     lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.3, total_steps=STEPS,
                                                   pct_start=0.25, div_factor=10,
                                                   final_div_factor=100, cycle_momentum=False)),
])
def test_schedules_equal_torch_schedulers(ours, theirs):
    schedule = ours()
    np.testing.assert_allclose([schedule(step) for step in range(STEPS)], torch_lrs(theirs),
                               rtol=1e-12)


def test_schedules_follow_keras_formulas():
    piecewise = schedules.PiecewiseConstantDecay([5, 10], [1.0, 0.5, 0.1])
    assert [piecewise(s) for s in (0, 5, 6, 10, 11, 100)] == [1.0, 1.0, 0.5, 0.5, 0.1, 0.1]
    cosine = schedules.CosineDecay(0.1, decay_steps=10, alpha=0.2, warmup_target=1.0,
                                   warmup_steps=5)
    expected = [0.1 + 0.9 * s / 5 for s in range(5)] + [
        1.0 * (0.8 * 0.5 * (1 + math.cos(math.pi * min(s - 5, 10) / 10)) + 0.2)
        for s in range(5, 20)]
    np.testing.assert_allclose([cosine(s) for s in range(20)], expected, rtol=1e-12)


def test_an_optimizer_follows_its_schedule_and_saves_it(tmp_path):
    schedule = schedules.CosineDecay(0.5, decay_steps=7)
    opt = optimizers.SGD(schedule)
    w = np.zeros(2)
    for step in range(10):
        before = w.copy()
        opt.apply([(w, np.ones(2))])
        np.testing.assert_allclose(before - w, schedule(step), rtol=1e-12)
    again = optimizers.get(optimizers.serialize(opt))
    assert isinstance(again.learning_rate, schedules.CosineDecay)
    assert again.learning_rate.get_config() == schedule.get_config()


def test_training_resumes_bit_exactly_with_a_schedule_midway(tmp_path):
    def run(crash_at=None):
        cnnlab.utils.set_random_seed(4)
        model = cnnlab.Sequential([layers.Input((6, 6, 1)), layers.Conv2D(3, 3,
                                                                          activation="relu"),
                                   layers.Flatten(), layers.Dense(3, activation="softmax")])
        opt = optimizers.AdamW(schedules.OneCycle(0.05, total_steps=30), clipnorm=1.0)
        model.compile(opt, losses.SparseCategoricalCrossentropy(label_smoothing=0.1))
        return model

    rng = np.random.default_rng(0)
    x, y = rng.random((40, 6, 6, 1)), rng.integers(0, 3, 40)
    model = run()
    model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    expected = model.get_weights()

    class Crash(callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.model.optimizer.iterations == 7:
                raise KeyboardInterrupt

    model = run()
    path = tmp_path / "ck.cnnlab"
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, batch_size=8, epochs=3, verbose=0,
                  callbacks=[callbacks.ModelCheckpoint(path, save_freq=1), Crash()])
    restored = cnnlab.load_model(path)
    assert restored.optimizer.iterations == 7
    restored.fit(x, y, batch_size=8, epochs=3, verbose=0,
                 initial_epoch=restored.training_state["epoch"])
    for a, b in zip(restored.get_weights(), expected):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("sparse", [False, True])
def test_label_smoothing_equals_torch(sparse):
    rng = np.random.default_rng(2)
    logits, labels = rng.standard_normal((6, 4)), rng.integers(0, 4, 6)
    onehot = np.eye(4)[labels]
    loss = (losses.SparseCategoricalCrossentropy if sparse else losses.CategoricalCrossentropy)(
        from_logits=True, label_smoothing=0.2)
    targets = labels if sparse else onehot
    value, cache = loss.forward_logits(logits, targets)
    grad = loss.backward_logits(cache)
    logits_t = torch.tensor(logits, requires_grad=True)
    expected = F.cross_entropy(logits_t, torch.tensor(labels), label_smoothing=0.2)
    expected.backward()
    assert value == pytest.approx(expected.item(), rel=1e-12)
    np.testing.assert_allclose(grad, logits_t.grad.numpy(), rtol=1e-12, atol=1e-15)
    probs = F.softmax(torch.tensor(logits), -1).numpy()      # and from probabilities
    assert loss.__class__(label_smoothing=0.2)(targets, probs) == pytest.approx(
        expected.item(), rel=1e-9)


def test_reduce_lr_on_plateau_follows_keras_rule():
    model = cnnlab.Sequential([layers.Input((2,)), layers.Dense(1)])
    model.compile(optimizers.SGD(1.0), "mse")
    callback = callbacks.ReduceLROnPlateau(factor=0.5, patience=2, cooldown=1, min_lr=0.2,
                                           min_delta=0.0)
    callback.set_model(model)
    callback.on_train_begin()
    seen = []
    for epoch, val_loss in enumerate([1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.8, 0.9, 0.9,
                                      0.9, 0.9, 0.9, 0.9]):
        logs = {"val_loss": val_loss}
        callback.on_epoch_end(epoch, logs)
        seen.append(model.optimizer.learning_rate)
    # waits 1, 2 -> halve and cool down one epoch (which, as in Keras, still counts a wait);
    # an improvement resets the wait; the last halving stops at min_lr, and nothing goes below
    assert seen == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.2, 0.2, 0.2, 0.2, 0.2]


def test_bad_tools_are_refused_by_name():
    with pytest.raises(ConfigError, match="clipnorm and global_clipnorm cannot both be set"):
        optimizers.Adam(clipnorm=1.0, global_clipnorm=1.0)

    class Negative(schedules.LearningRateSchedule):
        def __call__(self, step):
            return 0.1 - 0.05 * step

        def get_config(self):
            return {}

    opt = optimizers.SGD(Negative())
    w = np.zeros(1)
    for _ in range(3):                                   # 0.1, 0.05, 0.0: all fine
        opt.apply([(w, np.ones(1))])
    with pytest.raises(ConfigError, match=r"gives -0\.05\d* at step 3"):
        opt.apply([(w, np.ones(1))])
    with pytest.raises(ConfigError, match="label_smoothing must be in"):
        losses.CategoricalCrossentropy(label_smoothing=1.5)
    with pytest.raises(ConfigError, match="Unknown learning-rate schedule 'Cosine'.*CosineDecay"):
        optimizers.SGD({"class_name": "Cosine", "config": {}})
