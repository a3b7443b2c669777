"""The commands for the article's uses of a CNN: ``index`` and ``search`` (photo search),
``detect`` (face detection, or any two-class model) and ``video``. Each is a thin layer over
``cnnlab.tasks``."""

from __future__ import annotations

import json
import os
import sys
import warnings

from cnnlab import outputs, zoo
from cnnlab.cli.options import add_command, positive_int, say_warnings


def cmd_index(args) -> int:
    """Embed every image of a folder (its penultimate layer, unit length) into an index file;
    again on a grown folder, only the new or changed images are embedded."""
    from cnnlab.tasks import search
    if not os.path.exists(args.out):            # an existing index is updated, by design
        outputs.given_path(args.out, "--out")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        index = search.build_index(args.folder, model=args.model, out=args.out,
                                   batch_size=args.batch_size, progress=sys.stderr.isatty())
    say_warnings(caught)
    for note in index.notes:
        print(note)
    print(f"Indexed {len(index):,} images of {args.folder} ({index.embedded:,} embedded now) "
          f"with {index.model['name']} ({args.model}); {index.vectors.shape[1]} numbers each. "
          f"Wrote {args.out}")
    return 0


def cmd_search(args) -> int:
    """The indexed images most like IMAGE, with their cosine similarity."""
    from cnnlab.tasks import search
    index = search.load_index(args.index)
    hits = index.search(args.image, k=args.k, model=args.model, backend=args.backend)
    if args.json:
        print(json.dumps([{**hit.to_json(), "path": os.path.join(index.root, hit.path)}
                          for hit in hits]))
        return 0
    for rank, hit in enumerate(hits, start=1):
        print(f"{rank:>3}  {hit.similarity:.4f}  {os.path.join(index.root, hit.path)}")
    return 0


def cmd_detect(args) -> int:
    """Boxes where a classifier finds its class: the shipped face model by default, or any
    two-class model, slid over the image at every scale in one convolutional pass per scale."""
    from cnnlab.tasks import detect
    if args.out:                                        # before the work, not after it
        outputs.given_path(args.out, "--out", outputs.image_extensions(), args.overwrite)
    # what was given, as given: with no --verifier, detect() takes the file's own cascade and
    # the rules chosen for its stages together
    model = detect.load_detector(args.model)
    found = detect.detect(args.image, model=model, threshold=args.threshold,
                          target=args.target, min_size=args.min_size,
                          min_neighbors=args.min_neighbors, verifier=args.verifier)
    if args.out:
        detect.draw(args.image, found, args.out)
    if args.json:
        print(json.dumps([d.to_json() for d in found]))
        return 0
    if not found:
        threshold = (detect.detector(model, args.verifier)[2][0] if args.threshold is None
                     else args.threshold)
        print(f"{args.image}: nothing scores {threshold:g} or more (try a lower "
              f"--threshold)")
    for d in found:
        x0, y0, x1, y1 = (round(v) for v in d.box)
        print(f"{args.image}: box ({x0}, {y0}, {x1}, {y1}) score {d.score:.3f}")
    if args.out:
        print(f"Wrote {args.out}")
    return 0


def cmd_video(args) -> int:
    """Classify every frame of a video (or detect in it, --detect): an annotated video and a
    CSV of per-frame results."""
    from cnnlab.tasks import video
    stem = os.path.splitext(args.input)[0]
    out = outputs.output(args.out, f"{stem}-cnnlab.mp4", "--out", (".mp4", ".mkv", ".mov"),
                         args.overwrite)
    table = outputs.output(args.csv, f"{os.path.splitext(out)[0]}.csv", "--csv", (".csv",),
                           args.overwrite)
    result = video.process_video(args.model, args.input, out=out, csv_path=table,
                                 detect_objects=args.detect, batch_size=args.batch_size,
                                 threshold=args.threshold, target=args.target,
                                 progress=sys.stderr.isatty(), verifier=args.verifier)
    if result.skipped:
        print(f"Warning: skipped {len(result.skipped)} damaged packet(s) of {args.input} "
              f"(numbers {result.skipped[:5]}{' ...' if len(result.skipped) > 5 else ''})",
              file=sys.stderr)
    print(f"{result.frames} frames at {result.fps:g} fps ({result.duration:.2f} s): wrote {out} "
          f"and {table}")
    return 0


