"""A zoo model trained by its own recipe in cnnlab and in PyTorch, side by side: the same network
(``to_torch``), the same initial weights, the same batches in the same order with the same
augmentation, the same recipe. The two validation accuracies should agree within the spread
between seeds; the printout also gives each one's wall time.

    python benchmarks/recipe_vs_torch.py                                  # article, digits
    python benchmarks/recipe_vs_torch.py --model resnet20 --train 8000 --epochs 4
    python benchmarks/recipe_vs_torch.py --model cifar_vgg --train 40000 --epochs 8 --seeds 0 \\
        --only torch                       # PyTorch eager's time for the README's headline run

Digit models train on the bundled 10,000 MNIST digits (8,000 / 2,000). Photo models train on the
CIFAR-10 JPEG folder (``--data``, or the tarball in ``../shared`` extracted under /tmp), split as
``cnnlab train`` splits a folder (20% validation, seed 0), through cnnlab's own folder loader.

What each side runs (the recipe is ``cnnlab.zoo.RECIPES[model]``):
- cnnlab: ``model.train_on_batch`` with the optimizer ``cnnlab train`` builds (``runs``);
- PyTorch: ``torch.optim.SGD`` (momentum, dampening 0), ``torch.optim.lr_scheduler.OneCycleLR``
  (momentum not cycled) for a one-cycle recipe, decoupled weight decay as Keras 3 and cnnlab
  apply it (``p -= lr * wd * p`` before the step; ``torch.optim.SGD``'s own ``weight_decay`` is
  L2 in the gradient, a different rule), ``F.cross_entropy(label_smoothing=...)``.
The augmentation (flip, pad-4 crop) is drawn here, once per batch, and fed to both, so that the
two see the very same pixels; the models are built without their own augmentation layers.
"""

import argparse
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from cifar_folder import cifar_folder

import cnnlab
from cnnlab import datasets, runs, zoo
from cnnlab.data import FOLDER_VALIDATION_SPLIT
from cnnlab.export import to_torch

DIGIT_MODELS = ("article", "lenet5", "simple_convnet")


def load(model_name, data, train_count, val_count):
    """``(x, y), (x_val, y_val)`` float32 in [0, 1], NHWC."""
    if model_name in DIGIT_MODELS:
        (x, y), (xv, yv) = datasets.mnist_sample.load_data()
        x, xv = datasets.as_model_input(x), datasets.as_model_input(xv)
        return (x[:train_count], y[:train_count].astype(np.int64)), (xv[:val_count],
                                                                    yv[:val_count])
    from cnnlab.data.folders import decode
    from cnnlab.utils import image_dataset_from_directory
    train, val = image_dataset_from_directory(
        cifar_folder(data), image_size=(32, 32), validation_split=FOLDER_VALIDATION_SPLIT,
        subset="both", seed=0, verbose=False)

    def arrays(subset, count):
        paths = subset.file_paths[:count]
        x = np.stack([decode(p, "rgb", (32, 32), "bilinear") for p in paths]) / 255.0
        return x.astype(np.float32), subset.labels[:count]
    return arrays(train, train_count), arrays(val, val_count)


def augmented(x, rng):
    """Horizontal flip of half the batch, then a random 32x32 crop of the image padded by 4."""
    flip = rng.random(len(x)) < 0.5
    x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
    padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
    h, w = x.shape[1:3]
    dy, dx = rng.integers(0, 9, len(x)), rng.integers(0, 9, len(x))
    return np.stack([p[a:a + h, b:b + w] for p, a, b in zip(padded, dy, dx)])


def batches(x, y, seed, epochs, batch_size, augment):
    """Every batch of the run, in order: the same for both frameworks."""
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(x))
        for k, i in enumerate(range(0, len(x), batch_size)):
            xb, yb = x[order[i:i + batch_size]], y[order[i:i + batch_size]]
            if augment:
                xb = augmented(xb, np.random.default_rng([seed, epoch, k]))
            yield xb, yb


def torch_twin(model):
    """``to_torch`` of the model with the last layer's softmax left out: PyTorch's loss takes
    logits."""
    last = model.layers[-1]
    activation, last.activation = last.activation, "linear"
    try:
        return to_torch(model).train()
    finally:
        last.activation = activation


