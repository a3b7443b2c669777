"""How fast the web app answers: server-side time of one prediction with every activation, and
a load test of concurrent predictions against a real `cnnlab serve` process.

    python benchmarks/serve_latency.py [MODEL.cnnlab] [--concurrent 200] [--rounds 3]

Without a model it trains the article's CNN for one epoch on the bundled digits first. The
server runs in its own process (so the clients here do not share its interpreter); the
drawings are 280 x 280 PNGs like the draw page sends. Reported: the server's own timing
(`timing_ms` in each answer: decode + MNIST-style preparation + forward pass + encoding of every
layer's maps), round-trip latency p50/p99 one at a time, and with N clients firing at once
(a barrier releases them together), also while a training run is going.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from PIL import Image, ImageDraw


def drawing(seed: int) -> bytes:
    image = Image.new("L", (280, 280))
    draw = ImageDraw.Draw(image)
    x = 110 + seed % 60
    draw.line([(x, 40), (x + seed % 20, 240)], fill=255, width=20)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


TOKEN = {}        # the header carrying the token the server printed


def post(url, body, kind):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": kind, **TOKEN})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        payload = json.loads(response.read())
    return (time.perf_counter() - start) * 1e3, payload


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def one_at_a_time(base, count=200):
    rounds, server = [], []
    for i in range(count):
        ms, payload = post(base + "api/predict", drawing(i), "image/png")
        rounds.append(ms)
        server.append(payload["timing_ms"]["total"])
    return rounds, server


def all_at_once(base, clients):
    barrier = threading.Barrier(clients)
    latencies, errors = [], []

    def client(i):
        body = drawing(i)
        barrier.wait()
        try:
            latencies.append(post(base + "api/predict", body, "image/png")[0])
        except Exception as exc:                          # noqa: BLE001 - counted, reported
            errors.append(repr(exc))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - start


def line(name, values):
    return (f"{name:<44} p50 {statistics.median(values):7.2f} ms   p99 "
            f"{percentile(values, 99):7.2f} ms   max {max(values):7.2f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("--concurrent", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="cnnlab-serve-bench-")
    model = args.model
    if model is None:
        model = os.path.join(work, "digits.cnnlab")
        subprocess.run([sys.executable, "-m", "cnnlab", "train", "--epochs", "1", "--out", model,
                        "--verbose", "0"], check=True)
    env = {**os.environ, "CNNLAB_HOME": work}
    server = subprocess.Popen([sys.executable, "-m", "cnnlab", "serve", model, "--port", "0"],
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        for text in server.stdout:
            if "serving at" in text:
                base, token = text.split("serving at ", 1)[1].split()[0].split("?token=")
                TOKEN["X-Cnnlab-Token"] = token
                break
        for i in range(20):                                     # warm up
            post(base + "api/predict", drawing(i), "image/png")
        rounds, server_side = one_at_a_time(base)
        print(f"cnnlab serve {model}  ({os.cpu_count()} cores)")
        print(line("server-side predict (timing_ms.total)", server_side))
        print(line("round trip, one request at a time", rounds))
        for r in range(args.rounds):
            latencies, errors, seconds = all_at_once(base, args.concurrent)
            print(line(f"{args.concurrent} at once, round {r + 1} ({len(errors)} errors)", latencies)
                  + f"   {len(latencies) / seconds:,.0f} req/s")
            if errors:
                print("first error:", errors[0])
        post(base + "api/train", json.dumps({"model": "article", "epochs": 5}).encode(),
             "application/json")
        time.sleep(2)
        latencies, errors, seconds = all_at_once(base, args.concurrent)
        print(line(f"{args.concurrent} at once while training ({len(errors)} errors)", latencies))
        if errors:
            print("first error:", errors[0])
        rounds, server_side = one_at_a_time(base, 50)
        print(line("server-side predict while training", server_side))
        post(base + "api/train/stop", b"{}", "application/json")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
