"""Learning from a handful of photos: from scratch against transfer, on classes the backbone
never saw.

    python recipes/pretrain.py cifar10 --data DIR --out /tmp/backbone8.cnnlab \
        --classes airplane,automobile,bird,deer,frog,horse,ship,truck
    python benchmarks/transfer.py --data DIR --backbone /tmp/backbone8.cnnlab

The backbone is cifar_vgg trained with its recipe on 8 CIFAR-10 classes (the other 2, cat and
dog, held out entirely). Each trial draws N training images per held-out class (N = 20 and
50) and scores on 1,000 other images per class, three ways:

- from scratch: cifar_vgg with its photo recipe, at batch 16 for 30 epochs (the recipe's batch
  of 128 would make a step or two per epoch);
- transfer: the frozen backbone with a new head (`cnnlab train --pretrained`'s recipe);
- transfer + fine-tuning (`--pretrained --fine-tune`).

Each is the mean over seeds; every number is printed, with the time it took.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from PIL import Image

import cnnlab
from cnnlab import losses, zoo
from cnnlab.runs import UnfreezeBackbone, make_optimizer, run_settings


def load(paths) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) / 255 for p in paths])


def trial(data, classes, per_class, seed, backbone, test_per_class=1000):
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label, name in enumerate(classes):
        files = sorted(os.listdir(os.path.join(data, name)))
        order = rng.permutation(len(files))
        train += [(os.path.join(data, name, files[i]), label) for i in order[:per_class]]
        test += [(os.path.join(data, name, files[i]), label)
                 for i in order[per_class:per_class + test_per_class]]
    x, y = load([p for p, _ in train]), np.array([label for _, label in train])
    x_test, y_test = load([p for p, _ in test]), np.array([label for _, label in test])
    results = {}
    for way in ("scratch", "transfer", "fine-tune"):
        cnnlab.utils.set_random_seed(seed)
        if way == "scratch":
            settings = run_settings(model="cifar_vgg", batch_size=16, epochs=30)
            model = zoo.get("cifar_vgg", num_classes=len(classes), augment=True)
            callbacks = []
        else:
            settings = run_settings(model="cifar_vgg", pretrained="cifar10",
                                    fine_tune=zoo.FINE_TUNE_EPOCHS if way == "fine-tune" else 0)
            base = zoo.get("cifar_vgg", weights=backbone, include_top=False)
            base.trainable = False
            model = zoo.with_new_head(base, len(classes), augment=settings["augment"])
            callbacks = [UnfreezeBackbone(settings["epochs"])] if settings["fine_tune"] else []
        steps = -(-len(x) // settings["batch_size"])
        model.compile(make_optimizer(settings, steps), losses.SparseCategoricalCrossentropy(
            label_smoothing=settings["label_smoothing"]), metrics=["accuracy"])
        start = time.perf_counter()
        model.fit(x, y, batch_size=settings["batch_size"],
                  epochs=settings["epochs"] + settings["fine_tune"], verbose=0,
                  callbacks=callbacks)
        seconds = time.perf_counter() - start
        _, accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
        results[way] = (accuracy, seconds)
        print(f"  {per_class:>3} per class, seed {seed}, {way:<9}: {accuracy:.2%} "
              f"({seconds:.0f} s)", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the CIFAR-10 training folder")
    parser.add_argument("--backbone", required=True, help="cifar_vgg trained without CLASSES")
    parser.add_argument("--classes", default="cat,dog")
    parser.add_argument("--per-class", default="20,50")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    classes = args.classes.split(",")
    record = cnnlab.load_model(args.backbone).metadata.get("pretrained", {})
    print(f"Backbone: {record.get('data', args.backbone)}; {record.get('accuracy', 0):.2%} on "
          f"its own held-out images. Held-out classes: {', '.join(classes)}.")
    rows = ["| images per class | from scratch | transfer (frozen backbone) | transfer + "
            "fine-tuning |", "|---|---|---|---|"]
    for per_class in map(int, args.per_class.split(",")):
        runs = [trial(args.data, classes, per_class, seed, args.backbone)
                for seed in range(args.seeds)]

        def cell(way, runs=runs):
            accuracies = [r[way][0] for r in runs]
            seconds = statistics.mean(r[way][1] for r in runs)
            spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
            return (f"{statistics.mean(accuracies):.1%} ± {spread:.1%} "
                    f"({', '.join(f'{a:.1%}' for a in accuracies)}; {seconds:.0f} s)")
        rows.append(f"| {per_class} | {cell('scratch')} | {cell('transfer')} | "
                    f"{cell('fine-tune')} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
