"""The compiled kernels against the NumPy reference they replace, measured in one run:

    python benchmarks/kernels.py          # all seven
    python benchmarks/kernels.py --ops    # the first only
    python benchmarks/kernels.py --chunks # the fifth only
    python benchmarks/kernels.py --wide   # the seventh only

1. each op alone, on the shapes of ResNet-20: BatchNormalization's training forward and backward
   together at batch 128; a 3x3 convolution's forward and both gradients at batch 64 (one
   shard of 128 on 2 cores), on the path ``conv.choose`` picks with each setting (the
   reference's frequency domain or F(2x2); the compiled F(4x4) Winograd); a 3x3 depthwise
   convolution's on MobileNet's shapes; the im2col path's (ResNet-20's stem and strided
   layers: windows copied into rows, and added back for the input gradient); ReLU's gradient;
   2x2 max pooling's (cifar10_cnn's and the article's
   pools in training, a face detection's first level at inference); the optimizers' updates
   of the article's largest weight matrix; the rounding to bfloat16 of mixed precision. The
   reference's time, the kernels', and the ratio;
2. their share of whole ResNet-20 training steps (batch 128, 1 thread, so the profile is one
   thread's): cumulative profiled time in each op over the steps, each path;
3. whole steps at 1 thread and at the machine's thread count, the two paths interleaved;
4. the ReLU inside BatchNormalization's kernels against the ReLU apart, whole training steps;
5. Winograd in pieces sized for one core's L2 (chunks of images, bands of rows) against chunks
   of the memory budget, whole training steps and inference of ResNet-20 and cifar10_cnn at
   32x32, cifar_vgg at 96x96 and ResNet-20 at 128x128;
6. cold start: a fresh process's first ResNet-20 training step (import included) with an empty
   Numba cache (compiling every kernel), then again with the cache filled, then on the
   reference; the same three for the whole ``cnnlab train`` command, the default job;
7. wide layers (256 channels): the kernel transform U = G g G^T as one GEMM in float32 against
   the two float64 products it replaced, and cifar_vgg_wide's training steps with the kernel
   gradient over runs of pieces against one product a piece, interleaved.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from threadpoolctl import threadpool_limits

import cnnlab
from cnnlab import zoo
from cnnlab.engine import activations, conv, depthwise, pool, precision, updates, windows
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


def _reference_and_compiled_ms(step, repeats=20) -> dict:
    found = {}
    for kernels in ("numpy", "numba"):
        cnnlab.config.set_kernels(kernels)
        found[kernels] = _best_ms(step, repeats)
    return found


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
        found = _reference_and_compiled_ms(step)
        print(f"  M={rows:>7,} C={channels:>3}: reference {found['numpy']:6.2f} ms, compiled "
              f"{found['numba']:6.2f} ms ({found['numpy'] / found['numba']:.1f}x)")
    print("3x3 convolution forward + both gradients, batch 64, float32, 1 thread (best of 10):")
    for size, channels in ((32, 16), (16, 32), (8, 64)):
        x = rng.standard_normal((64, size, size, channels)).astype(np.float32)
        kernel = rng.standard_normal((3, 3, channels, channels)).astype(np.float32)
        pads = ((1, 1), (1, 1))

        def step(x=x, kernel=kernel, pads=pads):
            out, cache = conv.conv2d_forward(x, kernel, None, (1, 1), pads)
            conv.conv2d_backward(out, cache)
        found, picked = {}, {}
        for kernels in ("numpy", "numba"):
            cnnlab.config.set_kernels(kernels)
            picked[kernels] = conv.choose(x.shape, kernel.shape, (1, 1), pads, (1, 1))
            with threadpool_limits(1):
                found[kernels] = _best_ms(step, repeats=10)
        print(f"  {size}x{size}x{channels:<3}: reference ({picked['numpy']}) "
              f"{found['numpy']:6.2f} ms, compiled ({picked['numba']}) {found['numba']:6.2f} ms "
              f"({found['numpy'] / found['numba']:.2f}x)")
    print("Windows copied into rows (im2col) and added back (col2im): ResNet-20's stem "
          "(forward + kernel gradient: nothing needs the image's) and strided layers (forward + "
          "both gradients), batch 64, float32, 1 thread (best of 10):")
    for size, channels, filters, stride in ((32, 3, 16, 1), (32, 16, 32, 2), (16, 32, 64, 2)):
        x = rng.standard_normal((64, size, size, channels)).astype(np.float32)
        kernel = rng.standard_normal((3, 3, channels, filters)).astype(np.float32)
        pads = ((1, 1), (1, 1)) if stride == 1 else ((0, 1), (0, 1))

        def step(x=x, kernel=kernel, pads=pads, stride=stride, workspace={}):  # noqa: B006
            # the workspace keeps the columns' buffer between steps, as a layer's does
            out, cache = conv.conv2d_forward(x, kernel, None, (stride, stride), pads,
                                             (1, 1), workspace, algorithm="direct")
            conv.conv2d_backward(out, cache, need_input_grad=stride != 1)
        with threadpool_limits(1):
            found = _reference_and_compiled_ms(step, repeats=10)
        print(f"  {size}x{size}x{channels:<2} -> {filters:<2}, stride {stride}: reference "
              f"{found['numpy']:6.2f} ms, compiled {found['numba']:6.2f} ms "
              f"({found['numpy'] / found['numba']:.2f}x)")
    print("ReLU's gradient, float32, one thread (best of 20):")
    for shape in ((128, 32, 32, 32), (64, 32, 32, 16)):
        dy = rng.standard_normal(shape).astype(np.float32)
        y = np.maximum(rng.standard_normal(shape).astype(np.float32), 0)
        found = _reference_and_compiled_ms(lambda dy=dy, y=y: activations.relu_backward(dy, y))
        print(f"  {'x'.join(map(str, shape)):<14}: reference {found['numpy']:6.2f} ms, compiled "
              f"{found['numba']:6.2f} ms ({found['numpy'] / found['numba']:.1f}x)")
    print("3x3 depthwise convolution forward + both gradients, batch 64, float32 (best of 10):")
    for size, channels in ((32, 32), (16, 64), (8, 128)):
        x = rng.standard_normal((64, size, size, channels)).astype(np.float32)
        kernel = rng.standard_normal((3, 3, channels, 1)).astype(np.float32)

        def step(x=x, kernel=kernel):
            out, cache = depthwise.depthwise_conv2d_forward(x, kernel, None, (1, 1),
                                                            ((1, 1), (1, 1)))
            depthwise.depthwise_conv2d_backward(out, cache)
        found = _reference_and_compiled_ms(step, repeats=10)
        print(f"  {size}x{size}x{channels:<3}: reference {found['numpy']:6.2f} ms, compiled "
              f"{found['numba']:6.2f} ms ({found['numpy'] / found['numba']:.1f}x)")
    print("2x2 max pooling, float32 (best of 20): training (forward + backward) at batch 64, "
          "and inference on a 640x480 face detection's first level:")
    for shape, training in (((64, 30, 30, 32), True), ((64, 24, 24, 32), True),
                            ((1, 478, 638, 24), False)):
        x = rng.standard_normal(shape).astype(np.float32)

        def step(x=x, training=training):
            out, cache = pool.max_pool2d_forward(x, (2, 2), (2, 2), keep_cache=training)
            if training:
                pool.max_pool2d_backward(out, cache)
        found = _reference_and_compiled_ms(step)
        print(f"  {'x'.join(map(str, shape)):<14} {'training' if training else 'inference'}: "
              f"reference {found['numpy']:6.2f} ms, compiled {found['numba']:6.2f} ms "
              f"({found['numpy'] / found['numba']:.1f}x)")
    print("Optimizer updates of the article's Dense kernel (9216 x 128, float32), one thread "
          "(best of 20):")
    param = rng.standard_normal((9216, 128)).astype(np.float32)
    grad, first, second = (rng.standard_normal(param.shape).astype(np.float32) for _ in range(3))
    second = np.abs(second)
    rules = {"SGD, momentum 0.9": lambda: updates.sgd(param, grad, first, lr=1e-3, momentum=0.9),
             "Adam": lambda: updates.adam(param, grad, first, second, step_size=1e-3,
                                          beta_1=0.9, beta_2=0.999, bias_root=0.5,
                                          epsilon=1e-7),
             "RMSprop": lambda: updates.rmsprop(param, grad, second, None, None, lr=1e-3,
                                                rho=0.9, momentum=0.0, epsilon=1e-7)}
    for name, step in rules.items():
        found = _reference_and_compiled_ms(step)
        print(f"  {name:<18}: reference {found['numpy']:6.2f} ms, compiled "
              f"{found['numba']:6.2f} ms ({found['numpy'] / found['numba']:.1f}x)")
    print("Rounding to bfloat16 (the mixed_bfloat16 policy), the article's first map at batch "
          "128 (128 x 24 x 24 x 32, float32), one thread (best of 20):")
    first_map = rng.standard_normal((128, 24, 24, 32)).astype(np.float32)
    found = _reference_and_compiled_ms(lambda: precision.round_to_bfloat16(first_map))
    copy = _best_ms(first_map.copy)
    print(f"  reference {found['numpy']:6.2f} ms, compiled {found['numba']:6.2f} ms "
          f"({found['numpy'] / found['numba']:.1f}x); a copy {copy:.2f} ms")


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
        in_conv = 0.0           # the backward's own input-gradient convolution counted once
        for (path, _, name), (_, _, _, cumulative, callers) in stats.items():
            if not path.endswith(os.path.join("engine", "conv.py")):
                continue
            if name == "conv2d_backward":
                in_conv += cumulative
            elif name == "conv2d_forward":
                in_conv += sum(entry[3] for caller, entry in callers.items()
                               if caller[2] != "_input_grad_as_convolution")
        print(f"  {kernels:>5}: of {total:.2f} s, {in_bn:.2f} s in BatchNormalization's "
              f"training forward and backward, {in_conv:.2f} s in convolutions")
    cnnlab.config.set_threads(threads)


def whole_steps(rounds=5, steps=4) -> None:
    print(f"ResNet-20 training steps, batch 128, {cnnlab.config.threads()} thread(s); medians "
          f"of {rounds} interleaved rounds of {steps} steps:")
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


def fused_relu(name: str, threads: int, rounds=5, steps=3) -> None:
    """The ReLU inside BatchNormalization's kernels against the ReLU on its own (the layer told
    it cannot fuse), whole training steps of one model, interleaved."""
    from cnnlab.layers.normalization import BatchNormalization
    before = cnnlab.config.threads()
    cnnlab.config.set_threads(threads)
    model = zoo.get(name, input_shape=(32, 32, 3), num_classes=10)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x, y = rng.random((128, 32, 32, 3)).astype(np.float32), rng.integers(0, 10, 128)
    model.fit(x, y, batch_size=128, epochs=2, verbose=0)
    fuses = BatchNormalization.fuses
    seconds = {"fused": [], "apart": []}
    try:
        for _ in range(rounds):
            for kind in seconds:
                BatchNormalization.fuses = fuses if kind == "fused" else (lambda *_: False)
                start = time.perf_counter()
                model.fit(x, y, batch_size=128, epochs=steps, verbose=0)
                seconds[kind].append((time.perf_counter() - start) / steps)
    finally:
        BatchNormalization.fuses = fuses
        cnnlab.config.set_threads(before)
    apart, fused = (statistics.median(seconds[k]) for k in ("apart", "fused"))
    print(f"  {name}, {threads} thread(s): ReLU apart {apart:.3f} s a step, inside BN "
          f"{fused:.3f} s ({apart / fused:.2f}x); medians of {rounds}")


#: (model, batch, image side): compare.py's networks at 32x32, and two on larger images, where
#: one image's tiles are past the cache and the pieces are bands of its rows
CHUNKED = (("resnet20", 128, 32), ("cifar10_cnn", 128, 32), ("resnet20", 16, 32),
           ("cifar_vgg", 32, 96), ("resnet20", 16, 128))


def winograd_chunks(name: str, batch: int, side: int = 32, rounds=5, steps=3) -> None:
    """Winograd in pieces whose V and M fit one core's L2 (``conv.WINOGRAD_CACHE_BYTES``: chunks
    of images, or bands of one image's rows) against chunks of the memory budget
    (``windows.COLS_BUDGET_BYTES``; the whole batch at 32x32), whole training steps and
    inference of one model at the machine's thread count, interleaved."""
    from compare import cnnlab_model  # the networks compare.py races
    model = cnnlab_model(name) if side == 32 else zoo.get(
        name, input_shape=(side, side, 3), num_classes=10)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x, y = rng.random((batch, side, side, 3)).astype(np.float32), rng.integers(0, 10, batch)
    work = {"train": lambda: model.fit(x, y, batch_size=batch, epochs=steps, verbose=0),
            "infer": lambda: [model.predict(x, batch_size=batch, verbose=0)
                              for _ in range(steps)]}
    cache_sized = conv.WINOGRAD_CACHE_BYTES
    seconds = {(what, kind): [] for what in work for kind in ("memory", "cache")}
    try:
        for what, run in work.items():
            run()
            for _ in range(rounds):
                for kind in ("memory", "cache"):
                    conv.WINOGRAD_CACHE_BYTES = (cache_sized if kind == "cache"
                                                 else windows.COLS_BUDGET_BYTES)
                    start = time.perf_counter()
                    run()
                    seconds[what, kind].append((time.perf_counter() - start) / steps)
    finally:
        conv.WINOGRAD_CACHE_BYTES = cache_sized
    for what in work:
        memory, cache = (statistics.median(seconds[what, k]) for k in ("memory", "cache"))
        print(f"  {name}, {side}x{side}, batch {batch}, {what}: memory-sized chunks "
              f"{memory * 1e3:.1f} ms a step, {cache_sized >> 20} MiB pieces {cache * 1e3:.1f} "
              f"ms ({memory / cache:.2f}x); medians of {rounds}")


