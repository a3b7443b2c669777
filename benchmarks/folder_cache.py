"""``cnnlab train`` on a folder of JPEGs with the decoded images kept in memory after the first
epoch (``ImageDataset.cache``, what ``data.splits.training_data`` does when they fit its budget)
against decoding every file every epoch:

    python benchmarks/folder_cache.py                       # cifar_vgg, 3 epochs, 2 rounds
    python benchmarks/folder_cache.py --model resnet20 --epochs 2 --rounds 3 --data FOLDER

Each run is a fresh process that trains as ``cnnlab train`` does (``runs.new_run`` and
``runs.fit_run``, the recipe's settings, validation after every epoch); the two settings
alternate, round by round, and each epoch's wall time is printed, with the first epoch apart
(it decodes in both) and the ratio of the later epochs' medians. The losses of the two must be
equal (the cached batches are the decoded ones, bit for bit), and the script checks it. The
images are CIFAR-10's 50,000 training JPEGs (``--data``, or the tarball in ``../shared``
extracted under /tmp): 40,000 train, 10,000 validate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from cifar_folder import cifar_folder

CHILD = """
import json, sys, time
from cnnlab import callbacks, runs, seeding
from cnnlab.data import splits
folder, model_name, epochs, cached = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if cached == "off":
    splits.FOLDER_CACHE_BYTES = 0          # the budget nothing fits: decode every epoch
settings = runs.run_settings(data=folder, model=model_name, epochs=epochs)

class EpochTimes(callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)

timer = EpochTimes()
with seeding.seeded(settings["seed"]):
    model, train, test = runs.new_run(settings)
    history = runs.fit_run(model, settings, train, test, verbose=0, callbacks=[timer])
print(json.dumps({"seconds": timer.seconds, "loss": history.history["loss"]}))
"""


def one_run(folder: str, model: str, epochs: int, cached: str) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, folder, model, str(epochs), cached],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"The run with the cache {cached} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="a folder of images, one subfolder per class "
                                       "(default: CIFAR-10 from ../shared, extracted to /tmp)")
    parser.add_argument("--model", default="cifar_vgg")
    parser.add_argument("--epochs", type=int, default=3, help="at least 2")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch decodes either way")
    folder = cifar_folder(args.data)
    runs = {"on": [], "off": []}
    for round_ in range(args.rounds):
        for cached in ("on", "off"):
            run = one_run(folder, args.model, args.epochs, cached)
            runs[cached].append(run)
            print(f"round {round_ + 1}, cache {cached:>3}: epochs "
                  + ", ".join(f"{s:.1f}" for s in run["seconds"]) + " s", flush=True)
    losses = {cached: [run["loss"] for run in done] for cached, done in runs.items()}
    if losses["on"] != losses["off"]:
        sys.exit(f"The losses differ with and without the cache: {losses}")
    later = {cached: statistics.median(s for run in done for s in run["seconds"][1:])
             for cached, done in runs.items()}
    first = {cached: statistics.median(run["seconds"][0] for run in done)
             for cached, done in runs.items()}
    print(f"\n{args.model} on {folder}, {args.epochs} epochs, {args.rounds} rounds "
          f"(losses equal with and without the cache)")
    print("| cache | first epoch s (median) | later epochs s (median) |")
    print("|---|---|---|")
    for cached in ("on", "off"):
        print(f"| {cached} | {first[cached]:.1f} | {later[cached]:.1f} |")
    print(f"\nLater epochs with the cache take {later['on'] / later['off']:.2f}x the time "
          f"without it.")


if __name__ == "__main__":
    main()
