"""The compiled kernels against the NumPy reference they replace, measured in one run:

    python benchmarks/kernels.py

1. each op alone (BatchNormalization's training forward and backward together), on the shapes
   of ResNet-20 at batch 128: the reference's time, the kernels', and the ratio;
2. its share of whole ResNet-20 training steps (batch 128, 1 thread, so the profile is one
   thread's): cumulative profiled time in the op over the steps, each path;
3. whole steps at the machine's thread count, the two paths interleaved (the end-to-end effect,
   which is small while the kernels are few);
4. cold start: a fresh process's first BatchNormalization step with an empty Numba cache
   (compiling), then again with the cache filled, then on the reference.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import cnnlab
from cnnlab import zoo
from cnnlab.engine import normalization as bn

SHAPES = [(128 * 32 * 32, 16), (128 * 16 * 16, 32), (128 * 8 * 8, 64)]   # (M, C) per stage


def _best_ms(function, repeats=20) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def op_times() -> None:
    print("BatchNormalization training forward + backward, float32 (best of 20):")
    rng = np.random.default_rng(0)
    for rows, channels in SHAPES:
        x = (rng.standard_normal((rows, channels)) * 2 + 0.5).astype(np.float32)
        dy = rng.standard_normal(x.shape).astype(np.float32)
        gamma, beta = np.ones(channels, np.float32), np.zeros(channels, np.float32)

        def step(x=x, dy=dy, gamma=gamma, beta=beta):
            _, _, cache = bn.batch_norm_train_forward(x, gamma, beta, 1e-3)
            bn.batch_norm_train_backward(dy, cache)
        found = {}
        for kernels in ("numpy", "numba"):
            cnnlab.config.set_kernels(kernels)
            found[kernels] = _best_ms(step)
        print(f"  M={rows:>7,} C={channels:>3}: reference {found['numpy']:6.2f} ms, compiled "
              f"{found['numba']:6.2f} ms ({found['numpy'] / found['numba']:.1f}x)")


def _resnet_step():
    model = zoo.get("resnet20", input_shape=(32, 32, 3), num_classes=10)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.random((128, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, 128)
    return lambda steps: model.fit(x, y, batch_size=128, epochs=steps, verbose=0)


def share_of_steps(steps=3) -> None:
    print(f"Share of {steps} ResNet-20 training steps (batch 128, 1 thread, profiled):")
    threads = cnnlab.config.threads()
    cnnlab.config.set_threads(1)
    train = _resnet_step()
    train(1)
    for kernels in ("numpy", "numba"):
        cnnlab.config.set_kernels(kernels)
        train(1)
        profile = cProfile.Profile()
        start = time.perf_counter()
        profile.enable()
        train(steps)
        profile.disable()
        total = time.perf_counter() - start
        stats = pstats.Stats(profile).stats
        in_bn = sum(entry[3] for (path, _, name), entry in stats.items()
                    if path.endswith(os.path.join("engine", "normalization.py"))
                    and name.startswith("batch_norm_train_"))
        print(f"  {kernels:>5}: {in_bn:.2f} s of {total:.2f} s in BatchNormalization's "
              f"training forward and backward")
    cnnlab.config.set_threads(threads)


def whole_steps(rounds=5, steps=4) -> None:
    print(f"ResNet-20 training steps, batch 128, {cnnlab.config.threads()} threads; medians of "
          f"{rounds} interleaved rounds of {steps} steps:")
    train = _resnet_step()
    train(1)
    seconds = {"numpy": [], "numba": []}
    for _ in range(rounds):
        for kernels in seconds:
            cnnlab.config.set_kernels(kernels)
            start = time.perf_counter()
            train(steps)
            seconds[kernels].append((time.perf_counter() - start) / steps)
    reference, fast = (statistics.median(seconds[k]) for k in ("numpy", "numba"))
    print(f"  reference {reference:.3f} s a step, compiled {fast:.3f} s ({reference / fast:.2f}x)"
          f"; ranges {min(seconds['numpy']):.3f}-{max(seconds['numpy']):.3f} and "
          f"{min(seconds['numba']):.3f}-{max(seconds['numba']):.3f}")


FIRST_STEP = """
import time
start = time.perf_counter()
import numpy as np
from cnnlab.engine import normalization as bn
x = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
_, _, cache = bn.batch_norm_train_forward(x, np.ones(8, np.float32), np.zeros(8, np.float32), 1e-3)
bn.batch_norm_train_backward(x, cache)
print(time.perf_counter() - start)
"""


def cold_start() -> None:
    print("A fresh process's first BatchNormalization step (import included):")
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for label, extra in (("compiled, empty cache (compiles)", {}),
                             ("compiled, cache filled", {}),
                             ("reference", {"CNNLAB_KERNELS": "numpy"})):
            out = subprocess.run([sys.executable, "-c", FIRST_STEP], env={**env, **extra},
                                 capture_output=True, text=True, check=True).stdout
            print(f"  {label}: {float(out):.2f} s")


def main() -> None:
    op_times()
    share_of_steps()
    whole_steps()
    cold_start()


if __name__ == "__main__":
    main()
