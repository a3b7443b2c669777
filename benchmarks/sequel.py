"""The sequel's pictures, measured: how far feature visualisation raises each filter above real
and random inputs, how well it recovers filters built to detect known patterns, what colour
decorrelation does, how well the embedding map keeps classes apart, and what each costs. Also
video throughput.

    python benchmarks/sequel.py

Everything runs on the shipped digits model and its 500 first held-out digits, colour on the
shipped CIFAR-10 model (the tests assert weaker bounds on the same quantities, so that they
cannot be flaky).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np

from cnnlab import datasets, zoo
from cnnlab.viz import embedding, features

# the filters built to detect known patterns are the tests' own (tests/patterns.py)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from patterns import NAMES as PATTERN_NAMES  # noqa: E402
from patterns import best_window_correlation, pattern_detector  # noqa: E402

FILTERS = list(range(16))


def visualisation_factors(model, x) -> None:
    print("Feature visualisation of the first 16 filters (128 steps, seed 0):")
    for layer, where in (("conv1", "centre"), ("conv2", "mean")):
        start = time.perf_counter()
        images = features.visualise(model, layer, filters=FILTERS, where=where)
        seconds = time.perf_counter() - start
        reached = features.objective(model, layer, images, FILTERS, where=where)
        real = np.stack([features.objective(model, layer, x, [f], where=where)
                         for f in FILTERS])
        noise = np.random.default_rng(1).uniform(0, 1, (len(FILTERS), *x.shape[1:]))
        random = features.objective(model, layer, noise, FILTERS, where=where)
        alive = real.max(axis=1) > 0
        over_real = reached[alive] / real[alive].mean(axis=1)
        print(f"  {layer} ({where}): {alive.sum()} of 16 fire on some digit; "
              f"x their mean over real digits: median {np.median(over_real):.1f} "
              f"(min {over_real.min():.1f}); x random pixels: median "
              f"{np.median(reached[alive] / np.maximum(random[alive], 1e-3)):.0f}; above the "
              f"best digit: {int(np.sum(reached[alive] > real[alive].max(axis=1)))} of "
              f"{alive.sum()}; {seconds:.1f} s")


def pattern_recovery() -> None:
    print("Filters built to detect a plus, a diagonal bar and a ring (best-window correlation "
          "of each visualisation with each pattern):")
    for size, n in ((15, 15), (27, 9)):
        model, patterns = pattern_detector(size, n)
        images = features.visualise(model, "detector", filters=range(3))[..., 0]
        for name, image in zip(PATTERN_NAMES, images):
            scores = [best_window_correlation(image, p) for p in patterns]
            print(f"  {n}x{n} filter on {size}x{size}, {name}: "
                  + ", ".join(f"{v:.2f}" for v in scores))


def colour_decorrelation() -> None:
    """The shipped CIFAR-10 model: saturation and activation with and without the decorrelated
    steps (1/f in space, natural photos' colour covariance across channels)."""
    model = zoo.load("cifar10")
    chosen = list(range(8))
    found = {}
    for decorrelate in (True, False):
        images = features.visualise(model, "block2_2_conv", filters=chosen,
                                    decorrelate=decorrelate)
        found[decorrelate] = (images.std(axis=-1).mean(),
                              features.objective(model, "block2_2_conv", images, chosen))
    print(f"Colour (CIFAR-10 model, block2_2_conv, 8 filters): saturation "
          f"{found[True][0]:.3f} decorrelated vs {found[False][0]:.3f} plain; activation a "
          f"median {np.median(found[True][1] / found[False][1]):.0%} of plain ascent's")


def embedding_separation(model, x, y) -> None:
    print("Embedding map of the 500 digits (an image's nearest neighbour in 2-D shares its "
          "class; chance 10%):")
    for method in ("pca", "tsne"):
        start = time.perf_counter()
        try:
            points = embedding.embedding_map(model, x, method=method)
        except Exception as exc:                  # noqa: BLE001 - t-SNE needs the extra
            print(f"  {method}: {exc}")
            continue
        distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
        np.fill_diagonal(distances, np.inf)
        print(f"  {method}: {np.mean(y[distances.argmin(axis=1)] == y):.1%} "
              f"({time.perf_counter() - start:.1f} s)")


def video_throughput() -> None:
    try:
        import av
    except ImportError:
        print("Video: needs pip install 'cnnlab[video]'")
        return
    from PIL import Image

    from cnnlab.tasks.video import process_video

    def write(path, frames, fps=24):
        with av.open(path, "w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.height, stream.width = frames[0].shape[:2]
            stream.pix_fmt = "yuv420p"
            for pixels in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)

    _, (digits, _) = datasets.load("mnist_sample")
    clip = []
    for k in range(240):                     # ten digits, each sliding for a second
        frame = np.zeros((96, 96), np.uint8)
        left = 4 + (k % 24) * 2
        frame[30:58, left:left + 28] = digits[k // 24]
        clip.append(np.repeat(frame[..., None], 3, axis=2))
    with tempfile.TemporaryDirectory() as folder:
        write(os.path.join(folder, "digits.mp4"), clip)
        start = time.perf_counter()
        result = process_video("digits", os.path.join(folder, "digits.mp4"),
                               out=os.path.join(folder, "out.mp4"),
                               csv_path=os.path.join(folder, "out.csv"))
        seconds = time.perf_counter() - start
        print(f"Video: classifying {result.frames} frames of 96x96: "
              f"{result.frames / seconds:.0f} frames/s")
        try:
            from skimage import data
        except ImportError:
            return
        photo = np.asarray(Image.fromarray(data.astronaut()).resize((320, 320)))
        write(os.path.join(folder, "photo.mp4"), [np.roll(photo, 4 * k, axis=1)
                                                  for k in range(48)])
        start = time.perf_counter()
        result = process_video("faces", os.path.join(folder, "photo.mp4"),
                               out=os.path.join(folder, "boxes.mp4"),
                               csv_path=os.path.join(folder, "boxes.csv"), detect_objects=True)
        seconds = time.perf_counter() - start
        print(f"Video: detecting faces in {result.frames} frames of 320x320: "
              f"{result.frames / seconds:.1f} frames/s")


def timeline_cost(rounds: int = 3) -> None:
    """What recording a training timeline costs a 1-epoch run of the article's CNN on the
    bundled digits: none, every quarter epoch at 48 visualisation steps (what it was), and the
    default (within 10% of the training time). Interleaved rounds; medians."""
    import statistics

    from cnnlab import seeding
    from cnnlab.runs import fit_run, new_run, run_settings
    from cnnlab.viz.timeline import TrainingTimeline
    kinds = {"no timeline": None,
             "every quarter epoch, 48 steps": dict(budget=None, visual_steps=48),
             "default (10% budget, 24 steps)": {}}
    seconds, frames = {k: [] for k in kinds}, {}
    for _ in range(rounds):
        for kind, options in kinds.items():
            settings = run_settings(epochs=1)
            with seeding.seeded(settings["seed"]):
                model, train, test = new_run(settings)
                callbacks = [] if options is None else [TrainingTimeline(test[0][0], **options)]
                start = time.perf_counter()
                fit_run(model, settings, train, test, verbose=0, callbacks=callbacks)
                seconds[kind].append(time.perf_counter() - start)
            frames[kind] = len(callbacks[0].frames) if callbacks else 0
    base = statistics.median(seconds["no timeline"])
    print(f"Training timeline's cost, 1 epoch of the article's CNN ({rounds} rounds):")
    for kind in kinds:
        median = statistics.median(seconds[kind])
        print(f"  {kind}: {median:.2f} s ({median / base - 1:+.0%}), {frames[kind]} frames")


def main() -> None:
    timeline_cost()
    model = zoo.load("digits")
    _, (x, y) = datasets.load("mnist_sample")
    x, y = datasets.as_model_input(x[:500]).astype(model.dtype), np.asarray(y[:500])
    visualisation_factors(model, x)
    pattern_recovery()
    colour_decorrelation()
    embedding_separation(model, x, y)
    video_throughput()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
