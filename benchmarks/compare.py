"""cnnlab against its peers on a CNN: training, inference, latency, memory.

    python benchmarks/compare.py                  # the article's network, 5 interleaved rounds
    python benchmarks/compare.py --model resnet20 # or cifar10_cnn, mobilenet_small
    python benchmarks/compare.py --model all --update-readme   # every model; rewrite the README
    python benchmarks/compare.py --sweep          # batch sizes 1-512 (article and resnet20)
    python benchmarks/compare.py --threads-sweep --model resnet20   # 1, 2, 4, ... threads
    python benchmarks/compare.py --model cifar_vgg_wide   # or cifar_vgg: the CIFAR-10 recipes'
    python benchmarks/compare.py --device gpu --model resnet20   # on the GPU: cnnlab on CuPy,
                                                  # PyTorch eager and torch.compile on CUDA

The models: ``article`` (the article's network on 28x28 digits), ``cifar10_cnn`` (Keras' classic
CIFAR-10 example: conv32-conv32-pool-conv64-conv64-pool-dense512, on 32x32x3), ``resnet20`` and
``mobilenet_small`` (the zoo's, on 32x32x3); on request ``cifar_vgg`` and ``cifar_vgg_wide``, the
zoo's CIFAR-10 recipe networks (without their augmentation layers). Every peer trains the same
network: PyTorch's is ``cnnlab.export.to_torch`` of cnnlab's (so the architecture cannot drift),
onnxruntime runs ``cnnlab.export.to_onnx``'s graph, Keras builds it layer by layer from cnnlab's
configs, and tinygrad has a port of the article's network only.

Every figure comes from this run: each round starts one fresh process per peer (so peak RSS is
that peer's own; cnnlab's includes its shard worker processes, ``workers_peak_mb``), in turn,
and each ratio is taken against PyTorch eager *in the same round*; the table shows medians over
rounds. Model-FLOP utilisation divides the model's FLOP rate by a float32 GEMM peak measured
here, in the same run. Peers that are not installed are skipped:
`pip install -e '.[bench]'` installs the optional ones that install cleanly.

On the GPU (``--device gpu``) the peers are PyTorch eager and torch.compile on CUDA and cnnlab
on CuPy. cnnlab's GPU path is switched off in the library until its tests pass on a GPU
(``cnnlab.engine.devices.GPU_ENGINE``); this benchmark switches it on for its own process, to
measure what is behind the switch. Every timed call waits for the device: cnnlab's return host
values (the loss, the outputs), PyTorch's synchronise. MFU is left out there (the peak
measured here is the CPU's).
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
GPU_PEERS = ["cnnlab", "torch", "torch.compile"]
#: 'cpu' or 'gpu' (``--device``), for this process and the workers it starts
DEVICE = "cpu"


# --- what one step costs --------------------------------------------------------------------
def train_flops_per_image(model_name) -> float:
    """Multiply-adds x 2 of the forward pass's convolutions and dense layers, plus backward: the
    weight gradient and the input gradient each cost a forward's worth, except that the first
    layer has no input gradient. (BatchNorm, pooling and activations are not counted.)"""
    forward = []
    for node in cnnlab_model(model_name).nodes:
        layer, out = node.layer, node.outputs[0].shape
        kind = type(layer).__name__
        if kind == "Conv2D":
            kh, kw = layer.kernel_size
            forward.append(2 * out[1] * out[2] * kh * kw * node.inbound[0].shape[-1] * out[-1])
        elif kind == "DepthwiseConv2D":
            kh, kw = layer.kernel_size
            forward.append(2 * out[1] * out[2] * kh * kw * out[-1])
        elif kind == "Dense":
            forward.append(2 * node.inbound[0].shape[-1] * out[-1])
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
    """This process's peak RSS, and what cnnlab's shard worker processes add to it."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 + workers_peak_mb()