FIRST_STEP = """
import time
start = time.perf_counter()
import numpy as np
from threadpoolctl import threadpool_limits
import cnnlab
model = cnnlab.zoo.get("resnet20", input_shape=(32, 32, 3), num_classes=10)
model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
model.train_on_batch(np.zeros((8, 32, 32, 3), np.float32), np.arange(8))
print(time.perf_counter() - start)
"""


def cold_start() -> None:
    """Each of the two in three states: an empty Numba cache (every kernel compiles), the cache
    filled by that run, and the reference. The first is what a fresh ``pip install`` meets."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        states = (("compiled, empty cache (compiles)", {}), ("compiled, cache filled", {}),
                  ("reference", {"CNNLAB_KERNELS": "numpy"}))
        print("A fresh process's first ResNet-20 training step, batch 8 (import included):")
        for label, extra in states:
            out = subprocess.run([sys.executable, "-c", FIRST_STEP], env={**env, **extra},
                                 capture_output=True, text=True, check=True).stdout
            print(f"  {label}: {float(out):.2f} s")
        shutil.rmtree(cache, ignore_errors=True)
        os.makedirs(cache)
        print("`cnnlab train` (the article's network on the bundled digits, 5 epochs), whole "
              "command:")
        for label, extra in states:
            with tempfile.TemporaryDirectory() as out:
                start = time.perf_counter()
                subprocess.run([sys.executable, "-m", "cnnlab", "train", "--out",
                                os.path.join(out, "m.cnnlab")], env={**env, **extra},
                               capture_output=True, check=True)
                print(f"  {label}: {time.perf_counter() - start:.2f} s")


def winograd_pieces() -> None:
    print(f"Winograd in cache-sized pieces against memory-sized chunks, "
          f"{cnnlab.config.threads()} thread(s):")
    for case in CHUNKED:
        winograd_chunks(*case)


def _float64_kernel_transform(kernel, tiles):
    """The kernel transform before it became one GEMM: two products in float64 over float64
    copies of the kernel and of U, rounded back to the kernel's dtype."""
    c, f = kernel.shape[2:]
    along_i = np.tensordot(tiles.g, kernel.astype(np.float64).reshape(3, 3, c * f), (1, 0))
    return np.matmul(tiles.g, along_i).reshape(-1, c, f).astype(kernel.dtype)


