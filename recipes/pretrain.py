"""Train the weights that ship inside cnnlab (``cnnlab/weights``), exactly as they were made.

    python recipes/pretrain.py digits                         # the article's CNN, bundled digits
    python recipes/pretrain.py cifar10 --data DIR             # cifar_vgg on CIFAR-10's 50,000
    python recipes/pretrain.py cifar10 --data DIR --classes airplane,automobile,... --out F
    python recipes/pretrain.py faces --negatives DIR          # face_net on lfw_faces, bootstrapped
    python recipes/pretrain.py web_faces --data faces-train.tar.gz --out F   # on 6,713 faces
    python recipes/pretrain.py web_faces --data faces-train.tar.gz --first-stage F  # F's verifier
    python recipes/pretrain.py faces_cascade --data faces-train.tar.gz  # the shipped detector

``DIR`` holds one folder of images per class, as ``cifar10-train-jpeg.tar.gz`` extracts
(``tar xzf cifar10-train-jpeg.tar.gz -C /tmp/cifar10`` gives ``/tmp/cifar10/train``).
``--classes`` pretrains on some classes only (the transfer experiment in
``benchmarks/transfer.py`` holds two out).

Each run is ``cnnlab train`` with the zoo model's own recipe and seed 0 (``--seed`` to measure
how much a result owes to it): the same settings,
data split and code path, so ``cnnlab train --data DIR --model cifar_vgg`` trains the same
network. The file keeps no optimizer state, and its metadata records the recipe, the data, the
held-out accuracy and the command that made it.

The face detector is bootstrapped (Sung & Poggio, 1998): after each training round, the
detector runs over the not-face pictures of ``lfw_faces`` at every scale, and every window it
takes for a face (score >= 0.5) joins the not-faces for the next round, trained from scratch.
``web_faces`` does the same on Caltech's faces and the training scenes of ``faces-train.tar.gz``
(``cnnlab.datasets.web_faces``), written as an ``.npz`` that ``cnnlab train`` reads; its score
threshold is then chosen on held-out faces pasted into held-out scenes (the most recall at 0.3
false boxes a photo) and kept in the file's metadata, where ``tasks.detect`` finds it. Its
mining also runs over the training scenes with training faces pasted in, where a window that
clips a face without framing it (IoU < 0.3) is a false one too. Then a verifier, a second
``face_net`` at 36x36, trains on every window the first stage scores 0.5 or more that frames
no face (``train_verifier``), and the pair's threshold is chosen the same way; it is written
beside ``F`` as ``F-verifier.cnnlab`` (``cnnlab detect --model F --verifier F-verifier.cnnlab``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

import cnnlab
from cnnlab import seeding, zoo
from cnnlab.datasets import lfw_faces, web_faces
from cnnlab.runs import fit_run, new_run, run_settings
from cnnlab.tasks import detect

WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "..", "cnnlab", "weights")
RUNS = {
    "digits": dict(model="article", data="mnist_sample",
                   describe="the bundled MNIST sample: 8,000 training digits, scored on the "
                            "other 2,000"),
    "faces": dict(model="face_net", data="lfw_faces", mining_rounds=2,
                  describe="lfw_faces: scikit-image's 100 face and 100 other 25x25 crops, and "
                           "squares cut from its person-free pictures; {train:,} to train (faces "
                           "repeated to balance), scored on the other {held_out:,}"),
    "web_faces": dict(model="face_net", mining_rounds=2, epochs=12,
                      describe="Caltech 10,000 Web Faces, 24x24 grey (faces-train.tar.gz): "
                               "{train:,} to train (faces repeated to balance squares of the "
                               "training scenes and mined windows), scored on the other "
                               "{held_out:,}"),
    "cifar10": dict(model="cifar_vgg",
                    describe="CIFAR-10's training images (Krizhevsky, 2009) as JPEGs: "
                             "{train:,} to train, scored on the other {held_out:,} (a seeded 20% "
                             "validation split)"),
}


def class_subset(data: str, classes: list[str], root: str) -> str:
    """A folder in ``root`` of links to some of ``data``'s class folders (the images are not
    copied)."""
    missing = sorted(set(classes) - set(os.listdir(data)))
    if missing:
        raise SystemExit(f"{data} has no class folders {missing}.")
    root = os.path.join(root, "classes")
    os.mkdir(root)
    for name in classes:
        os.symlink(os.path.abspath(os.path.join(data, name)), os.path.join(root, name))
    return root


def photo_squares(folder: str, count: int, seed: int = 0, size: int = 25) -> np.ndarray:
    """``count`` greyscale squares (``size`` to 32 pixels, resized to ``size``) cut at random
    from the photos under ``folder``: more of the world that is not a face (CIFAR-10 has no
    class of people)."""
    from PIL import Image

    from cnnlab.tasks.search import image_files
    rng = np.random.default_rng(seed)
    files = image_files(folder)
    crops = []
    for k in rng.permutation(len(files))[:count]:
        with Image.open(os.path.join(folder, files[k])) as photo:
            grey = photo.convert("L")
        side = int(rng.integers(min(size, *grey.size), min(grey.size) + 1))
        top, left = (int(v) for v in rng.integers(0, np.array(grey.size[::-1]) - side + 1))
        square = grey.crop((left, top, left + side, top + side)).resize((size, size),
                                                                        Image.BILINEAR)
        crops.append(np.asarray(square, np.float32) / 255)
    return np.stack(crops)[..., None]


def _with_not_faces(train, extra=None):
    """``train`` with ``extra`` not-faces added (if any) and its faces (each once) repeated to
    weigh as much as all the not-faces."""
    x, y = train
    negatives = x[y == 0] if extra is None else np.concatenate([x[y == 0], extra.astype(x.dtype)])
    faces = np.unique(x[y == 1], axis=0)
    faces = np.repeat(faces, max(1, round(len(negatives) / len(faces))), axis=0)
    return (np.concatenate([negatives, faces]),
            np.concatenate([np.zeros(len(negatives), y.dtype), np.ones(len(faces), y.dtype)]))


WEB_FACE_SIZE = 24              # the window: faces from 24 pixels up
SQUARES_PER_SCENE = 80


def web_faces_npz(path: str, folder: str, seed: int):
    """``faces-train.tar.gz`` as an ``.npz`` of 24x24 crops in ``folder`` (the training faces,
    each once, and squares of the training scenes; the held-out ones to score on):
    ``(npz path, pictures to mine, their face boxes, the training Part, the held-out Part)``.
    The pictures are the training scenes, empty, and the same scenes with training faces
    pasted in (their boxes known), where the windows that clip a face without framing it are
    mined too."""
    from PIL import Image
    train, held_out = web_faces.split(web_faces.read(path))
    rng = np.random.default_rng(seed)
    size = WEB_FACE_SIZE

    def shrink(faces):
        return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR))
                         for f in faces])

    def squares(scenes):
        return np.concatenate([lfw_faces.random_squares(s / 255, SQUARES_PER_SCENE, rng, size)
                               for s in scenes])
    arrays = {}
    for name, part in (("train", train), ("test", held_out)):
        faces, others = shrink(part.faces), squares(part.scenes)
        arrays[f"x_{name}"] = np.concatenate([others, faces])
        arrays[f"y_{name}"] = np.concatenate([np.zeros(len(others), np.uint8),
                                              np.ones(len(faces), np.uint8)])
    out = os.path.join(folder, "web_faces.npz")
    np.savez(out, **arrays, class_names=np.array(lfw_faces.CLASS_NAMES))
    return (out, *mining_pictures(train, [seed]), train, held_out)


def mining_pictures(part, seeds) -> tuple[list, list]:
    """``(pictures, their face boxes)`` to mine false windows from: ``part``'s scenes, empty,
    then once more for each of ``seeds`` with ``part``'s faces pasted in
    (``web_faces.pasted_photos``), as (H, W, 1) float32 in [0, 1]."""
    pictures = [s[..., None].astype(np.float32) / 255 for s in part.scenes]
    boxes = [()] * len(pictures)
    for seed in seeds:
        for grey, known in web_faces.pasted_photos(part.faces, part.scenes, seed=seed):
            pictures.append(grey[..., None])
            boxes.append(known)
    return pictures, boxes


#: the neighbour counts the threshold is chosen with (``tasks.detect.default_min_neighbors``)
MIN_NEIGHBORS_CHOICES = (1, 2, 3, 4)


def choose_threshold(model, held_out, verifier=None) -> dict:
    """The score threshold and neighbour count with the most recall at 0.3 false boxes a photo
    (then the most average precision; the threshold the highest that gives that recall,
    ``detect.score_detections``), on ``held_out``'s faces pasted into its scenes
    (``web_faces.pasted_photos``), and what they give there; of ``model`` alone, or with
    ``verifier``."""
    photos = web_faces.pasted_photos(held_out.faces, held_out.scenes,
                                     seed=web_faces.VALIDATION_SEED)
    truth = [boxes for _, boxes in photos]
    scored = [detect.candidates(grey[..., None], model, verifier) for grey, _ in photos]
    choices = [(detect.score_detections([detect.curve_of(windows, min_neighbors=neighbours)
                                         for windows in scored], truth), neighbours)
               for neighbours in MIN_NEIGHBORS_CHOICES]
    scores, neighbours = max(choices, key=lambda c: (c[0].recall, c[0].average_precision))
    return {"threshold": scores.threshold, "min_neighbors": neighbours,
            "average_precision": round(scores.average_precision, 4),
            "recall": round(scores.recall, 4), "false_boxes_per_photo": scores.false_per_photo,
            "photos": len(photos), "faces": sum(len(b) for b in truth)}


#: the verifier sees each window at the crops' own resolution, 36x36, where the first stage
#: sees 24x24; it trains on the first stage's false windows in the training scenes, empty and
#: with training faces pasted in (``VERIFIER_ARRANGEMENTS`` arrangements)
VERIFIER_SIZE = web_faces.SIZE
VERIFIER_ARRANGEMENTS = 3
VERIFIER_EPOCHS = 10


def verifier_npz(first, train, held_out, folder: str, seed: int,
                 negatives=None) -> tuple[str, int]:
    """The verifier's data as an ``.npz`` in ``folder``: the training faces at 36x36 against
    every window that ``first`` scores ``detect.WINDOW_FLOOR`` or more in the training scenes
    and frames no face, squares of the scenes and (``negatives``: ``(folder, count)``) squares
    of other photos; the held-out faces and squares to score on. ``(path, how many windows
    were mined)``."""
    rng = np.random.default_rng(seed)
    pictures, boxes = mining_pictures(
        train, [1000 * (seed + 1) + k for k in range(VERIFIER_ARRANGEMENTS)])
    mined = detect.hard_negatives(first, pictures, threshold=detect.WINDOW_FLOOR, limit=None,
                                  boxes=boxes, size=(VERIFIER_SIZE, VERIFIER_SIZE))
    not_faces = mined if negatives is None else np.concatenate(
        [mined, photo_squares(*negatives, seed=seed, size=VERIFIER_SIZE)])
    arrays = {}
    for name, part, extra in (("train", train, not_faces), ("test", held_out, None)):
        squares = np.concatenate([lfw_faces.random_squares(s / 255, SQUARES_PER_SCENE // 2, rng,
                                                           VERIFIER_SIZE) for s in part.scenes])
        others = squares if extra is None else np.concatenate(     # uint8, as every crop
            [squares, (extra[..., 0] * 255).round().astype(np.uint8)])  # in the .npz
        arrays[f"x_{name}"] = np.concatenate([others, part.faces])
        arrays[f"y_{name}"] = np.concatenate([np.zeros(len(others), np.uint8),
                                              np.ones(len(part.faces), np.uint8)])
    out = os.path.join(folder, "web_faces_verifier.npz")
    np.savez(out, **arrays, class_names=np.array(lfw_faces.CLASS_NAMES))
    return out, len(mined)


def train_verifier(first, train, held_out, folder: str, seed: int, verbose: int,
                   negatives=None):
    """A second ``face_net``, at 36x36, trained on what ``first`` gets wrong, through ``cnnlab
    train``'s path: ``(verifier, its settings, its held-out crops, windows mined)``."""
    path, mined = verifier_npz(first, train, held_out, folder, seed, negatives)
    print(f"Verifier: {mined} windows of the training scenes the first stage took for faces",
          flush=True)
    settings = run_settings(model="face_net", data=path, seed=seed, epochs=VERIFIER_EPOCHS)
    with seeding.seeded(seed):
        verifier, train_part, test_part = new_run(settings)
        fit_run(verifier, settings, _with_not_faces(train_part), test_part, verbose=verbose)
    return verifier, settings, test_part, mined