def workers_peak_mb() -> float:
    """Each of cnnlab's shard worker processes' peak RSS, less the pages it still shares with
    this one: shared since the fork, so shared at its peak too, and counted in this process's
    RSS. An upper bound on what the workers add at the peak."""
    workers = sys.modules.get("cnnlab.training.workers")
    total_kb = 0
    for pid in workers.pids() if workers else []:
        with open(f"/proc/{pid}/status") as status:
            peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            shared = sum(int(line.split()[1]) for line in rollup
                         if line.startswith(("Shared_Clean:", "Shared_Dirty:")))
        total_kb += peak - shared
    return total_kb / 1024


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


MODELS = ["article", "cifar10_cnn", "resnet20", "mobilenet_small"]
#: zoo networks measured on request, not by --model all: the CIFAR-10 recipes' own
RECIPE_MODELS = ["cifar_vgg", "cifar_vgg_wide"]


def input_shape(model_name):
    return (28, 28, 1) if model_name == "article" else (32, 32, 3)


def data(model_name, channels_first=False, batch=None):
    rng = np.random.default_rng(0)
    x = rng.random((batch or BATCH, *input_shape(model_name)), dtype=np.float32)
    y = rng.integers(0, 10, batch or BATCH)
    return (x.transpose(0, 3, 1, 2).copy() if channels_first else x), y


def cnnlab_model(model_name):
    """The network, built by cnnlab and compiled with SGD (momentum 0.9)."""
    import cnnlab
    from cnnlab import layers
    if model_name == "cifar10_cnn":
        model = cnnlab.Sequential([
            layers.Input((32, 32, 3)),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(), layers.Flatten(),
            layers.Dense(512, activation="relu"), layers.Dense(10, activation="softmax")],
            name="cifar10_cnn")
    else:
        model = cnnlab.zoo.get(model_name, input_shape=input_shape(model_name), num_classes=10)
    model.compile(optimizer=cnnlab.optimizers.SGD(0.01, momentum=0.9),
                  loss="sparse_categorical_crossentropy")
    return model


def torch_twin(model_name):
    """PyTorch's copy of the network (``to_torch``), the last softmax left to the loss."""
    from cnnlab.export import to_torch
    model = cnnlab_model(model_name)
    model.layers[-1].activation = "linear"
    return to_torch(model).train()


def measure_keras_api(model, model_name, seconds) -> dict:
    """``measure`` for a compiled model with Keras' batch methods (cnnlab's and Keras' own)."""
    x, y = data(model_name)
    one = x[:1]
    return measure(lambda: model.train_on_batch(x, y), lambda: model.predict_on_batch(x),
                   lambda: model.predict_on_batch(one), seconds)


# --- the peers ----------------------------------------------------------------------------------
def run_cnnlab(model_name, seconds):
    import cnnlab
    if DEVICE == "gpu":
        from cnnlab.engine import devices
        devices.GPU_ENGINE = True               # what is behind the switch (module docstring)
        cnnlab.config.set_device("gpu")
    return {**measure_keras_api(cnnlab_model(model_name), model_name, seconds),
            "version": cnnlab.__version__}


def run_torch(model_name, seconds, compiled=False):
    import torch
    import torch.nn.functional as F  # noqa: N812
    net = torch_twin(model_name)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x, y = data(model_name, channels_first=True)
    x, y, one = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(x[:1].copy())
    on_gpu = DEVICE == "gpu"
    if on_gpu:
        net, x, y, one = net.cuda(), x.cuda(), y.cuda(), one.cuda()
    model = torch.compile(net) if compiled else net
    wait = torch.cuda.synchronize if on_gpu else (lambda: None)

    def train_step():
        net.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        wait()

    def infer(batch):
        net.eval()
        with torch.no_grad():
            out = model(batch)
        wait()
        return out

    result = measure(train_step, lambda: infer(x), lambda: infer(one), seconds)
    return {**result, "version": torch.__version__, "threads": torch.get_num_threads()}


