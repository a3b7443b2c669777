"""The article's whole network in cnnlab and in PyTorch, with the same weights and batch: equal
logits, loss and every parameter gradient, and equal weights after 5 SGD-momentum steps and after
5 Adam steps (float64). Also finite differences through a whole small network."""

import numpy as np
import pytest
import torch
import torch.nn as nn  # noqa: PLR0402
import torch.nn.functional as F  # noqa: N812
from reference import assert_close, finite_difference_grad

import cnnlab
from cnnlab import layers, optimizers


class TorchArticleCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5)
        self.conv2 = nn.Conv2d(32, 64, 5)
        self.fc1 = nn.Linear(1024, 1000)
        self.fc2 = nn.Linear(1000, 10)

    def forward(self, x):                         # x: NCHW
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.permute(0, 2, 3, 1).flatten(1)      # flatten in NHWC order, as cnnlab/Keras do
        return self.fc2(F.relu(self.fc1(x)))      # logits


def copy_weights_to_torch(model, net):
    w = model.get_weights()
    with torch.no_grad():
        net.conv1.weight.copy_(torch.tensor(w[0].transpose(3, 2, 0, 1)))
        net.conv1.bias.copy_(torch.tensor(w[1]))
        net.conv2.weight.copy_(torch.tensor(w[2].transpose(3, 2, 0, 1)))
        net.conv2.bias.copy_(torch.tensor(w[3]))
        net.fc1.weight.copy_(torch.tensor(w[4].T))
        net.fc1.bias.copy_(torch.tensor(w[5]))
        net.fc2.weight.copy_(torch.tensor(w[6].T))
        net.fc2.bias.copy_(torch.tensor(w[7]))


def torch_params_in_keras_layout(net):
    return [net.conv1.weight.detach().numpy().transpose(2, 3, 1, 0), net.conv1.bias.detach().numpy(),
            net.conv2.weight.detach().numpy().transpose(2, 3, 1, 0), net.conv2.bias.detach().numpy(),
            net.fc1.weight.detach().numpy().T, net.fc1.bias.detach().numpy(),
            net.fc2.weight.detach().numpy().T, net.fc2.bias.detach().numpy()]


def torch_grads_in_keras_layout(net):
    return [net.conv1.weight.grad.numpy().transpose(2, 3, 1, 0), net.conv1.bias.grad.numpy(),
            net.conv2.weight.grad.numpy().transpose(2, 3, 1, 0), net.conv2.bias.grad.numpy(),
            net.fc1.weight.grad.numpy().T, net.fc1.bias.grad.numpy(),
            net.fc2.weight.grad.numpy().T, net.fc2.bias.grad.numpy()]


@pytest.fixture
def setup():
    cnnlab.config.set_floatx("float64")
    torch.set_default_dtype(torch.float64)
    model = cnnlab.zoo.get("article")
    # non-zero biases so their gradients and updates are really exercised
    rng = np.random.default_rng(0)
    model.set_weights([w + 0.05 * rng.standard_normal(w.shape) if w.ndim == 1 else w
                       for w in model.get_weights()])
    net = TorchArticleCNN().double()
    copy_weights_to_torch(model, net)
    (x, y), _ = cnnlab.datasets.mnist_sample.load_data()
    x = (x[:16] / 255.0)[..., None]
    y = y[:16].astype(np.int64)
    yield model, net, x, y
    torch.set_default_dtype(torch.float32)


def test_logits_loss_and_every_gradient_equal_torch(setup):
    model, net, x, y = setup
    model.compile(optimizer=optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    loss, logits, grads = model.loss_and_gradients(x, y)

    logits_t = net(torch.tensor(x.transpose(0, 3, 1, 2)))
    loss_t = F.cross_entropy(logits_t, torch.tensor(y))
    loss_t.backward()
    assert_close(logits, logits_t.detach().numpy(), np.float64, "logits")
    assert_close(loss, loss_t.item(), np.float64, "loss")
    ours = list(grads.values())
    assert list(grads) == model.weight_names                     # every parameter, by name
    for i, (g, gt) in enumerate(zip(ours, torch_grads_in_keras_layout(net))):
        assert_close(g, gt, np.float64, f"gradient {i}")
    probs = model.predict(x, verbose=0)
    assert_close(probs, F.softmax(logits_t, -1).detach().numpy(), np.float64, "softmax output")


@pytest.mark.parametrize("make_ours,make_theirs", [
    (lambda: optimizers.SGD(0.05, momentum=0.9),
     lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9)),
    (lambda: optimizers.Adam(0.001),
     lambda ps: torch.optim.Adam(ps, lr=0.001, eps=1e-7)),
])
def test_five_training_steps_equal_torch(setup, make_ours, make_theirs):
    model, net, x, y = setup
    model.compile(optimizer=make_ours(), loss="categorical_crossentropy")
    opt_t = make_theirs(net.parameters())
    onehot = cnnlab.utils.to_categorical(y, 10, dtype="float64")
    for step in range(5):
        batch = slice(step * 3, step * 3 + 8)           # overlapping batches of 8
        model.train_on_batch(x[batch], onehot[batch])
        opt_t.zero_grad()
        F.cross_entropy(net(torch.tensor(x[batch].transpose(0, 3, 1, 2))),
                        torch.tensor(y[batch])).backward()
        opt_t.step()
    for i, (w, wt) in enumerate(zip(model.get_weights(), torch_params_in_keras_layout(net))):
        assert_close(w, wt, np.float64, f"weight {i} after 5 steps")


def test_float32_model_matches_torch_float32():
    model = cnnlab.zoo.get("article")
    net = TorchArticleCNN()
    copy_weights_to_torch(model, net)
    (x, y), _ = cnnlab.datasets.mnist_sample.load_data()
    x = (x[:8] / 255.0).astype(np.float32)[..., None]
    out = model.predict(x, verbose=0)
    expected = F.softmax(net(torch.tensor(x.transpose(0, 3, 1, 2))), -1).detach().numpy()
    assert out.dtype == np.float32
    assert_close(out, expected, np.float32, "probabilities")


def test_whole_small_network_matches_finite_differences():
    cnnlab.config.set_floatx("float64")
    model = cnnlab.Sequential([
        layers.Input((7, 6, 2)),
        layers.Conv2D(3, 3, padding="same", activation="relu"),
        layers.AveragePooling2D(2, padding="same"),
        layers.Conv2D(4, 2, strides=2, dilation_rate=1, activation="tanh"),
        layers.MaxPooling2D(1),
        layers.Flatten(),
        layers.Dense(5, activation="sigmoid"),
        layers.Dense(3, activation="softmax"),
    ])
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 7, 6, 2))
    y = cnnlab.utils.to_categorical(rng.integers(0, 3, 4), 3, dtype="float64")

    def loss():
        return float(model.test_on_batch(x, y))

    _, _, grads = model.loss_and_gradients(x, y)
    assert len(grads) == len(model.weights)
    for (name, grad), weight in zip(grads.items(), model.weights):
        picks, numeric = finite_difference_grad(loss, weight, max_entries=12)
        np.testing.assert_allclose(grad.reshape(-1)[picks], numeric, rtol=1e-5, atol=1e-8,
                                   err_msg=name)