def bootstrap(model, settings, train, test, rounds, negatives, verbose, pictures=None,
              mining_limit: int = detect.HARD_NEGATIVES_LIMIT, boxes=None):
    """Train ``model``, then ``rounds`` times: take the windows of the pictures that the
    detector calls faces (score >= 0.5) and that frame none of the faces in ``boxes`` as
    further not-faces, and train a fresh network."""
    if negatives:
        train = _with_not_faces(train, photo_squares(*negatives, size=train[0].shape[1]))
    elif pictures is not None:        # web_faces' .npz holds each face once: balance them now
        train = _with_not_faces(train)
    fit_run(model, settings, train, test, verbose=verbose)
    mined = []
    for round_ in range(rounds):
        if pictures is None:
            pictures = [p[..., None].astype(np.float32) for p in lfw_faces.not_face_pictures()]
        hard = detect.hard_negatives(model, pictures, threshold=0.5, limit=mining_limit,
                                     seed=settings["seed"] + round_, boxes=boxes)
        mined.append(len(hard))
        print(f"Round {round_ + 1}: {len(hard)} windows of the not-face pictures taken for "
              f"faces; training again with them as not-faces", flush=True)
        train = _with_not_faces(train, hard)
        # a fresh network each round
        with seeding.seeded(settings["seed"] + round_ + 1):
            model, _, _ = new_run({**settings, "seed": settings["seed"] + round_ + 1})
            fit_run(model, settings, train, test, verbose=verbose)
    return model, mined