#: cnnlab layer -> Keras layer of the same name, from the same config (Keras' argument names)
KERAS_KEYS = {"Conv2D": ["filters", "kernel_size", "strides", "padding", "dilation_rate",
                         "activation", "use_bias"],
              "DepthwiseConv2D": ["kernel_size", "strides", "padding", "depth_multiplier",
                                  "activation", "use_bias"],
              "Dense": ["units", "activation", "use_bias"],
              "BatchNormalization": ["momentum", "epsilon", "center", "scale"],
              "MaxPooling2D": ["pool_size", "strides", "padding"],
              "Activation": ["activation"], "ReLU": [], "Add": [], "Flatten": [],
              "Dropout": ["rate"],
              "GlobalAveragePooling2D": [], "GlobalMaxPooling2D": []}


def keras_model(model_name):
    """The same network in Keras, node by node from cnnlab's graph and layer configs."""
    import keras
    model = cnnlab_model(model_name)
    values = {id(t): keras.Input(t.shape[1:]) for t in model.inputs}
    inputs = [values[id(t)] for t in model.inputs]
    for node in model.nodes:
        layer = node.layer
        kind = type(layer).__name__
        if kind not in KERAS_KEYS:
            raise SystemExit(f"no Keras twin for {kind}")
        config = layer.get_config()
        args = {key: config[key] for key in KERAS_KEYS[kind] if key in config}
        made = getattr(keras.layers, kind)(**args)
        reads = [values[id(t)] for t in node.inbound]
        values[id(node.outputs[0])] = made(reads if kind == "Add" else reads[0])
    return keras.Model(inputs, [values[id(t)] for t in model.outputs])


def run_keras(model_name, seconds, backend):
    os.environ["KERAS_BACKEND"] = backend         # read when keras is first imported
    import keras
    model = keras_model(model_name)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss="sparse_categorical_crossentropy")
    return {**measure_keras_api(model, model_name, seconds),
            "version": f"keras {keras.__version__} ({keras.backend.backend()})"}


def run_tinygrad(model_name, seconds):
    if model_name != "article":
        raise SystemExit(f"no tinygrad port of {model_name}")
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
    xs, ys = data(model_name, channels_first=True)
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


def run_onnxruntime(model_name, seconds):
    import onnxruntime as ort

    from cnnlab.export import to_onnx
    session = ort.InferenceSession(
        to_onnx(cnnlab_model(model_name), input_layout="NCHW").SerializeToString(),
        providers=["CPUExecutionProvider"])
    x, _ = data(model_name, channels_first=True)
    one = x[:1].copy()
    result = measure(lambda: None, lambda: session.run(None, {"input": x}),
                     lambda: session.run(None, {"input": one}), seconds)
    result["train"] = float("nan")
    return {**result, "version": ort.__version__}


RUNNERS = {"cnnlab": run_cnnlab, "torch": run_torch,
           "torch.compile": lambda m, s: run_torch(m, s, compiled=True),
           "keras-tensorflow": lambda m, s: run_keras(m, s, "tensorflow"),
           "keras-jax": lambda m, s: run_keras(m, s, "jax"),
           "tinygrad": run_tinygrad, "onnxruntime": run_onnxruntime}
REQUIRES = {"torch": ["torch"], "torch.compile": ["torch"],
            "keras-tensorflow": ["keras", "tensorflow"], "keras-jax": ["keras", "jax"],
            "tinygrad": ["tinygrad"], "onnxruntime": ["onnxruntime", "onnx"], "cnnlab": ["cnnlab"]}


def installed(peer) -> bool:
    import importlib.util
    return all(importlib.util.find_spec(name) is not None for name in REQUIRES[peer])


def run_worker(peer, model_name, seconds) -> dict:
    """One measurement in a fresh process: its JSON is the last line of stdout."""
    result = subprocess.run([sys.executable, __file__, "--worker", peer, "--model", model_name,
                             "--seconds", str(seconds), "--device", DEVICE], capture_output=True,
                            text=True, timeout=900)
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0][:200]}


