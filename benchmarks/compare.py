"""cnnlab against its peers on the article's network: training, inference, latency, memory.

    python benchmarks/compare.py                  # 5 interleaved rounds, table with ratios
    python benchmarks/compare.py --update-readme  # the same, and rewrite the README's table
    python benchmarks/compare.py --sweep          # how cost grows with batch, image size, width

Every figure comes from this run: each round starts one fresh process per peer (so peak RSS is
that peer's own), in turn, and each ratio is taken against PyTorch eager *in the same round*;
the table shows medians over rounds. Model-FLOP utilisation divides the model's FLOP rate by a
float32 GEMM peak measured here, in the same run. Peers that are not installed are skipped:
`pip install -e '.[bench]'` installs the optional ones that install cleanly.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

BATCH = 128
PEERS = ["cnnlab", "torch", "torch.compile", "keras-tensorflow", "keras-jax", "tinygrad",
         "onnxruntime"]


# --- what one step costs --------------------------------------------------------------------
def article_train_flops_per_image() -> float:
    """Multiply-adds x 2 of forward (conv and dense), plus backward: the weight gradient and the
    input gradient each cost a forward's worth, except that the first layer has no input grad."""
    forward = [2 * 24 * 24 * 32 * 5 * 5 * 1,     # conv1
               2 * 8 * 8 * 64 * 5 * 5 * 32,      # conv2
               2 * 1024 * 1000, 2 * 1000 * 10]   # dense layers
    return 3 * sum(forward) - forward[0]


def gemm_peak_gflops() -> float:
    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(5))
    return 2 * 2048 ** 3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(train_step, infer_batch, infer_one, seconds: float = 3.0) -> dict:
    """Images per second for training and batch inference, and the median batch-1 latency."""
    for _ in range(3):
        train_step()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        train_step()
        steps += 1
    train = steps * BATCH / (time.perf_counter() - start)
    rss = peak_rss_mb()                       # peak of a training process
    for _ in range(3):
        infer_batch()
    batches, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds / 2:
        infer_batch()
        batches += 1
    infer = batches * BATCH / (time.perf_counter() - start)
    for _ in range(20):
        infer_one()
    latency = statistics.median(_timed(infer_one) for _ in range(300)) * 1e3
    return {"train": train, "infer": infer, "latency_ms": latency, "rss_mb": rss}


def data(channels_first=False):
    rng = np.random.default_rng(0)
    x = rng.random((BATCH, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, BATCH)
    return (x.transpose(0, 3, 1, 2).copy() if channels_first else x), y


def measure_keras_api(model, seconds) -> dict:
    """``measure`` for a compiled model with Keras' batch methods (cnnlab's and Keras' own)."""
    x, y = data()
    one = x[:1]
    return measure(lambda: model.train_on_batch(x, y), lambda: model.predict_on_batch(x),
                   lambda: model.predict_on_batch(one), seconds)


# --- the peers ----------------------------------------------------------------------------------
def run_cnnlab(seconds):
    import cnnlab
    model = cnnlab.zoo.get("article")
    model.compile(optimizer=cnnlab.optimizers.SGD(0.01, momentum=0.9),
                  loss="sparse_categorical_crossentropy")
    return {**measure_keras_api(model, seconds), "version": cnnlab.__version__}


def torch_article():
    import torch.nn as nn
    return nn.Sequential(nn.Conv2d(1, 32, 5), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Conv2d(32, 64, 5),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1024, 1000),
                         nn.ReLU(), nn.Linear(1000, 10))


def run_torch(seconds, compiled=False):
    import torch
    import torch.nn.functional as F  # noqa: N812
    net = torch_article()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x, y = data(channels_first=True)
    x, y, one = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(x[:1].copy())
    model = torch.compile(net) if compiled else net

    def train_step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def infer(batch):
        with torch.no_grad():
            return model(batch)

    result = measure(train_step, lambda: infer(x), lambda: infer(one), seconds)
    return {**result, "version": torch.__version__, "threads": torch.get_num_threads()}


