"""The article's network trained the same way in cnnlab and in PyTorch: same initial weights, same
batches in the same order, same recipe (SGD lr 0.05, momentum 0.9, batch 128, 5 epochs). The two
test accuracies should agree within noise; the printout also gives each one's wall time.

    python benchmarks/recipe_vs_torch.py [--epochs 5] [--seeds 0 1 2]
"""

import argparse
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F  # noqa: N812

import cnnlab
from cnnlab import datasets


def torch_net(model):
    """PyTorch twin of cnnlab's article network, with cnnlab's initial weights."""
    net = nn.Sequential(nn.Conv2d(1, 32, 5), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Conv2d(32, 64, 5),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1024, 1000),
                        nn.ReLU(), nn.Linear(1000, 10))
    w = model.get_weights()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(w[0].transpose(3, 2, 0, 1)))
        net[0].bias.copy_(torch.tensor(w[1]))
        net[3].weight.copy_(torch.tensor(w[2].transpose(3, 2, 0, 1)))
        net[3].bias.copy_(torch.tensor(w[3]))
        # cnnlab flattens (H, W, C); torch flattens (C, H, W): permute the dense rows to match
        fc1 = w[4].reshape(4, 4, 64, 1000).transpose(2, 0, 1, 3).reshape(1024, 1000)
        net[7].weight.copy_(torch.tensor(fc1.T))
        net[7].bias.copy_(torch.tensor(w[5]))
        net[9].weight.copy_(torch.tensor(w[6].T))
        net[9].bias.copy_(torch.tensor(w[7]))
    return net


def run(seed, epochs):
    (x, y), (xt, yt) = datasets.mnist_sample.load_data()
    x, xt = datasets.as_model_input(x), datasets.as_model_input(xt)
    cnnlab.utils.set_random_seed(seed)
    model = cnnlab.zoo.get("article")
    net = torch_net(model)
    model.compile(optimizer=cnnlab.optimizers.SGD(0.05, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    orders = [np.random.default_rng([seed, e]).permutation(len(x)) for e in range(epochs)]
    start = time.perf_counter()
    for order in orders:                       # the same batches, in the same order, for both
        for i in range(0, len(x), 128):
            model.train_on_batch(x[order[i:i + 128]], y[order[i:i + 128]])
    ours_seconds = time.perf_counter() - start
    ours = model.evaluate(xt, yt, batch_size=500, verbose=0)[1]
    xs, ys = torch.tensor(x.transpose(0, 3, 1, 2)), torch.tensor(y.astype(np.int64))
    start = time.perf_counter()
    for order in orders:
        for i in range(0, len(x), 128):
            index = torch.tensor(order[i:i + 128])
            opt.zero_grad()
            F.cross_entropy(net(xs[index]), ys[index]).backward()
            opt.step()
    theirs_seconds = time.perf_counter() - start
    with torch.no_grad():
        theirs = (net(torch.tensor(xt.transpose(0, 3, 1, 2))).argmax(1).numpy() == yt).mean()
    return ours, theirs, ours_seconds, theirs_seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    print("| seed | cnnlab test accuracy | PyTorch test accuracy | cnnlab train s | PyTorch train s |")
    print("|---|---|---|---|---|")
    for seed in args.seeds:
        ours, theirs, a, b = run(seed, args.epochs)
        print(f"| {seed} | {ours:.2%} | {theirs:.2%} | {a:.1f} | {b:.1f} |", flush=True)


if __name__ == "__main__":
    main()