# --- the report ---------------------------------------------------------------------------------
def compare(model_name, rounds, seconds, peers):
    flops = train_flops_per_image(model_name)
    rows = {p: [] for p in peers}
    peaks = []
    for r in range(rounds):
        peaks.append(gemm_peak_gflops() if DEVICE == "cpu" else float("nan"))
        order = peers if r % 2 == 0 else list(reversed(peers))   # alternate who goes first
        for peer in order:
            rows[peer].append(run_worker(peer, model_name, seconds))
            print(f"{model_name} round {r + 1}/{rounds} {peer}: {rows[peer][-1]}",
                  file=sys.stderr)
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


def gpu_name() -> str:
    import torch
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"


def markdown(model_name, table, peak, flops, rounds) -> str:
    def cell(entry, key, fmt):
        if key not in entry or entry[key] != entry[key]:
            return "—"
        text = fmt.format(entry[key])
        ratio = entry.get(key + "_ratio")
        return f"{text} ({ratio:.2f}x)" if ratio is not None and ratio == ratio else text

    where = (f"Machine: {machine()}. float32 GEMM peak measured in this run: {peak:.0f} "
             f"GFLOP/s" if DEVICE == "cpu" else f"On the GPU: {gpu_name()}; host {machine()}")
    lines = [f"**{model_name}**, batch {BATCH}, float32, random data; medians of {rounds} "
             f"interleaved rounds; (ratio to PyTorch eager in the same round). {where}; a "
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


def update_readme(block: str, text: str) -> None:
    """Replace the README's text between ``<!-- block:begin -->`` and ``<!-- block:end -->``."""
    path = os.path.join(os.path.dirname(__file__), "..", "README.md")
    with open(path) as handle:
        readme = handle.read()
    begin, end = f"<!-- {block}:begin -->", f"<!-- {block}:end -->"
    if begin not in readme:
        raise SystemExit(f"README.md has no {begin} marker")
    head, rest = readme.split(begin, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w") as handle:
        handle.write(f"{head}{begin}\n{text}\n{end}{tail}")


# --- sweeps -------------------------------------------------------------------------------------
SWEEP_BATCHES = (1, 2, 4, 8, 16, 32, 128, 512)


def sweep_rate(peer, model_name, batch, threads=None) -> float:
    """Training img/s of one peer at one batch size (run in a fresh process by ``sweep`` and
    ``threads_sweep``), on ``threads`` threads (None: the library's default)."""
    if peer == "cnnlab":
        import cnnlab
        if threads is not None:
            cnnlab.config.set_threads(threads)
        model = cnnlab_model(model_name)
        x, y = data(model_name, batch=batch)

        def step():
            model.train_on_batch(x, y)
    else:
        import torch
        import torch.nn.functional as F  # noqa: N812
        if threads is not None:
            torch.set_num_threads(threads)
        net = torch_twin(model_name)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        xs, ys = data(model_name, channels_first=True, batch=batch)
        x, y = torch.from_numpy(xs), torch.from_numpy(ys)

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            opt.step()
    for _ in range(3):
        step()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < 2.0:
        step()
        steps += 1
    return steps * batch / (time.perf_counter() - start)


def _rate_in_fresh_process(peer, model_name, batch, threads=None) -> float:
    command = [sys.executable, __file__, "--sweep-worker", peer, "--model", model_name,
               "--batch", str(batch)]
    if threads is not None:
        command += ["--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise SystemExit(f"{peer} failed at batch {batch}, {threads} threads:\n"
                         f"{result.stderr[-2000:]}")
    return float(result.stdout.strip().splitlines()[-1])


def sweep(models=("article", "resnet20"), rounds=3):
    """Training img/s of cnnlab and PyTorch eager (the same network) at each batch size: each
    measurement in a fresh process (one library's idle threads never slow the other's), the two
    alternating who goes first; medians of ``rounds``, the ratio taken within each round."""
    lines = ["| model | batch | cnnlab train img/s | torch train img/s | ratio |",
             "|---|---|---|---|---|"]
    print("\n".join(lines))
    for model_name in models:
        for batch in SWEEP_BATCHES:
            rates = {"cnnlab": [], "torch": []}
            for r in range(rounds):
                for peer in (["cnnlab", "torch"] if r % 2 == 0 else ["torch", "cnnlab"]):
                    rates[peer].append(_rate_in_fresh_process(peer, model_name, batch))
            a, b = statistics.median(rates["cnnlab"]), statistics.median(rates["torch"])
            ratio = statistics.median(x / y for x, y in zip(rates["cnnlab"], rates["torch"]))
            lines.append(f"| {model_name} | {batch} | {a:,.0f} | {b:,.0f} | {ratio:.2f}x |")
            print(lines[-1], flush=True)
    return "\n".join(lines)


def thread_counts(cores: int) -> list[int]:
    """1, 2, 4, ... up to the machine's cores, and the core count itself."""
    counts = [1]
    while counts[-1] * 2 <= cores:
        counts.append(counts[-1] * 2)
    return counts if counts[-1] == cores else [*counts, cores]


def threads_sweep(model_name, batch=BATCH, rounds=3):
    """Training img/s of cnnlab (``cnnlab.config.set_threads(t)``) and PyTorch eager
    (``torch.set_num_threads(t)``) at each thread count up to the machine's cores, batch
    ``batch``: each measurement in a fresh process, the two alternating who goes first; medians
    of ``rounds``, the ratio taken within each round; and each library's speed-up over its own
    1-thread rate."""
    lines = [f"{model_name}, batch {batch}, training; {os.cpu_count()} cores",
             "", "| threads | cnnlab img/s | torch img/s | ratio | cnnlab vs 1 thread | "
             "torch vs 1 thread |", "|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    base = {}
    for threads in thread_counts(os.cpu_count() or 1):
        rates = {"cnnlab": [], "torch": []}
        for r in range(rounds):
            for peer in (["cnnlab", "torch"] if r % 2 == 0 else ["torch", "cnnlab"]):
                rates[peer].append(_rate_in_fresh_process(peer, model_name, batch, threads))
        medians = {peer: statistics.median(values) for peer, values in rates.items()}
        base = base or medians
        ratio = statistics.median(x / y for x, y in zip(rates["cnnlab"], rates["torch"]))
        lines.append(f"| {threads} | {medians['cnnlab']:,.0f} | {medians['torch']:,.0f} | "
                     f"{ratio:.2f}x | {medians['cnnlab'] / base['cnnlab']:.2f}x | "
                     f"{medians['torch'] / base['torch']:.2f}x |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="article", choices=[*MODELS, *RECIPE_MODELS, "all"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--peers", help=f"default: {','.join(PEERS)}; on the GPU "
                                             f"{','.join(GPU_PEERS)}")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--update-readme", action="store_true")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--threads-sweep", action="store_true",
                        help="--model's training at 1, 2, 4, ... threads up to the machine's "
                             "cores, against PyTorch at the same count")
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--sweep-worker", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if args.sweep_worker:
        print(sweep_rate(args.sweep_worker, args.model, args.batch, args.threads))
        return
    if args.worker:
        print(json.dumps(RUNNERS[args.worker](args.model, args.seconds)))
        return
    if args.threads_sweep:
        threads_sweep(args.model, rounds=args.rounds)
        return
    if args.sweep:
        text = sweep(rounds=args.rounds)
        if args.update_readme:
            update_readme("sweep", text)
        return
    peers = [p for p in (args.peers or ",".join(PEERS if DEVICE == "cpu" else GPU_PEERS))
             .split(",") if installed(p)]
    if "torch" not in peers:
        raise SystemExit("PyTorch eager is the reference peer: pip install torch==2.13.0")
    for model_name in (MODELS if args.model == "all" else [args.model]):
        table, peak, flops = compare(model_name, args.rounds, args.seconds, peers)
        text = markdown(model_name, table, peak, flops, args.rounds)
        print(text, flush=True)
        if args.update_readme:
            update_readme(f"benchmark:{model_name}", text)


if __name__ == "__main__":
    main()