def run_keras(seconds, backend):
    os.environ["KERAS_BACKEND"] = backend         # read when keras is first imported
    import keras
    from keras import layers
    model = keras.Sequential([
        keras.Input((28, 28, 1)), layers.Conv2D(32, 5, activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(64, 5, activation="relu"), layers.MaxPooling2D(), layers.Flatten(),
        layers.Dense(1000, activation="relu"), layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss="sparse_categorical_crossentropy")
    return {**measure_keras_api(model, seconds),
            "version": f"keras {keras.__version__} ({keras.backend.backend()})"}


def run_tinygrad(seconds):
    from tinygrad import Tensor, TinyJit, nn
    from tinygrad.helpers import Context

    class Net:
        def __init__(self):
            self.c1, self.c2 = nn.Conv2d(1, 32, 5), nn.Conv2d(32, 64, 5)
            self.l1, self.l2 = nn.Linear(1024, 1000), nn.Linear(1000, 10)

        def __call__(self, x):
            x = self.c1(x).relu().max_pool2d(2)
            x = self.c2(x).relu().max_pool2d(2)
            return self.l2(self.l1(x.flatten(1)).relu())

    net = Net()
    opt = nn.optim.SGD(nn.state.get_parameters(net), lr=0.01, momentum=0.9)
    xs, ys = data(channels_first=True)
    x, y = Tensor(xs), Tensor(ys.astype(np.int32))
    one = Tensor(xs[:1].copy())

    @TinyJit
    def jitted_step():
        opt.zero_grad()
        loss = net(x).sparse_categorical_crossentropy(y).backward()
        opt.step()
        return loss.realize()

    def train_step():
        with Context(TRAINING=1):      # tinygrad 0.14's training switch
            return jitted_step()

    @TinyJit
    def infer_batch():
        return net(x).realize()

    @TinyJit
    def infer_one():                  # jitted separately: a jit is specialised to its shapes
        return net(one).realize()

    result = measure(train_step, lambda: infer_batch().numpy(), lambda: infer_one().numpy(),
                     seconds)
    from importlib.metadata import version
    return {**result, "version": version("tinygrad")}


def run_onnxruntime(seconds):
    import onnxruntime as ort
    import torch
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "cnnlab_bench_article.onnx")
    net = torch_article().eval()
    torch.onnx.export(net, torch.zeros(1, 1, 28, 28), path, input_names=["x"],
                      dynamic_axes={"x": {0: "n"}}, dynamo=False)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x, _ = data(channels_first=True)
    one = x[:1].copy()
    result = measure(lambda: None, lambda: session.run(None, {"x": x}),
                     lambda: session.run(None, {"x": one}), seconds)
    result["train"] = float("nan")
    return {**result, "version": ort.__version__}


RUNNERS = {"cnnlab": run_cnnlab, "torch": run_torch,
           "torch.compile": lambda s: run_torch(s, compiled=True),
           "keras-tensorflow": lambda s: run_keras(s, "tensorflow"),
           "keras-jax": lambda s: run_keras(s, "jax"),
           "tinygrad": run_tinygrad, "onnxruntime": run_onnxruntime}
REQUIRES = {"torch": ["torch"], "torch.compile": ["torch"],
            "keras-tensorflow": ["keras", "tensorflow"], "keras-jax": ["keras", "jax"],
            "tinygrad": ["tinygrad"], "onnxruntime": ["onnxruntime", "onnx"], "cnnlab": ["cnnlab"]}


def installed(peer) -> bool:
    import importlib.util
    return all(importlib.util.find_spec(name) is not None for name in REQUIRES[peer])


def run_worker(peer, seconds) -> dict:
    """One measurement in a fresh process: its JSON is the last line of stdout."""
    result = subprocess.run([sys.executable, __file__, "--worker", peer, "--seconds",
                             str(seconds)], capture_output=True, text=True, timeout=900)
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0][:200]}


# --- the report ---------------------------------------------------------------------------------
def compare(rounds, seconds, peers):
    flops = article_train_flops_per_image()
    rows = {p: [] for p in peers}
    peaks = []
    for r in range(rounds):
        peaks.append(gemm_peak_gflops())
        order = peers if r % 2 == 0 else list(reversed(peers))   # alternate who goes first
        for peer in order:
            rows[peer].append(run_worker(peer, seconds))
            print(f"round {r + 1}/{rounds} {peer}: {rows[peer][-1]}", file=sys.stderr)
    peak = statistics.median(peaks)
    table = []
    for peer in peers:
        good = [m for m in rows[peer] if "error" not in m]
        if not good:
            table.append({"peer": peer, "error": rows[peer][0].get("error", "failed")})
            continue
        entry = {"peer": peer, "version": good[0].get("version", "")}
        for key in ("train", "infer", "latency_ms", "rss_mb"):
            entry[key] = statistics.median(m[key] for m in good)
            if "torch" in rows and peer != "torch":
                # ratio in each round against that round's torch eager, then the median
                ratios = [m[key] / t[key] for m, t in zip(rows[peer], rows["torch"])
                          if "error" not in m and "error" not in t and t[key] == t[key]]
                entry[key + "_ratio"] = statistics.median(ratios) if ratios else float("nan")
        entry["mfu"] = entry["train"] * flops / (peak * 1e9)
        table.append(entry)
    return table, peak, flops


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = re.search(r"model name\s*:\s*(.*)", handle.read()).group(1)
    except (OSError, AttributeError):
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, NumPy {np.__version__}"


