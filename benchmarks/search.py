"""Photo search, measured: precision@5 by class on CIFAR-10 images the shipped backbone never
trained on, indexing throughput, and query latency (10k real vectors; 1M random ones, NumPy
against faiss).

    python benchmarks/search.py --data /tmp/cifar10/train

The images are the 10,000 of the shipped model's validation split (the seeded 20% that
`recipes/pretrain.py cifar10` held out). Each of them queries the index of all the others:
precision@5 is the share of its 5 nearest neighbours (itself excluded) of its own class.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

from cnnlab import zoo
from cnnlab.tasks import search
from cnnlab.utils import image_dataset_from_directory


def validation_files(data):
    settings = zoo.pretrained_model("cifar_vgg", "cifar10").metadata["train_settings"]
    split = image_dataset_from_directory(data, validation_split=0.2, subset="validation",
                                         seed=settings["seed"], image_size=(32, 32),
                                         verbose=False)
    return split.file_paths, split.labels, split.class_names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the CIFAR-10 training folder")
    parser.add_argument("--queries", type=int, default=10_000)
    args = parser.parse_args()
    files, labels, names = validation_files(args.data)
    with tempfile.TemporaryDirectory() as folder:
        for path, label in zip(files, labels):          # a folder of links to those images
            os.makedirs(os.path.join(folder, names[label]), exist_ok=True)
            os.symlink(path, os.path.join(folder, names[label], os.path.basename(path)))
        start = time.perf_counter()
        index = search.build_index(folder, out=os.path.join(folder, "..", "bench.index"))
        seconds = time.perf_counter() - start
        print(f"Indexed {len(index):,} images in {seconds:.1f} s: {len(index) / seconds:,.0f} "
              f"images/s (decode + embed + write)")
        classes = np.array([names.index(p.split("/")[0]) for p in index.paths])
        # precision@5, each image against all the others
        picked = np.random.default_rng(0).permutation(len(index))[:args.queries]
        hits = index.nearest(index.vectors[picked], 6)
        precision = np.array([np.mean([classes[j] == classes[q] for j, _ in row
                                       if j != q][:5]) for q, row in zip(picked, hits)])
        print("precision@5 by class: " + ", ".join(
            f"{names[c]} {precision[classes[picked] == c].mean():.1%}" for c in range(len(names)))
            + f"; mean {precision.mean():.1%} (chance {1 / len(names):.0%})")
        # query latency at 10k: a file end to end, and the search alone
        embedder = index.embedder()
        query = os.path.join(folder, index.paths[0])
        for _ in range(3):
            index.search(query, k=5, model=embedder)
        times = []
        for path in index.paths[:200]:
            start = time.perf_counter()
            index.search(os.path.join(folder, path), k=5, model=embedder)
            times.append(time.perf_counter() - start)
        alone = []
        for row in index.vectors[:200]:
            start = time.perf_counter()
            index.nearest(row[None], 5)
            alone.append(time.perf_counter() - start)
        print(f"Query at {len(index):,} vectors: {statistics.median(times) * 1e3:.2f} ms a file "
              f"(decode + embed + search), {statistics.median(alone) * 1e3:.3f} ms the search "
              f"alone (median of 200)")
        os.remove(os.path.join(folder, "..", "bench.index"))
    # 1M random unit vectors, exact search both ways
    rng = np.random.default_rng(1)
    width = index.vectors.shape[1]
    vectors = rng.standard_normal((1_000_000, width), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    big = search.Index("/", [""] * len(vectors), [(0, 0)] * len(vectors), vectors,
                       {"spec": "random", "name": "random", "weights_sha256": ""})
    queries = vectors[rng.integers(0, len(vectors), 20)]
    for backend in search.BACKENDS:
        try:
            big.nearest(queries[:1], 5, backend)
        except Exception as exc:             # faiss not installed: say so and go on
            print(f"1M vectors, {backend}: {exc}")
            continue
        single = []
        for q in queries:
            start = time.perf_counter()
            big.nearest(q[None], 5, backend)
            single.append(time.perf_counter() - start)
        start = time.perf_counter()
        batch = big.nearest(queries, 5, backend)
        print(f"1M vectors x {width}, {backend}: {statistics.median(single) * 1e3:.1f} ms a "
              f"query, {(time.perf_counter() - start) / len(queries) * 1e3:.1f} ms a query in a "
              f"batch of {len(queries)}; neighbours of query 1: {[i for i, _ in batch[0]]}")


if __name__ == "__main__":
    main()