def write_record(network, settings, data_name, loss, accuracy, held_out, seconds, **facts):
    """The file's record in ``network.metadata``: its settings (``train_settings``), and what it
    is, was trained on (``facts``) and scored (``pretrained``)."""
    recipe = zoo.Recipe(**{k: settings[k] for k in zoo.Recipe.__dataclass_fields__})
    network.metadata["train_settings"] = {**settings, "data": data_name}
    network.metadata["pretrained"] = {
        **facts, "recipe": recipe.describe(settings["model"]) + f", seed {settings['seed']}",
        "accuracy": round(float(accuracy), 4), "loss": round(float(loss), 4),
        "held_out_images": held_out, "train_seconds": round(seconds, 1),
        "command": "python recipes/pretrain.py " + " ".join(sys.argv[1:]),
        "cnnlab_version": cnnlab.__version__}


def _described(negatives) -> str:
    """What ``--negatives`` added, for a file's record."""
    if not negatives:
        return ""
    folder, count = negatives
    return f"; and {count:,} squares of the photos in {os.path.basename(folder)} as not-faces"


def save_verifier(first, first_path, train, held_out, folder, seed, verbose, out,
                  negatives=None) -> dict:
    """Train ``first``'s verifier (web_faces), choose the pair's threshold on the validation
    photos, and write it to ``out`` with its record; the record."""
    start = time.perf_counter()
    verifier, settings, test, mined = train_verifier(first, train, held_out, folder, seed,
                                                     verbose, negatives)
    loss, accuracy = verifier.evaluate(*test, batch_size=256, verbose=0)
    write_record(verifier, settings, "faces-train.tar.gz", loss, accuracy, len(test[0]),
                 time.perf_counter() - start, model="face_net", weights="web_faces verifier",
                 data=f"Caltech 10,000 Web Faces, 36x36 grey: the training faces against "
                      f"{mined:,} windows of the training scenes (empty, and with training faces "
                      f"pasted in) that {os.path.basename(first_path)} scores >= "
                      f"{detect.WINDOW_FLOOR} and that frame no face, and squares of the scenes"
                      + _described(negatives),
                 first_stage=os.path.basename(first_path))
    verifier.metadata["detection"] = choose_threshold(first, held_out, verifier)
    print(f"Detection with the verifier on held-out photos: {verifier.metadata['detection']}",
          flush=True)
    verifier.save(out, include_optimizer=False)
    return verifier.metadata["pretrained"]


