"""A training run with every fast path on (batch sharding over threads, ReLU-pool fusion, the bias
folded into the GEMM, per-tap input gradients) follows PyTorch's loss curve step for step."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from test_golden_model import TorchArticleCNN, copy_weights_to_torch, torch_params_in_keras_layout

import cnnlab


def test_twenty_sgd_steps_follow_torch_loss_curve():
    cnnlab.config.set_floatx("float64")
    cnnlab.config.set_threads(2)
    torch.set_default_dtype(torch.float64)
    try:
        model = cnnlab.zoo.get("article")
        net = TorchArticleCNN().double()
        copy_weights_to_torch(model, net)
        model.compile(optimizer=cnnlab.optimizers.SGD(0.05, momentum=0.9),
                      loss="sparse_categorical_crossentropy")
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        (x, y), _ = cnnlab.datasets.mnist_sample.load_data()
        x, y = (x[:640] / 255.0)[..., None], y[:640].astype(np.int64)
        ours, theirs = [], []
        for step in range(20):
            batch = slice((step % 10) * 64, (step % 10) * 64 + 64)     # shards of 32 and 32
            ours.append(model.train_on_batch(x[batch], y[batch]))
            opt.zero_grad()
            loss = F.cross_entropy(net(torch.tensor(x[batch].transpose(0, 3, 1, 2))),
                                   torch.tensor(y[batch]))
            loss.backward()
            opt.step()
            theirs.append(loss.item())
        np.testing.assert_allclose(ours, theirs, rtol=1e-9)
        assert ours[-1] < ours[0] - 0.5                     # it really trained (2.30 -> 1.51)
        for w, wt in zip(model.get_weights(), torch_params_in_keras_layout(net)):
            np.testing.assert_allclose(w, wt, rtol=1e-8, atol=1e-12)
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("algorithm", ["auto", "winograd", "fourier"])
def test_twenty_steps_of_resnet20_follow_torch_loss_curve(algorithm, monkeypatch):
    """He et al.'s ResNet-20 (BatchNorm in training mode, residual adds, 1x1 projections as one
    GEMM, stride-2 convolutions) in float64 over two threads, its 3x3 stride-1 convolutions (and
    their input gradients) on the path the cost model picks, or all by Winograd, or all in the
    frequency domain: the same losses as PyTorch for 20 SGD steps, and the same predictions
    after them (weights and BatchNorm's moving statistics)."""
    from cnnlab.engine import conv
    from cnnlab.export import to_torch
    monkeypatch.setattr(conv, "ALGORITHM", algorithm)
    cnnlab.config.set_floatx("float64")
    cnnlab.config.set_threads(2)
    cnnlab.utils.set_random_seed(0)
    model = cnnlab.zoo.get("resnet20", input_shape=(16, 16, 3), num_classes=5)
    model.compile(optimizer=cnnlab.optimizers.SGD(0.05, momentum=0.9),
                  loss="sparse_categorical_crossentropy")
    net = to_torch(model).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    rng = np.random.default_rng(0)
    x, y = rng.random((320, 16, 16, 3)), rng.integers(0, 5, 320)
    ours, theirs = [], []
    for step in range(20):
        batch = slice((step % 10) * 32, (step % 10) * 32 + 32)          # shards of 16 and 16
        ours.append(model.train_on_batch(x[batch], y[batch]))
        opt.zero_grad()
        probabilities = net(torch.tensor(x[batch].transpose(0, 3, 1, 2)))
        loss = F.nll_loss(torch.log(probabilities), torch.tensor(y[batch]))
        loss.backward()
        opt.step()
        theirs.append(loss.item())
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)
    assert ours[-1] < ours[0] - 0.1                                        # it really trained
    with torch.no_grad():
        expected = net.eval()(torch.tensor(x[:64].transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(model.predict(x[:64], verbose=0), expected, rtol=1e-8,
                               atol=1e-12)
