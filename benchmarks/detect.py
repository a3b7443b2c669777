"""Face detection on scikit-image's astronaut, measured: every box the shipped face model keeps,
its score, its IoU with a box drawn by hand around her face, and how many other windows above
the threshold overlap it (what the min-neighbours rule counts), with the rule and without.

    python benchmarks/detect.py [--model faces|FILE] [--threshold 0.9]

The issue's target: one box overlaps her face with IoU >= 0.5 and no other box scores above
the threshold. This prints whether it is met.
"""

from __future__ import annotations

import argparse

from PIL import Image

from cnnlab.tasks import detect

#: her face, eyebrows-to-chin and ear to ear, drawn by hand on the 512x512 picture (x0, y0, x1, y1)
FACE = (175, 70, 270, 180)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=detect.DEFAULT_MODEL)
    parser.add_argument("--threshold", type=float, default=detect.THRESHOLD)
    args = parser.parse_args()
    from skimage import data
    model = detect.load_detector(args.model)
    target = detect.target_class(model)
    pixels = detect.prepare(model, Image.fromarray(data.astronaut()))
    windows = [detect.Detection(box, score) for box, score, _ in
               detect.scored_windows(model, pixels, target, args.threshold)]
    print(f"{model.name}: {len(windows)} windows score >= {args.threshold} on the astronaut")
    for rule in (0, detect.MIN_NEIGHBORS):
        kept = detect.non_max_suppression(windows, detect.NMS_IOU, rule)
        print(f"min_neighbors={rule}: {len(kept)} boxes")
        for d in kept:
            neighbours = sum(detect.iou(d.box, w.box) > detect.NMS_IOU for w in windows) - 1
            print(f"  box ({', '.join(f'{v:.0f}' for v in d.box)})  score {d.score:.3f}  "
                  f"IoU with her face {detect.iou(d.box, FACE):.2f}  neighbours {neighbours}")
        faces = [d for d in kept if detect.iou(d.box, FACE) >= 0.5]
        print(f"  target {'met' if len(faces) == 1 and len(kept) == 1 else 'NOT met'}: "
              f"{len(faces)} box(es) on her face, {len(kept) - len(faces)} elsewhere")


if __name__ == "__main__":
    main()