def markdown(table, peak, flops, rounds) -> str:
    def cell(entry, key, fmt):
        if key not in entry or entry[key] != entry[key]:
            return "—"
        text = fmt.format(entry[key])
        ratio = entry.get(key + "_ratio")
        return f"{text} ({ratio:.2f}x)" if ratio is not None and ratio == ratio else text

    lines = [f"Article network, batch {BATCH}, float32, random data; medians of {rounds} "
             f"interleaved rounds; (ratio to PyTorch eager in the same round). Machine: "
             f"{machine()}. float32 GEMM peak measured in this run: {peak:.0f} GFLOP/s; a "
             f"training image costs {flops / 1e6:.1f} MFLOP.", "",
             "| peer | version | train img/s | infer img/s (batch 128) | batch-1 latency ms "
             "| peak RSS MB | train MFU |", "|---|---|---|---|---|---|---|"]
    for e in table:
        if "error" in e:
            lines.append(f"| {e['peer']} | failed: {e['error']} | | | | | |")
            continue
        mfu = f"{e['mfu']:.0%}" if e["mfu"] == e["mfu"] else "—"
        lines.append(f"| {e['peer']} | {e['version']} | {cell(e, 'train', '{:,.0f}')} | "
                     f"{cell(e, 'infer', '{:,.0f}')} | {cell(e, 'latency_ms', '{:.3f}')} | "
                     f"{cell(e, 'rss_mb', '{:.0f}')} | {mfu} |")
    return "\n".join(lines)


def update_readme(text: str) -> None:
    path = os.path.join(os.path.dirname(__file__), "..", "README.md")
    with open(path) as handle:
        readme = handle.read()
    begin, end = "<!-- benchmark:begin -->", "<!-- benchmark:end -->"
    if begin not in readme:
        raise SystemExit("README.md has no benchmark markers")
    head, rest = readme.split(begin, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w") as handle:
        handle.write(f"{head}{begin}\n{text}\n{end}{tail}")


# --- sweeps -------------------------------------------------------------------------------------
def sweep():
    """Training img/s of cnnlab and torch as batch size, image size and width grow."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F  # noqa: N812

    import cnnlab
    from cnnlab import layers

    def ours(size, width, batch):
        model = cnnlab.Sequential([
            layers.Input((size, size, 1)), layers.Conv2D(32 * width, 5, activation="relu"),
            layers.MaxPooling2D(), layers.Conv2D(64 * width, 5, activation="relu"),
            layers.MaxPooling2D(), layers.GlobalAveragePooling2D(),
            layers.Dense(1000, activation="relu"), layers.Dense(10, activation="softmax")])
        model.compile(optimizer=cnnlab.optimizers.SGD(0.01, momentum=0.9),
                      loss="sparse_categorical_crossentropy")
        x = np.random.default_rng(0).random((batch, size, size, 1), dtype=np.float32)
        y = np.arange(batch) % 10
        return lambda: model.train_on_batch(x, y)

    def theirs(size, width, batch):
        net = nn.Sequential(nn.Conv2d(1, 32 * width, 5), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(32 * width, 64 * width, 5), nn.ReLU(), nn.MaxPool2d(2),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64 * width, 1000),
                            nn.ReLU(), nn.Linear(1000, 10))
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        x = torch.rand(batch, 1, size, size)
        y = torch.arange(batch) % 10

        def step():
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
        return step

    def rate(step, batch):
        step()
        step()
        times = [_timed(step) for _ in range(max(3, int(64 / batch)))]
        return batch / statistics.median(times)

    print("| sweep | setting | cnnlab train img/s | torch train img/s | ratio |")
    print("|---|---|---|---|---|")
    cases = ([("batch", b, (28, 1, b)) for b in (1, 8, 32, 128, 512)]
             + [("image size (batch 32)", s, (s, 1, 32)) for s in (28, 56, 112, 224)]
             + [("width x (batch 128)", w, (28, w, 128)) for w in (1, 2, 4)])
    for name, value, (size, width, batch) in cases:
        a, b = rate(ours(size, width, batch), batch), rate(theirs(size, width, batch), batch)
        print(f"| {name} | {value} | {a:,.0f} | {b:,.0f} | {a / b:.2f}x |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--update-readme", action="store_true")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(RUNNERS[args.worker](args.seconds)))
        return
    if args.sweep:
        sweep()
        return
    peers = [p for p in args.peers.split(",") if installed(p)]
    if "torch" not in peers:
        raise SystemExit("PyTorch eager is the reference peer: pip install torch==2.13.0")
    table, peak, flops = compare(args.rounds, args.seconds, peers)
    text = markdown(table, peak, flops, args.rounds)
    print(text)
    if args.update_readme:
        update_readme(text)


if __name__ == "__main__":
    main()
