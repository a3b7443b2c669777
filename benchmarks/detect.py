"""Face detection on two portraits, measured: every box the shipped face model keeps, its
score, its IoU with a box drawn by hand around the face, and how many other windows above the
threshold overlap it (what the min-neighbours rule counts), with the rule and without.

    python benchmarks/detect.py [--model faces|FILE] [--threshold 0.9]

- scikit-image's ``astronaut.png`` is the issue's target: one box overlaps her face with
  IoU >= 0.5 and no other box scores above the threshold.
- matplotlib's ``grace_hopper.jpg`` (its sample data) is a second frontal portrait, a check
  that what helps on the astronaut is not fitted to her (``tests/portraits.py``).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from cnnlab.datasets import lfw_faces
from cnnlab.tasks import detect

# the portraits and their hand-drawn face boxes are the tests' own (tests/portraits.py)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from portraits import PORTRAITS  # noqa: E402


def measure(model, name: str, threshold: float) -> bool:
    """Print the boxes on one portrait; whether one box is on the face and none elsewhere."""
    load, face = PORTRAITS[name]
    target = detect.target_class(model)
    picture = load()
    pixels = detect.prepare(model, picture)
    windows = [detect.Detection(box, score) for box, score, _ in
               detect.scored_windows(model, pixels, target, threshold)]
    lit = np.asarray(picture.convert("L").crop(face), np.float64).mean() / 255
    print(f"{name}: {len(windows)} windows score >= {threshold}; the face's mean grey {lit:.2f}")
    for rule in (0, detect.MIN_NEIGHBORS):        # the detector's own rule last: its verdict counts
        kept = detect.non_max_suppression(windows, detect.NMS_IOU, rule)
        print(f"  min_neighbors={rule}: {len(kept)} boxes")
        for d in kept:
            neighbours = sum(detect.iou(d.box, w.box) > detect.NMS_IOU for w in windows) - 1
            print(f"    box ({', '.join(f'{v:.0f}' for v in d.box)})  score {d.score:.3f}  "
                  f"IoU with the face {detect.iou(d.box, face):.2f}  neighbours {neighbours}")
        faces = [d for d in kept if detect.iou(d.box, face) >= 0.5]
        met = len(faces) == 1 and len(kept) == 1
        print(f"    target {'met' if met else 'NOT met'}: {len(faces)} box(es) on the face, "
              f"{len(kept) - len(faces)} elsewhere")
    return met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=detect.DEFAULT_MODEL)
    parser.add_argument("--threshold", type=float, default=detect.THRESHOLD)
    args = parser.parse_args()
    model = detect.load_detector(args.model)
    faces = lfw_faces.crops()[0].mean(axis=(1, 2)) / 255          # the 100 training faces
    print(f"{model.name} ({args.model}); lfw_faces' faces: mean grey {faces.mean():.2f}, "
          f"90th percentile {np.percentile(faces, 90):.2f}")
    met = {name: measure(model, name, args.threshold) for name in PORTRAITS}
    print("summary: " + ", ".join(f"{name} {'met' if ok else 'NOT met'}"
                                  for name, ok in met.items()))


if __name__ == "__main__":
    main()
