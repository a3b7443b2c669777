"""Face detection measured two ways.

1. Against OpenCV's Haar cascade (``haarcascade_frontalface_default``, scale 1.1, 5 neighbours,
   faces from 24 px) on photos with known boxes: held-out Caltech faces pasted at random sizes
   and places into held-out scenes (``cnnlab.datasets.web_faces``; ``--faces-data`` names
   ``faces-train.tar.gz``). Both are scored alike (``tasks.detect.score_detections``): average
   precision (PASCAL VOC, a face found at IoU >= 0.3), recall at 0.3 false boxes per photo, and
   seconds per megapixel on this machine. OpenCV is a benchmark-only extra
   (``pip install 'opencv-python-headless<5'``), never a dependency of cnnlab.
2. ``--memory``: peak memory (RSS) and seconds of ``tasks.detect`` on blank grey photos of
   2000x2000 and 4000x4000 pixels, each in a fresh process (the pyramid runs in bands of
   ``detect.BAND_PIXELS``, so the peak should not grow with the photo).
   ``--misses`` then lists the faces missed at 0.3 false boxes a photo, with the best score
   of a window on each, and the false boxes' scores.
3. ``--speed``: in a fresh process, the import and the model's loading apart from detection;
   then ``tasks.detect`` on a 640x480 and a 1000x1000 photo (the first call, and the median
   of 5 after it), and video: frames per second of ``tasks.video`` detecting in a 640x480 clip.
4. On two portraits: every box the detector keeps as it ships (its verifiers, threshold and
   neighbour count; ``--threshold`` and ``--min-neighbors`` change them), its score, its IoU
   with a box drawn by hand around the face, and how many other windows above the threshold
   overlap it (what the min-neighbours rule counts), with the rule and without.

    python benchmarks/detect.py [--model faces|FILE] [--verifier FILE]... [--threshold T]
                                [--faces-data FILE] [--min-neighbors N] [--memory] [--speed]

- scikit-image's ``astronaut.png`` is the issue's target: one box overlaps her face with
  IoU >= 0.5 and no other box scores above the threshold.
- matplotlib's ``grace_hopper.jpg`` (its sample data) is a second frontal portrait, a check
  that what helps on the astronaut is not fitted to her (``tests/portraits.py``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

from cnnlab.datasets import lfw_faces, web_faces
from cnnlab.tasks import detect

# the portraits and their hand-drawn face boxes are the tests' own (tests/portraits.py)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from portraits import PORTRAITS  # noqa: E402


def measure(model, name: str, verifier=None, threshold: float | None = None,
            min_neighbors: int | None = None) -> bool:
    """Print the boxes on one portrait; whether one box is on the face and none elsewhere. The
    detector runs as it ships (its verifiers, threshold and neighbour count, unless given)."""
    model, verifiers, (chosen, neighbours) = detect.detector(model, verifier)
    threshold = chosen if threshold is None else threshold
    rule = neighbours if min_neighbors is None else min_neighbors
    load, face = PORTRAITS[name]
    picture = load()
    windows = [w for w in detect.candidates(picture, model, list(verifiers))
               if w.score >= threshold]
    lit = np.asarray(picture.convert("L").crop(face), np.float64).mean() / 255
    print(f"{name}: {len(windows)} windows score >= {threshold:.4f} ({1 + len(verifiers)} "
          f"stage{'s' * bool(verifiers)}); the face's mean grey {lit:.2f}")
    for neighbours in sorted({0, rule}):     # the detector's own rule last: its verdict counts
        kept = (detect.detect(picture, model, threshold=threshold, min_neighbors=neighbours,
                              verifier=list(verifiers)) if neighbours
                else detect.non_max_suppression(windows, detect.NMS_IOU))   # no rule: every box
        print(f"  min_neighbors={neighbours}: {len(kept)} boxes")
        for d in kept:
            others = sum(detect.iou(d.box, w.box) > detect.NMS_IOU for w in windows) - 1
            print(f"    box ({', '.join(f'{v:.0f}' for v in d.box)})  score {d.score:.4f}  "
                  f"IoU with the face {detect.iou(d.box, face):.2f}  neighbours {others}")
        faces = [d for d in kept if detect.iou(d.box, face) >= 0.5]
        met = len(faces) == 1 and len(kept) == 1
        print(f"    target {'met' if met else 'NOT met'}: {len(faces)} box(es) on the face, "
              f"{len(kept) - len(faces)} elsewhere")
    return met


def _haar():
    import cv2
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")

    def run(grey: np.ndarray):
        boxes, _, weights = cascade.detectMultiScale3(
            (grey * 255).round().astype(np.uint8), scaleFactor=1.1, minNeighbors=5,
            minSize=(24, 24), outputRejectLevels=True)
        return [detect.Detection((float(x), float(y), float(x + w), float(y + h)), float(s))
                for (x, y, w, h), s in zip(np.reshape(boxes, (-1, 4)), np.ravel(weights))]
    return run


def _test_photos(data: str, seed: int = web_faces.TEST_SEED):
    """The held-out faces pasted into the held-out scenes: ``(photos, their true boxes)``."""
    held_out = web_faces.split(web_faces.read(data))[1]
    photos = web_faces.pasted_photos(held_out.faces, held_out.scenes, seed=seed)
    return photos, [boxes for _, boxes in photos]


def versus_haar(model, data: str, verifier=None, min_neighbors: int | None = None) -> None:
    """Both detectors on the same pasted photos; their scores side by side (cnnlab's with its
    ``verifier`` too, when one is given; ``min_neighbors``: cnnlab's neighbour count, default
    each detector's own)."""
    photos, truth = _test_photos(data)
    megapixels = sum(p.size for p, _ in photos) / 1e6
    print(f"{len(photos)} held-out scenes with {sum(map(len, truth))} held-out faces pasted in "
          f"(24-160 px), {megapixels:.1f} megapixels")
    # the curve of detect() itself, threshold by threshold (neighbours counted from each one)
    detectors = {f"cnnlab {model.name}": lambda grey: detect.detection_curve(
        grey[..., None], model, min_neighbors=min_neighbors)}
    if verifier is not None:
        detectors[f"cnnlab {model.name} + verifier"] = lambda grey: detect.detection_curve(
            grey[..., None], model, verifier, min_neighbors=min_neighbors)
    try:
        detectors["OpenCV Haar cascade"] = _haar()
    except ImportError:
        print("  (OpenCV is not installed: pip install 'opencv-python-headless<5' to compare)")
    for name, run in detectors.items():
        start = time.perf_counter()
        found = [run(grey) for grey, _ in photos]
        seconds = time.perf_counter() - start
        scores = detect.score_detections(found, truth)
        print(f"  {name:<24} average precision {scores.average_precision:.3f}, recall "
              f"{scores.recall:.3f} at {scores.false_per_photo} false boxes a photo (score >= "
              f"{scores.threshold:.3f}), {seconds / megapixels:.2f} s per megapixel")


def misses(model, data: str) -> None:
    """Where recall is lost, at the threshold that allows 0.3 false boxes a photo: each missed
    face's size and the best score of a window on it (IoU >= 0.3, before suppression), and the
    scores of the false boxes that outrank it."""
    photos, truth = _test_photos(data)
    target = detect.target_class(model)
    windows = [[detect.Detection(box, score) for box, score, _ in
                detect.scored_windows(model, grey[..., None], target, detect.WINDOW_FLOOR)]
               for grey, _ in photos]
    found = [detect.detection_curve(grey[..., None], model) for grey, _ in photos]
    threshold = detect.score_detections(found, truth).threshold
    missed, false = [], []
    for kept, boxes, scored in zip(found, truth, windows):
        free = list(boxes)
        for d in sorted((d for d in kept if d.score >= threshold), key=lambda d: -d.score):
            overlaps = [detect.iou(d.box, b) for b in free]
            if overlaps and max(overlaps) >= 0.3:
                free.pop(int(np.argmax(overlaps)))
            else:
                false.append(d.score)
        missed += [(b[2] - b[0], max((w.score for w in scored if detect.iou(w.box, b) >= 0.3),
                                     default=0.0)) for b in free]
    print(f"At threshold {threshold:.4f}: {len(missed)} of {sum(map(len, truth))} faces missed; "
          f"the best window on each:")
    for size, best in sorted(missed):
        print(f"  a {size:.0f} px face: {best:.4f}")
    print(f"  {len(false)} false boxes score " + ", ".join(f"{s:.4f}" for s in sorted(false)))


# the process's own peak (VmHWM): Linux keeps ru_maxrss across exec, so a child reports its
# parent's size when that is larger
BLANK_PHOTO = """
import sys, time
import numpy as np
from cnnlab.tasks import detect
side, model = int(sys.argv[1]), sys.argv[2]
start = time.perf_counter()
found = detect.detect(np.full((side, side, 1), 0.5, np.float32), model)
with open("/proc/self/status") as status:
    peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
print(time.perf_counter() - start, len(found), peak)
"""


def memory(model: str) -> None:
    print(f"Blank grey photos through tasks.detect ({model}), each in a fresh process:")
    for side in (2000, 4000):
        out = subprocess.run([sys.executable, "-c", BLANK_PHOTO, str(side), model],
                             capture_output=True, text=True, check=True).stdout.split()
        seconds, boxes, kilobytes = float(out[0]), int(out[1]), int(out[2])
        print(f"  {side}x{side} ({side * side / 1e6:.0f} MP): {seconds:.1f} s, {boxes} boxes, "
              f"peak RSS {kilobytes / 1024:.0f} MB")


SPEED = """
import statistics, sys, time
start = time.perf_counter()
from cnnlab.tasks import detect
imported = time.perf_counter()
model = detect.load_detector(sys.argv[1])
verifier = detect.load_verifiers(sys.argv[3:]) or None
loaded = time.perf_counter()
sys.path.insert(0, sys.argv[2])
from portraits import astronaut
for width, height in ((640, 480), (1000, 1000)):
    photo = astronaut().resize((width, height))
    times = []
    for _ in range(6):
        begin = time.perf_counter()
        detect.detect(photo, model, verifier=verifier)
        times.append(time.perf_counter() - begin)
    print(width, height, times[0], statistics.median(times[1:]))
print("startup", imported - start, loaded - imported)
"""


def speed(model: str, verifier: list[str] | None = None) -> None:
    """Start-up apart from detection, in a fresh process; then the video rate, with the
    ``verifier`` cascade where one is given."""
    tests = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests")
    command = [sys.executable, "-c", SPEED, model, tests] + (verifier or [])
    lines = subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()
    imported, loaded = map(float, lines[-1].split()[1:])
    print(f"Speed of tasks.detect ({' + '.join([model, *(verifier or [])])}), in a fresh "
          f"process: import {imported:.2f} s, the model loaded in {loaded:.2f} s")
    for line in lines[:-1]:
        width, height, first, median = line.split()
        megapixels = int(width) * int(height) / 1e6
        print(f"  {width}x{height}: first call {float(first):.3f} s, then {float(median):.3f} s "
              f"(median of 5; {float(median) / megapixels:.2f} s per megapixel)")
    print(f"  video, 640x480, detecting: {video_rate(model, verifier=verifier):.1f} frames per "
          f"second")


def video_rate(model: str, frames: int = 30, verifier: list[str] | None = None) -> float:
    """Frames per second of ``tasks.video.process_video`` detecting in a 640x480 clip."""
    import tempfile

    import av
    from portraits import astronaut

    from cnnlab.tasks import video
    still = np.asarray(astronaut().convert("RGB").resize((640, 480)))
    with tempfile.TemporaryDirectory(prefix="cnnlab-video-") as folder:
        clip = os.path.join(folder, "clip.mp4")
        with av.open(clip, "w") as container:
            stream = container.add_stream("libx264", rate=15)
            stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
            for k in range(frames):                   # the portrait drifting across the frame
                frame = av.VideoFrame.from_ndarray(np.roll(still, 4 * k, axis=1), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
        start = time.perf_counter()
        result = video.process_video(model, clip, out=os.path.join(folder, "out.mp4"),
                                     csv_path=os.path.join(folder, "out.csv"),
                                     detect_objects=True, verifier=verifier)
        return result.frames / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=detect.DEFAULT_MODEL)
    parser.add_argument("--threshold", type=float,
                        help="on the portraits: the score a box needs (default: the "
                             "detector's own, chosen by its recipe)")
    parser.add_argument("--verifier", metavar="FILE", action="append",
                        help="a second stage (recipes/pretrain.py web_faces writes one): scored "
                             "beside the first alone with --faces-data, and timed with --speed; "
                             "repeated, a cascade (each looks at what the one before left)")
    parser.add_argument("--faces-data", metavar="FILE",
                        help="faces-train.tar.gz (or its folder): compare with OpenCV's Haar "
                             "cascade on held-out faces pasted into held-out scenes")
    parser.add_argument("--min-neighbors", type=int,
                        help="with --faces-data and on the portraits: cnnlab's neighbour count "
                             "(default: each detector's recipe's, else 3)")
    parser.add_argument("--memory", action="store_true",
                        help="peak memory and time on blank 4 and 16 megapixel photos")
    parser.add_argument("--misses", action="store_true",
                        help="with --faces-data: the faces missed, and what outranks them")
    parser.add_argument("--speed", action="store_true",
                        help="start-up, 640x480 and 1 megapixel detection, and video frames per "
                             "second")
    args = parser.parse_args()
    if args.memory:
        memory(args.model)
    if args.speed:
        speed(args.model, args.verifier)
    model = detect.load_detector(args.model)
    if args.faces_data:
        versus_haar(model, args.faces_data,
                    detect.load_verifiers(args.verifier) or None, args.min_neighbors)
        if args.misses:
            misses(model, args.faces_data)
    faces = lfw_faces.crops()[0].mean(axis=(1, 2)) / 255          # the 100 training faces
    print(f"{model.name} ({args.model}); lfw_faces' faces: mean grey {faces.mean():.2f}, "
          f"90th percentile {np.percentile(faces, 90):.2f}")
    met = {name: measure(model, name, args.verifier, args.threshold, args.min_neighbors)
           for name in PORTRAITS}
    print("summary: " + ", ".join(f"{name} {'met' if ok else 'NOT met'}"
                                  for name, ok in met.items()))


if __name__ == "__main__":
    main()