def verifier_only(first_path: str, data: str, seed: int, verbose: int, out: str,
                  negatives=None) -> dict:
    """``web_faces``' second stage alone, for the first stage already in ``first_path``: the
    same data, mining and threshold choice as a whole run's, written to ``out``."""
    first = cnnlab.models.load_model(first_path, compile=False)
    train, held_out = web_faces.split(web_faces.read(data))
    with tempfile.TemporaryDirectory(prefix="cnnlab-pretrain-") as scratch:
        return save_verifier(first, first_path, train, held_out, scratch, seed, verbose, out,
                             negatives)


def pretrain(weights: str, data: str | None, out: str, classes: list[str] | None = None,
             epochs: int | None = None, verbose: int = 2, negatives=None, seed: int = 0,
             mining_rounds: int | None = None,
             mining_limit: int = detect.HARD_NEGATIVES_LIMIT,
             verifier_out: str | None = None) -> dict:
    run = RUNS[weights]
    rounds = run.get("mining_rounds") if mining_rounds is None else mining_rounds
    data = data or run.get("data")
    if data is None:
        raise SystemExit(f"{weights}: pass --data (the extracted CIFAR-10 training folder, or "
                         f"faces-train.tar.gz for web_faces).")
    # the data views (a .npz for web_faces, links for --classes), removed at the end
    with tempfile.TemporaryDirectory(prefix="cnnlab-pretrain-") as scratch:
        folder = class_subset(data, classes, scratch) if classes else data
        pictures = boxes = training_part = scoring_part = None
        if weights == "web_faces":
            folder, pictures, boxes, training_part, scoring_part = web_faces_npz(
                data, scratch, seed)
        settings = run_settings(model=run["model"], data=folder, seed=seed,
                                epochs=epochs or run.get("epochs"))
        with seeding.seeded(settings["seed"]):
            model, train, test = new_run(settings)
            start = time.perf_counter()
            mined = []
            if rounds:
                model, mined = bootstrap(model, settings, train, test, rounds,
                                         negatives, verbose, pictures, mining_limit, boxes)
            else:
                fit_run(model, settings, train, test, verbose=verbose)
        seconds = time.perf_counter() - start
        if isinstance(test, tuple):
            loss, accuracy = model.evaluate(*test, batch_size=256, verbose=0)
            held_out, trained_on = len(test[0]), len(train[0])
        else:
            loss, accuracy = model.evaluate(test, verbose=0)
            held_out, trained_on = len(test.source.file_paths), len(train.source.file_paths)
        write_record(
            model, settings, os.path.basename(data.rstrip("/")), loss, accuracy, held_out,
            seconds, model=run["model"], weights=weights,
            data=run["describe"].format(train=trained_on, held_out=held_out)
            + (f"; classes {', '.join(classes)} only" if classes else "")
            + _described(negatives),
            **({"hard_negatives_per_round": mined} if mined else {}))
        if scoring_part is not None:             # the held-out faces and scenes, as photos
            model.metadata["detection"] = choose_threshold(model, scoring_part)
            print(f"Detection on held-out photos: {model.metadata['detection']}", flush=True)
        model.save(out, include_optimizer=False)
        if verifier_out and training_part is not None:
            save_verifier(model, out, training_part, scoring_part, scratch, seed, verbose,
                          verifier_out, negatives)
        return model.metadata["pretrained"]