def wide_layers(rounds=5, steps=3) -> None:
    from cnnlab.engine import winograd
    from cnnlab.runs import make_optimizer, run_settings
    print("Wide layers, 256 x 256 channels:")
    kernel = np.random.default_rng(0).standard_normal((3, 3, 256, 256)).astype(np.float32)
    gemm = _best_ms(lambda: winograd.kernel_transform(kernel, winograd.F4))
    products = _best_ms(lambda: _float64_kernel_transform(kernel, winograd.F4))
    print(f"  kernel transform, F(4x4), float32: one GEMM {gemm:.2f} ms, two float64 products "
          f"{products:.2f} ms ({products / gemm:.2f}x); best of 20")
    model = zoo.get("cifar_vgg_wide", augment=True)
    model.compile(make_optimizer(run_settings(model="cifar_vgg_wide"), 312),
                  "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x, y = rng.random((128, 32, 32, 3), dtype=np.float32), rng.integers(0, 10, 128)
    runs = conv._kernel_grad_runs
    ways = {"runs": runs,
            "one product a piece": lambda cache, itemsize: [
                range(k, k + 1) for k in range(len(cache.pieces))]}
    seconds = {way: [] for way in ways}
    try:
        model.fit(x, y, batch_size=128, epochs=steps, verbose=0)
        for _ in range(rounds):
            for way, choose in ways.items():
                conv._kernel_grad_runs = choose
                start = time.perf_counter()
                model.fit(x, y, batch_size=128, epochs=steps, verbose=0)
                seconds[way].append((time.perf_counter() - start) / steps)
    finally:
        conv._kernel_grad_runs = runs
    ran, apart = (statistics.median(seconds[w]) for w in ways)
    print(f"  cifar_vgg_wide training steps, batch 128, {cnnlab.config.threads()} thread(s): "
          f"kernel gradient over runs {ran * 1e3:.0f} ms, one product a piece "
          f"{apart * 1e3:.0f} ms ({apart / ran:.2f}x); medians of {rounds}")


def main() -> None:
    if sys.argv[1:] == ["--chunks"]:
        winograd_pieces()
        return
    if sys.argv[1:] == ["--wide"]:
        wide_layers()
        return
    op_times()
    if sys.argv[1:] == ["--ops"]:
        return
    share_of_steps()
    threads = cnnlab.config.threads()
    for count in sorted({1, threads}):
        cnnlab.config.set_threads(count)
        whole_steps()
    cnnlab.config.set_threads(threads)
    print("BatchNormalization + ReLU training steps, batch 128:")
    fused_relu("mobilenet_small", 1)
    fused_relu("resnet20", threads)
    winograd_pieces()
    wide_layers()
    cold_start()


if __name__ == "__main__":
    main()