def run(model_name, seed, epochs, data, sides):
    settings = runs.run_settings(model=model_name, epochs=epochs)
    (x, y), (xv, yv) = data
    cnnlab.utils.set_random_seed(seed)
    model = zoo.get(model_name, input_shape=x.shape[1:], num_classes=10, augment=False)
    steps = epochs * -(-len(x) // settings["batch_size"])
    net = torch_twin(model)                                  # before cnnlab trains: same start
    result = {}
    if "cnnlab" in sides:
        model.compile(optimizer=runs.make_optimizer(settings, steps // epochs),
                      loss=cnnlab.losses.SparseCategoricalCrossentropy(
                          label_smoothing=settings["label_smoothing"]), metrics=["accuracy"])
        start = time.perf_counter()
        for xb, yb in batches(x, y, seed, epochs, settings["batch_size"], settings["augment"]):
            model.train_on_batch(xb, yb)
        result["cnnlab"] = (model.evaluate(xv, yv, batch_size=500, verbose=0)[1],
                            time.perf_counter() - start)
    if "torch" in sides:
        if settings["optimizer"] != "sgd":
            sys.exit(f"This benchmark's PyTorch side runs SGD recipes; {model_name}'s is "
                     f"{settings['optimizer']}.")
        opt = torch.optim.SGD(net.parameters(), lr=settings["lr"], momentum=settings["momentum"])
        schedule = (torch.optim.lr_scheduler.OneCycleLR(
            opt, settings["lr"], total_steps=steps, cycle_momentum=False)
            if settings["schedule"] == "onecycle" else None)
        start = time.perf_counter()
        for xb, yb in batches(x, y, seed, epochs, settings["batch_size"], settings["augment"]):
            opt.zero_grad()
            logits = net(torch.from_numpy(np.ascontiguousarray(xb.transpose(0, 3, 1, 2))))
            F.cross_entropy(logits, torch.from_numpy(yb.astype(np.int64)),
                            label_smoothing=settings["label_smoothing"]).backward()
            if settings["weight_decay"]:
                lr = opt.param_groups[0]["lr"]
                with torch.no_grad():
                    for p in net.parameters():
                        p.mul_(1 - lr * settings["weight_decay"])
            opt.step()
            if schedule is not None:
                schedule.step()
        net.eval()
        with torch.no_grad():
            logits = torch.cat([net(torch.from_numpy(xv[i:i + 500].transpose(0, 3, 1, 2)))
                                for i in range(0, len(xv), 500)])
        result["torch"] = ((logits.argmax(1).numpy() == yv).mean(),
                           time.perf_counter() - start)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="article", choices=sorted(zoo.RECIPES))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train", type=int, default=8000, help="training images used")
    parser.add_argument("--val", type=int, default=2000, help="validation images scored")
    parser.add_argument("--data", help="the CIFAR-10 folder (photo models)")
    parser.add_argument("--only", choices=["cnnlab", "torch"], help="run one side only")
    args = parser.parse_args()
    name = zoo.resolve(args.model)
    start = time.perf_counter()
    data = load(name, args.data, args.train, args.val)
    print(f"{name}: {len(data[0][0]):,} training images, {len(data[1][0]):,} validation images "
          f"(loaded in {time.perf_counter() - start:.0f} s); recipe: "
          f"{zoo.RECIPES[name].describe(name)}; run here for {args.epochs} epochs; "
          f"torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    sides = [args.only] if args.only else ["cnnlab", "torch"]
    print("| seed | " + " | ".join(f"{s} accuracy" for s in sides) + " | "
          + " | ".join(f"{s} train s" for s in sides) + " |")
    print("|---" * (1 + 2 * len(sides)) + "|")
    for seed in args.seeds:
        result = run(name, seed, args.epochs, data, sides)
        print(f"| {seed} | " + " | ".join(f"{result[s][0]:.2%}" for s in sides) + " | "
              + " | ".join(f"{result[s][1]:.0f}" for s in sides) + " |", flush=True)


if __name__ == "__main__":
    main()