CASCADE_VERIFIERS = ("face_net-web_faces-verifier.cnnlab", "face_net-faces.cnnlab")


def faces_cascade(data: str) -> dict:
    """The shipped face detector: the shipped ``web_faces`` pair, then the shipped ``faces``
    model (``lfw_faces``, whose not-faces come from photos of people) as a third opinion. Its
    threshold and neighbour count are chosen on the validation photos (``choose_threshold``)
    and written into the ``web_faces`` file's metadata (``cascade``), which
    ``tasks.detect.detector`` reads."""
    path = os.path.join(WEIGHTS_DIR, zoo.PRETRAINED[("face_net", "web_faces")])
    first = cnnlab.models.load_model(path, compile=False)
    verifiers = [zoo.shipped_file(name) for name in CASCADE_VERIFIERS]
    _, held_out = web_faces.split(web_faces.read(data))
    chosen = choose_threshold(first, held_out, verifiers)
    first.metadata["cascade"] = {
        "verifiers": list(CASCADE_VERIFIERS), **chosen,
        "command": "python recipes/pretrain.py faces_cascade " + " ".join(sys.argv[2:])}
    first.save(path, include_optimizer=False)
    return first.metadata["cascade"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", choices=sorted([*RUNS, "faces_cascade"]))
    parser.add_argument("--data", help="the folder of class folders (cifar10)")
    parser.add_argument("--classes", help="comma-separated class folders to train on")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--seed", type=int, default=0,
                        help="the run's seed (default: %(default)s, what made the shipped files)")
    parser.add_argument("--mining-rounds", type=int,
                        help="faces, web_faces: rounds of hard-negative mining (default: the "
                             "recipe's)")
    parser.add_argument("--mining-limit", type=int, default=detect.HARD_NEGATIVES_LIMIT,
                        help="faces, web_faces: at most this many mined windows a round, drawn "
                             "at random (default: %(default)s)")
    parser.add_argument("--out", help="default: cnnlab/weights/<model>-<weights>.cnnlab")
    parser.add_argument("--verifier-out",
                        help="web_faces: where the second stage goes (default: the --out file's "
                             "name with -verifier added; 'none' to train the first stage only)")
    parser.add_argument("--first-stage", metavar="FILE",
                        help="web_faces: train only the verifier, for the first stage in FILE "
                             "(written to --verifier-out, default FILE-verifier.cnnlab)")
    parser.add_argument("--negatives", metavar="DIR",
                        help="faces, web_faces: also cut not-faces from the photos in DIR "
                             "(both stages of web_faces)")
    parser.add_argument("--negatives-count", type=int, default=8000,
                        help="how many squares to cut (default: %(default)s)")
    args = parser.parse_args()
    if args.weights == "faces_cascade":
        if not args.data:
            parser.error("faces_cascade: pass --data faces-train.tar.gz")
        print(f"The shipped face detector's rules: {faces_cascade(args.data)}")
        return
    negatives = (args.negatives, args.negatives_count) if args.negatives else None
    if args.first_stage:
        if args.weights != "web_faces" or not args.data:
            parser.error("--first-stage is for web_faces, with --data")
        if not os.path.isfile(args.first_stage):
            parser.error(f"--first-stage: no file {args.first_stage!r}")
        out = args.verifier_out or args.first_stage.removesuffix(".cnnlab") + "-verifier.cnnlab"
        record = verifier_only(args.first_stage, args.data, args.seed, 2, out, negatives)
        print(f"Wrote {out}: {record['accuracy']:.2%} on {record['held_out_images']:,} held-out "
              f"crops, {record['train_seconds']:.0f} s")
        return
    run = RUNS[args.weights]
    shipped = zoo.PRETRAINED.get((run["model"], args.weights))
    if args.out is None and shipped is None:
        parser.error(f"{args.weights}: pass --out FILE (these weights do not ship with cnnlab)")
    out = args.out or os.path.join(WEIGHTS_DIR, shipped)
    classes = args.classes.split(",") if args.classes else None
    verifier_out = None
    if args.weights == "web_faces" and args.verifier_out != "none":
        verifier_out = args.verifier_out or out.removesuffix(".cnnlab") + "-verifier.cnnlab"
    record = pretrain(args.weights, args.data, out, classes, args.epochs, negatives=negatives,
                      seed=args.seed, mining_rounds=args.mining_rounds,
                      mining_limit=args.mining_limit, verifier_out=verifier_out)
    print(f"Wrote {os.path.normpath(out)}: {record['accuracy']:.2%} on "
          f"{record['held_out_images']:,} held-out images, {record['train_seconds']:.0f} s")


if __name__ == "__main__":
    main()
