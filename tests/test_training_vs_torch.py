"""A training run with every fast path on (batch sharding over threads, ReLU-pool fusion, the bias
folded into the GEMM, per-tap input gradients) follows PyTorch's loss curve step for step."""

import numpy as np
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
