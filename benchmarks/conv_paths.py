"""Each convolution path (im2col, Winograd, frequency domain) timed on the layer shapes of the
zoo's networks, forward + both gradients, on one core (training runs one shard per core), and
what ``cnnlab.engine.conv.choose`` picks for each; a pick slower than the fastest path by more
than 10% shows as 'MISS'.

    python benchmarks/conv_paths.py [--batch 64] [--dtype float32] [--repeats 5]
    python benchmarks/conv_paths.py --fit      # the cost model's constants, from batches 4-64

``--fit`` times every path at several batch sizes and fits, per path, seconds per multiply-add,
per element moved and per NumPy call (least squares on relative error, non-negative) to the work
each path states it does; paste the printed ``SECONDS_PER_COMPILED`` (compiled kernels, the
default) or ``SECONDS_PER`` (with ``CNNLAB_KERNELS=numpy``) into ``cnnlab/engine/conv.py``.
"""

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from cnnlab.engine import conv, winograd
from cnnlab.engine.shapes import resolve_padding

#: (where, H, W, C, F, kernel): the 3x3 stride-1 layers of resnet20, cifar_vgg and Keras'
#: cifar10_cnn, and the article's 5x5 layers
SHAPES = [
    ("resnet20 stage 1", 32, 32, 16, 16, 3), ("resnet20 stage 2", 16, 16, 32, 32, 3),
    ("resnet20 stage 3", 8, 8, 64, 64, 3), ("cifar_vgg stem", 32, 32, 3, 24, 3),
    ("cifar_vgg block 1", 32, 32, 24, 32, 3), ("cifar_vgg block 2", 16, 16, 32, 64, 3),
    ("cifar_vgg block 3", 8, 8, 64, 128, 3), ("cifar_vgg block 3b", 4, 4, 128, 128, 3),
    ("cifar10_cnn conv1", 32, 32, 3, 32, 3), ("cifar10_cnn conv2", 30, 30, 32, 32, 3),
    ("cifar10_cnn conv3", 15, 15, 32, 64, 3), ("cifar10_cnn conv4", 13, 13, 64, 64, 3),
    ("wide 16x16", 16, 16, 128, 128, 3), ("article conv2", 12, 12, 32, 64, 5),
]


def step_time(path, x, kernel, pads, repeats):
    """Best of ``repeats``: forward, then both gradients, every convolution (the input gradient
    is one too) on ``path``."""
    best = float("inf")
    conv.ALGORITHM = path
    try:
        for _ in range(repeats + 1):
            start = time.perf_counter()
            out, cache = conv.conv2d_forward(x, kernel, None, (1, 1), pads)
            conv.conv2d_backward(out, cache)
            best = min(best, time.perf_counter() - start)
    finally:
        conv.ALGORITHM = "auto"
    return best


def non_negative_fit(a, b):
    """Least squares with every coefficient >= 0: drop the most negative one until none is."""
    keep = list(range(a.shape[1]))
    while True:
        coef = np.zeros(a.shape[1])
        coef[keep] = np.linalg.lstsq(a[:, keep], b, rcond=None)[0]
        if (coef >= 0).all():
            return coef
        keep.remove(int(np.argmin(coef)))


def fit(dtype, repeats):
    rng = np.random.default_rng(0)
    rows = {"direct": [], "winograd": [], "fourier": []}
    with threadpool_limits(1):
        for batch in (4, 16, 64):
            for _, h, w, c, f, k in SHAPES:
                x = rng.standard_normal((batch, h, w, c)).astype(dtype)
                kernel = rng.standard_normal((k, k, c, f)).astype(dtype)
                pads = resolve_padding("same", (h, w), (k, k), (1, 1), (1, 1))
                for path, counts in conv.step_work(x.shape, kernel.shape, pads).items():
                    rows[path].append((counts, step_time(path, x, kernel, pads, repeats)))
            print(f"batch {batch} timed", flush=True)
    fitted = {}
    for path, measured in rows.items():
        a = np.array([counts for counts, _ in measured], dtype=np.float64)
        t = np.array([seconds for _, seconds in measured])
        coef = non_negative_fit(a / t[:, None], np.ones(len(t)))   # relative error
        error = np.abs(a @ coef / t - 1)
        fitted[path] = tuple(float(f"{v:.3g}") for v in coef)
        print(f"{path}: {fitted[path]}  (median error {np.median(error):.0%}, worst "
              f"{error.max():.0%} over {len(t)} steps)")
    name = "SECONDS_PER_COMPILED" if winograd.tiling() is winograd.F4 else "SECONDS_PER"
    print(f"{name} = {fitted}")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="images per shard (default 64: a "
                        "batch of 128 over 2 cores)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fit", action="store_true", help="fit the cost model's constants")
    args = parser.parse_args()
    if args.fit:
        return fit(args.dtype, args.repeats)
    rng = np.random.default_rng(0)
    paths = ["direct", "winograd", "fourier"]
    print(f"batch {args.batch}, {args.dtype}, one core; ms per forward + backward "
          f"(best of {args.repeats})")
    print("| layer | N,H,W,C -> F | " + " | ".join(paths) + " | picked | fastest |")
    print("|---|---|" + "---|" * (len(paths) + 2))
    with threadpool_limits(1):
        for where, h, w, c, f, k in SHAPES:
            x = rng.standard_normal((args.batch, h, w, c)).astype(args.dtype)
            kernel = rng.standard_normal((k, k, c, f)).astype(args.dtype)
            pads = resolve_padding("same", (h, w), (k, k), (1, 1), (1, 1))
            times = {}
            for path in paths:
                if path == "winograd" and k not in (3, 5):
                    continue
                times[path] = step_time(path, x, kernel, pads, args.repeats) * 1e3
            picked = conv.choose(x.shape, kernel.shape, (1, 1), pads, (1, 1))
            fastest = min(times, key=times.get)
            verdict = "" if times[picked] <= 1.1 * times[fastest] else " MISS"
            cells = " | ".join(f"{times[p]:.2f}" if p in times else "-" for p in paths)
            print(f"| {where} | {args.batch},{h},{w},{c} -> {f} | {cells} | {picked} | "
                  f"{fastest}{verdict} |", flush=True)


if __name__ == "__main__":
    main()