def add_commands(commands) -> None:
    from cnnlab.tasks.search import BACKENDS, DEFAULT_MODEL
    index = add_command(
        commands, "index", cmd_index, "index a folder of photos for search",
        ["cnnlab index photos/ --out photos.index", "cnnlab search photos.index query.jpg -k 5"])
    index.add_argument("folder", help="a folder of images (searched recursively)")
    index.add_argument("--out", required=True, help="the index file to write (or to update)")
    index.add_argument("--model", default=DEFAULT_MODEL,
                       help=zoo.model_help() + " (default: %(default)s, the CIFAR-10 "
                            "backbone)")
    index.add_argument("--batch-size", type=positive_int, default=64,
                       help="images embedded at once (default: %(default)s)")
    find = add_command(
        commands, "search", cmd_search, "find the indexed photos most like one",
        ["cnnlab search photos.index query.jpg -k 5 --json"])
    find.add_argument("index", help="an index written by cnnlab index")
    find.add_argument("image", help="the query image")
    find.add_argument("-k", type=positive_int, default=5, help="how many (default: %(default)s)")
    find.add_argument("--json", action="store_true",
                      help='print [{"path", "similarity"}, ...] instead of lines')
    find.add_argument("--model", help="the query's model (default: the index's own; another "
                                      "model is refused)")
    find.add_argument("--backend", choices=BACKENDS, default="numpy",
                      help="exact search with NumPy, or with faiss (pip install "
                           "'cnnlab[search]') for large collections (default: %(default)s)")
    from cnnlab.tasks.detect import DEFAULT_MODEL as DETECTOR
    from cnnlab.tasks.detect import MIN_NEIGHBORS, THRESHOLD
    boxes = add_command(
        commands, "detect", cmd_detect, "find faces (or any two-class model's class) in a photo",
        ["cnnlab detect photo.jpg --out boxes.png", "cnnlab detect page.png --model digits.cnnlab --json"])
    boxes.add_argument("image", help="the photo")
    boxes.add_argument("--model", default=DETECTOR,
                       help="the shipped face detector (web_faces: a cascade of three "
                            "networks), the shipped faces model alone, or a .cnnlab classifier "
                            "(default: %(default)s)")
    boxes.add_argument("--verifier", action="append",
                       help="a second .cnnlab classifier (or shipped model) that looks again at "
                            "every window the model passes (recipes/pretrain.py web_faces "
                            "trains one); repeated, a cascade: each looks at what the one "
                            "before passed")
    boxes.add_argument("--out", help="also draw the boxes and scores on the photo, saved here")
    boxes.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    boxes.add_argument("--json", action="store_true",
                       help='print [{"box": [x0, y0, x1, y1], "score"}, ...] in the photo\'s '
                            "pixels")
    boxes.add_argument("--threshold", type=float,
                       help=f"the least probability a box needs (default: the one the model's "
                            f"recipe, or the verifier's, chose on validation photos, else "
                            f"{THRESHOLD})")
    boxes.add_argument("--target", help="the class to find, by name or index (default: 'face', "
                                        "or class 1 of a two-class model)")
    boxes.add_argument("--min-size", type=positive_int,
                       help="the smallest object in pixels (default: the model's window)")
    boxes.add_argument("--min-neighbors", type=int,
                       help=f"overlapping windows a box needs besides its own (default: the "
                            f"count the model's recipe, or the verifier's, chose with its "
                            f"threshold, else {MIN_NEIGHBORS}, as OpenCV's detectMultiScale)")
    clip = add_command(
        commands, "video", cmd_video, "classify or detect in every frame of a video",
        ["cnnlab video digits clip.mp4            # the shipped digits model",
         "cnnlab video web_faces clip.mp4 --detect --out boxes.mp4   # the face detector"])
    clip.add_argument("model", help=zoo.model_help())
    clip.add_argument("input", help="the video (anything FFmpeg reads)")
    clip.add_argument("--out", help="the annotated video (default: INPUT-cnnlab.mp4)")
    clip.add_argument("--csv", help="per-frame results (default: the --out name, .csv)")
    clip.add_argument("--overwrite", action="store_true",
                      help="replace --out and --csv if they exist")
    clip.add_argument("--detect", action="store_true",
                      help="detect (boxes) instead of classifying each whole frame")
    clip.add_argument("--batch-size", type=positive_int, default=32,
                      help="frames classified at once (default: %(default)s)")
    clip.add_argument("--threshold", type=float,
                      help=f"with --detect: the least probability a box needs (default: the "
                           f"model's own, else {THRESHOLD})")
    clip.add_argument("--target", help="with --detect: the class to find")
    clip.add_argument("--verifier", action="append",
                      help="with --detect: a second .cnnlab classifier that looks again at each "
                           "box, as cnnlab detect's --verifier (repeatable)")
