"""Detection with a classifier: the article's face detection, and anything a two-class model
tells apart.

A classifier trained on W x H crops ("face" / "not face") becomes a detector by scoring every
window of a photo, at every scale. Scoring the windows one by one repeats almost all the work:
neighbouring windows share most of their pixels. So the classifier is rewritten as a fully
convolutional network (Sermanet et al., 2014, "OverFeat"): its Flatten -> Dense head becomes a
convolution with the Dense kernel reshaped to the flattened map's (h, w, c), later Dense layers
become 1x1 convolutions, and global pooling becomes pooling over that same (h, w) window. One
forward pass over an image then gives the classifier's output for every window at once: output
position (i, j) is the window whose top-left pixel is (S*i, S*j), S the product of the strides.
For a network of 'valid' convolutions this is exactly the sliding classifier (tested window by
window); 'same' padding sees real pixels where each crop saw zeros, so it is close, not exact.

    detections = detect("photo.jpg")                     # the shipped face model
    for d in detections: print(d.box, d.score)           # (x0, y0, x1, y1) in the photo's pixels

An image pyramid (each level ``SCALE_STEP`` smaller) finds objects larger than the window;
greedy non-maximum suppression keeps the best of overlapping boxes (and drops boxes lying
mostly inside a better one: ``CONTAIN``), each then framed by the mean of the windows it
stands for (``averaged_boxes``). A verifier, a second
classifier at a finer input size, may look again at every window the first passes (a cascade,
used here for accuracy: ``verified_windows``).
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from cnnlab import layers as layer_types
from cnnlab.engine.activations import softmax_forward
from cnnlab.errors import ConfigError

SCALE_STEP = 1.25
THRESHOLD = 0.9
NMS_IOU = 0.3
#: a box is on an object when its IoU with the object's box is at least this (PASCAL VOC's rule
#: at a looser overlap, as face benchmarks use for boxes drawn by different hands)
MATCH_IOU = 0.3
#: a kept box needs this many other windows above the threshold overlapping it (IoU > NMS_IOU):
#: an object lights up its neighbouring windows and scales, a fluke mostly one. 3 is OpenCV's
#: default for the same rule (``detectMultiScale``'s minNeighbors), and the default of a model
#: whose recipe chose none (``default_min_neighbors``)
MIN_NEIGHBORS = 3
#: a box lying mostly inside a better one (this share of its own area, or more) is a part of
#: the same object seen larger (an eye and a nose, filling a window), not another object:
#: suppressed as an overlapping one is (None: the IoU rule alone). Chosen on the validation
#: photos of the web_faces recipe's three seeds (one-off script). Before the framed boxes were
#: merged (``_framed``), 0.5 and 0.6 gave the most recall at 0.3 false boxes a photo (seed 1:
#: 0.911 -> 0.922) and 0.7-0.9 none more; with the merge, 0.6 and None give the same recall
#: there (AP within 0.001), and 0.6 still drops the part of the astronaut's face that each
#: seed's pair boxed beside her face
CONTAIN = 0.6
#: image pixels scored in one pass of the sliding model: peak memory is about 1 kB per pixel
#: for face_net (its activations and the convolutions' workspace), whatever the image's size
BAND_PIXELS = 250_000
DEFAULT_MODEL = "web_faces"
_SKIPPED = ("Dropout", "RandomFlip", "RandomCrop", "RandomTranslation", "RandomRotation",
            "RandomZoom", "RandomContrast", "RandomBrightness")
_COPIED = ("Conv2D", "DepthwiseConv2D", "MaxPooling2D", "AveragePooling2D",
           "BatchNormalization", "ReLU", "Activation", "ZeroPadding2D")


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]          # x0, y0, x1, y1 in the image's pixels
    score: float

    def to_json(self) -> dict:
        return {"box": [round(v, 1) for v in self.box], "score": round(self.score, 4)}


@dataclass(frozen=True)
class Geometry:
    """Where the sliding windows are: ``window`` (height, width) of the classifier's input, and
    ``stride`` pixels between neighbouring windows; ``exact``: every convolution is 'valid', so
    the rewrite equals the sliding classifier; ``logits``: the head's softmax was left out of
    the rewrite, for :func:`window_scores` to take in float64 (in float32 it rounds every
    confident window to 1.0, and ties cannot be ranked)."""

    window: tuple[int, int]
    stride: int
    exact: bool
    logits: bool = False


def _chain(model) -> list:
    """The model's layers in order, for a chain of single-input layers (what a classifier that
    can slide is); anything else is refused by name."""
    chain = []
    previous = model.inputs[0]
    for node in model.nodes:
        if len(node.inbound) != 1 or node.inbound[0] is not previous:
            raise ConfigError(f"{model.name}: detection slides a chain of layers; "
                              f"{node.layer.name!r} ({type(node.layer).__name__}) branches or "
                              f"merges.")
        chain.append(node.layer)
        previous = node.outputs[0]
    return chain


def _copy(layer, **changes):
    """A new layer of ``layer``'s config whose weights start as zeros: the caller sets them,
    and drawing random ones first was 3% of a 640x480 detection's profile (the pyramid rewrites
    the classifier for each level)."""
    config = {**layer.get_config(), **changes, "name": layer.name}
    for key in ("kernel_initializer", "depthwise_initializer"):
        if key in config:
            config[key] = "zeros"
    return type(layer).from_config(config)


def sliding_model(model, image_shape):
    """``(fully convolutional model for images of image_shape (H, W, C), Geometry)``: the
    classifier ``model`` rewritten (its weights copied, the original untouched)."""
    from cnnlab.models.model import Model
    model = model.flattened()            # a backbone nested in the classifier slides too
    window = tuple(model.input_shape[:2])
    _check_fits(image_shape, window)
    chain, stride, exact, logits = _chain(model), 1, True, False
    inputs = layer_types.Input(tuple(image_shape), name="image")
    x, flat_shape, weights = inputs, None, []
    for k, layer in enumerate(chain):
        kind = type(layer).__name__
        following = type(chain[k + 1]).__name__ if k + 1 < len(chain) else None
        if kind in _SKIPPED or (kind == "ZeroPadding2D" and following == "RandomCrop"):
            continue                            # training-only (the pad of a random crop too)
        if kind == "Flatten":
            flat_shape = tuple(layer.input_shape)        # the crop's map: (h, w, c)
            continue
        if kind in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
            pool = layer_types.AveragePooling2D if "Average" in kind else layer_types.MaxPooling2D
            new = pool(pool_size=tuple(layer.input_shape[:2]), strides=1, name=layer.name)
            x = new(x)
            continue
        if kind == "Dense":
            h, w, c = flat_shape if flat_shape is not None else (1, 1, x.shape[-1])
            config = layer.get_config()
            activation = config["activation"]
            if k == len(chain) - 1 and activation == "softmax":     # see Geometry.logits
                activation, logits = "linear", True
            new = layer_types.Conv2D(config["units"], (h, w), activation=activation,
                                     use_bias=config["use_bias"], name=layer.name,
                                     kernel_initializer="zeros")
            x = new(x)
            kernel, *bias = layer.get_weights()
            weights.append((new, [kernel.reshape(h, w, c, -1), *bias]))
            flat_shape = None
            continue
        if kind not in _COPIED:
            raise ConfigError(f"{model.name}: detection cannot slide a {kind} layer "
                              f"({layer.name!r}).")
        new = _copy(layer)
        x = new(x)
        weights.append((new, layer.get_weights()))
        step = getattr(layer, "strides", (1, 1))
        stride *= int(step[0]) if isinstance(step, (tuple, list)) else int(step)
        if getattr(layer, "padding", "valid") not in ("valid", 0, (0, 0), ((0, 0), (0, 0))):
            exact = False
    if x.shape[-1] != model.output_shape[-1] or len(x.shape) != 4:
        raise ConfigError(f"{model.name}: its head does not end in a per-window class score.")
    sliding = Model(inputs, x, name=f"{model.name}_sliding")
    for new, values in weights:
        new.set_weights(values)
    return sliding, Geometry(window, stride, exact, logits)


def _check_fits(image_shape, window) -> None:
    if any(s < w for s, w in zip(image_shape[:2], window)):
        raise ConfigError(f"The image {tuple(image_shape[:2])} is smaller than the model's "
                          f"window {window}.")


def window_scores(model, image: np.ndarray, target: int, band_pixels: int | None = None,
                  geometry: Geometry | None = None):
    """``(scores (rows, cols), Geometry)``: the probability of class ``target`` for every window
    of ``image`` ((H, W, C) in [0, 1]), from passes of the rewritten model over bands of
    ``band_pixels`` (default ``BAND_PIXELS``) image pixels, so memory stays bounded at any image
    size. Bands overlap by a window less a stride: each window is scored once, whole.
    ``geometry``: the model's, when the caller has it (every level of a pyramid shares it)."""
    band_pixels = band_pixels or BAND_PIXELS
    _check_fits(image.shape, model.input_shape[:2])
    # the stride decides where bands may start: known once a window-sized copy is rewritten
    geometry = geometry or sliding_model(model, (*model.input_shape[:2], image.shape[2]))[1]
    wh, step = geometry.window[0], geometry.stride
    rows, cols = ((n - w) // step + 1 for n, w in zip(image.shape, geometry.window))
    per_band = max(1, (band_pixels // image.shape[1] - wh) // step + 1)
    models, parts = {}, []
    for first in range(0, rows, per_band):
        last = min(rows, first + per_band)
        band = image[first * step:(last - 1) * step + wh]
        if band.shape not in models:
            models[band.shape] = sliding_model(model, band.shape)[0]
        out = models[band.shape].predict(band[None].astype(model.dtype), verbose=0)[0]
        # pooling that rounds down can leave one more output than there are whole windows (its
        # window hangs over the edge, in pixels the classifier never reads): keep whole windows
        parts.append(out[:last - first, :cols])
    out = np.concatenate(parts)
    if geometry.logits:
        out = softmax_forward(out.astype(np.float64))[0]
    return out[..., target], geometry


def prepare(model, image) -> np.ndarray:
    """A PIL image (or path) -> float (H, W, C) in [0, 1] with the model's channels."""
    from cnnlab.data.pictures import open_image, to_gray
    if not hasattr(image, "convert"):
        image = open_image(image)
    channels = model.input_shape[-1]
    if channels == 1:
        return to_gray(image)[..., None].astype(np.float32)
    return np.asarray(image.convert("RGB" if channels == 3 else "RGBA"), np.float32) / 255


def target_class(model, target=None) -> int:
    """The class to detect: ``target`` (an index or a class name), else the class named 'face',
    else class 1 of a two-class model."""
    from cnnlab.data.pictures import class_names
    names = class_names(model)
    if target is None:
        if "face" in names:
            return names.index("face")
        if len(names) == 2:
            return 1
        raise ConfigError(f"{model.name} has {len(names)} classes {names}; name the one to "
                          f"detect (target=...).")
    if isinstance(target, str) and not target.isdigit():
        if target not in names:
            raise ConfigError(f"{model.name} has no class {target!r}; its classes are {names}.")
        return names.index(target)
    index = int(target)
    if not 0 <= index < len(names):
        raise ConfigError(f"target {index} is out of range for {len(names)} classes {names}.")
    return index


def pyramid_scales(height: int, width: int, window, min_size: int | None = None,
                   max_size: int | None = None, step: float = SCALE_STEP) -> list[float]:
    """Scales at which an object of ``min_size`` to ``max_size`` pixels (default: the window to
    the image's shorter side) fills the window, each ``step`` apart; largest scale first."""
    smallest = min(window)
    low = max(min_size or smallest, 1)
    high = min(max_size or min(height, width), min(height, width))
    scales, size = [], float(low)
    while size <= high * 1.0001:
        scales.append(smallest / size)
        size *= step
    return scales


def _intersection(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h


def iou(a, b) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    inter = _intersection(a, b)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def covered(a, b) -> float:
    """The share of box ``a``'s area that lies inside box ``b`` (x0, y0, x1, y1)."""
    area = (a[2] - a[0]) * (a[3] - a[1])
    return _intersection(a, b) / area if area > 0 else 0.0


def _suppressed(box, better, overlap: float, contain: float | None) -> bool:
    """Whether a better box takes ``box``'s place: IoU above ``overlap``, or with ``contain``,
    that share of ``box``'s area or more inside it."""
    return iou(box, better) > overlap or (contain is not None and covered(box, better) >= contain)


def non_max_suppression(detections: list[Detection], overlap: float = NMS_IOU,
                        contain: float | None = CONTAIN) -> list[Detection]:
    """Greedy: the best box stays, every box overlapping it by more than ``overlap`` goes (and,
    with ``contain``, every box with that share of its area or more inside it). Whether a box is
    kept depends only on the boxes scoring above it, so the boxes kept from those scoring ``t``
    or more are the kept ones scoring ``t`` or more: what :func:`detection_curve` relies on.
    The neighbour rule follows in :func:`boxes_at`."""
    kept: list[Detection] = []
    for d in sorted(detections, key=lambda d: -d.score):
        if not any(_suppressed(d.box, k.box, overlap, contain) for k in kept):
            kept.append(d)
    return kept


def averaged_boxes(kept: list[Detection], windows: list[Detection],
                   overlap: float = NMS_IOU) -> list[Detection]:
    """Each ``kept`` box moved to the mean of the ``windows`` overlapping it by more than
    ``overlap``, each weighted by its log-odds above even (``max(logit(score), 0)``); scores
    unchanged. Why: an object lights up many windows, at neighbouring positions and scales, and
    many score near 1, so the best of them is close to a random pick among them; their mean
    frames the object better, as OpenCV's ``groupRectangles`` averages its clusters. Measured
    on the validation photos (web_faces seed-1 pair, the faces found): IoU with the pasted face
    0.733 -> 0.866 on average, and 0.935 -> 1.0 of them at IoU 0.5 or more. Windows at even odds
    or below weigh nothing, so the mean is the same whatever the threshold, as long as
    ``windows`` holds every window above even odds (:func:`detect` scores down to
    ``WINDOW_FLOOR``); a box with no such window keeps its own."""
    averaged = []
    for k in kept:
        cluster = [d for d in windows if d.score > 0.5 and iou(k.box, d.box) > overlap]
        if cluster:
            weights = _log_odds(np.array([d.score for d in cluster], np.float64))
            box = weights @ np.array([d.box for d in cluster], np.float64) / weights.sum()
            k = Detection(tuple(float(v) for v in box), k.score)
        averaged.append(k)
    return averaged


def default_threshold(model) -> float:
    """The threshold ``model``'s recipe chose on validation photos (``recipes/pretrain.py``
    keeps it in ``metadata['detection']``), else ``THRESHOLD``."""
    return float(model.metadata.get("detection", {}).get("threshold", THRESHOLD))


def default_min_neighbors(model) -> int:
    """The neighbour count ``model``'s recipe chose with its threshold, else ``MIN_NEIGHBORS``:
    a pair whose verifier rejects most flukes needs fewer windows behind a box."""
    return int(model.metadata.get("detection", {}).get("min_neighbors", MIN_NEIGHBORS))


def detect(image, model=DEFAULT_MODEL, threshold: float | None = None, target=None,
           min_size: int | None = None, max_size: int | None = None,
           overlap: float = NMS_IOU, min_neighbors: int | None = None,
           verifier=None, contain: float | None = CONTAIN) -> list[Detection]:
    """Boxes where ``model`` (a shipped model name, a ``.cnnlab`` path or a model) scores class
    ``target`` at least ``threshold`` (default: the one its recipe chose on validation photos,
    else ``THRESHOLD``), over an image pyramid, after non-maximum suppression (``contain``: see
    :func:`non_max_suppression`; each kept box backed by ``min_neighbors`` overlapping windows,
    default :func:`default_min_neighbors`), each box framed by the mean of its windows and boxes
    that then frame one object merged (``_framed``); best first (by the highest threshold that
    keeps each). ``image``: a path, a PIL image, or an (H, W, C) array in [0, 1].

    ``verifier`` (a model, a shipped model name or a ``.cnnlab`` path): a second classifier
    that looks again at every window ``model`` scores ``WINDOW_FLOOR`` or more, at its own,
    finer input size; a window's score is then both verdicts together
    (:func:`verified_windows`), and the default threshold is the one the verifier's recipe
    chose for the pair. A list of them is a cascade: each looks at the windows the one before
    left at ``WINDOW_FLOOR`` or more and adds its verdict; the defaults are the last one's."""
    model, verifiers, rules, target, pixels = _loaded(image, model, verifier, target)
    threshold = rules[0] if threshold is None else threshold
    if min_neighbors is None:
        min_neighbors = rules[1]
    if not 0 < threshold < 1:
        raise ConfigError(f"threshold must be between 0 and 1; received {threshold!r}.")
    windows = _candidates(model, verifiers, pixels, target, min(threshold, WINDOW_FLOOR),
                          min_size, max_size)
    return boxes_at(windows, threshold, overlap, min_neighbors, contain)


def boxes_at(windows: list[Detection], threshold: float, overlap: float = NMS_IOU,
             min_neighbors: int = MIN_NEIGHBORS,
             contain: float | None = CONTAIN) -> list[Detection]:
    """:func:`detect`'s boxes from its scored windows (every one scoring ``threshold`` or more,
    and those from ``WINDOW_FLOOR`` up that frame the boxes), each with its best window's
    score."""
    kept = _kept_boxes(windows, threshold, overlap, min_neighbors, contain)
    return [Detection(box, window.score)
            for window, box, _ in _framed(kept, windows, overlap, contain)]


#: the first stage's score from which a window goes to the verifier, whatever the threshold
#: (so every threshold sees the same windows verified), and the lowest threshold
#: :func:`detection_curve` traces by default
WINDOW_FLOOR = 0.5


def load_verifiers(verifier) -> tuple:
    """``verifier`` as a cascade of loaded models: none (None), one (a model, name or path), or
    each of a list or tuple, in order."""
    if verifier is None:
        return ()
    if isinstance(verifier, (list, tuple)):
        return tuple(load_detector(v) for v in verifier)
    return (load_detector(verifier),)


def detector(model, verifier=None):
    """``(model, verifiers, (default threshold, default neighbour count))``, loaded. With no
    ``verifier``, a model whose file names a cascade (``metadata['cascade']``, which
    ``recipes/pretrain.py faces_cascade`` writes into the shipped ``web_faces`` file) brings its
    verifiers, from cnnlab's own weights, and the rules chosen for the three together; else
    the rules are the last verifier's recipe's, or the model's (``verifier=[]``: the model
    alone)."""
    model = load_detector(model)
    cascade = model.metadata.get("cascade")
    if verifier is None and cascade:
        return (model, _cascade_of(model),
                (float(cascade["threshold"]), int(cascade["min_neighbors"])))
    verifiers = load_verifiers(verifier)
    owner = verifiers[-1] if verifiers else model
    return model, verifiers, (default_threshold(owner), default_min_neighbors(owner))


#: a loaded model -> the verifiers its file names, loaded once: a video or the web app passes
#: the same model frame after frame (reading the two files every frame: 4.2 frames a second on
#: a 640x480 video, against 4.6 read once; benchmarks/detect.py --speed, one run each)
_CASCADES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cascade_of(model) -> tuple:
    verifiers = _CASCADES.get(model)
    if verifiers is None:
        from cnnlab import zoo
        verifiers = _CASCADES[model] = tuple(
            zoo.shipped_file(name) for name in model.metadata["cascade"]["verifiers"])
    return verifiers


def _loaded(image, model, verifier, target):
    """What :func:`detect` and :func:`candidates` were given, loaded: ``(model, verifiers (a
    tuple, maybe empty), (default threshold, neighbour count), target class index, pixels
    (H, W, C) in [0, 1])``."""
    model, verifiers, rules = detector(model, verifier)
    pixels = image if isinstance(image, np.ndarray) else prepare(model, image)
    return model, verifiers, rules, target_class(model, target), pixels


def _candidates(model, verifiers, pixels, target, threshold, min_size, max_size):
    """The windows scoring ``threshold`` or more, as Detections: ``model``'s scores, or, with
    ``verifiers``, the cascade's: each verifier rescores what the one before left at
    ``WINDOW_FLOOR`` or more, and the last one's scores are kept from ``threshold`` up."""
    if not verifiers:
        return [Detection(box, score) for box, score, _ in
                scored_windows(model, pixels, target, threshold, min_size, max_size)]
    windows = [(box, score) for box, score, _ in scored_windows(
        model, pixels, target, WINDOW_FLOOR, min_size, max_size)]
    for k, verifier in enumerate(verifiers):
        floor = threshold if k == len(verifiers) - 1 else WINDOW_FLOOR
        windows = [(d.box, d.score) for d in verified_windows(verifier, pixels, windows, target)
                   if d.score >= floor]
    return [Detection(box, score) for box, score in windows]


def candidates(image, model, verifier=None, target=None, floor: float = WINDOW_FLOOR,
               min_size: int | None = None, max_size: int | None = None) -> list[Detection]:
    """The scored windows :func:`detection_curve` works from (from ``floor`` up, and from
    ``WINDOW_FLOOR`` up to frame the boxes): what :func:`curve_of` takes, so that rules can be
    compared, or chosen (``recipes/pretrain.py``), on one scoring of a photo."""
    model, verifiers, _, target, pixels = _loaded(image, model, verifier, target)
    return _candidates(model, verifiers, pixels, target, min(floor, WINDOW_FLOOR), min_size,
                       max_size)


def detection_curve(image, model, verifier=None, target=None, floor: float = WINDOW_FLOOR,
                    min_size: int | None = None, max_size: int | None = None,
                    overlap: float = NMS_IOU, min_neighbors: int | None = None,
                    contain: float | None = CONTAIN) -> list[Detection]:
    """Every box :func:`detect` keeps at some threshold from ``floor`` up, each scored by the
    highest threshold that keeps it: the lower of its own score and the score of its
    ``min_neighbors``-th best overlapping window (above that, too few neighbours are left).
    So ``detect(threshold=t)`` gives exactly the boxes scored ``t`` or more here, and a
    precision-recall sweep over these scores is the curve of ``detect`` itself, threshold by
    threshold: what a threshold is chosen on (``recipes/pretrain.py``) and scored on
    (``benchmarks/detect.py``). ``image``: (H, W, C) in [0, 1], or what :func:`detect` takes."""
    model, verifiers, rules = detector(model, verifier)
    if min_neighbors is None:
        min_neighbors = rules[1]
    found = candidates(image, model, verifiers, target, floor, min_size, max_size)
    return curve_of(found, floor, overlap, min_neighbors, contain)


def curve_of(found: list[Detection], floor: float = WINDOW_FLOOR, overlap: float = NMS_IOU,
             min_neighbors: int = MIN_NEIGHBORS,
             contain: float | None = CONTAIN) -> list[Detection]:
    """:func:`detection_curve` from the scored windows ``found`` (:func:`candidates`)."""
    kept = _kept_boxes(found, floor, overlap, min_neighbors, contain)
    return [Detection(box, level) for _, box, level in _framed(kept, found, overlap, contain)]


def _kept_boxes(found: list[Detection], floor: float, overlap: float, min_neighbors: int,
                contain: float | None) -> list[tuple[Detection, float]]:
    """``(window, level)`` for each window that suppression keeps among ``found``'s scoring
    ``floor`` or more and that ``min_neighbors`` of those overlap: ``level`` is the highest
    threshold that keeps it, the lower of its score and its ``min_neighbors``-th best
    neighbour's (above that, too few neighbours are left)."""
    kept = []
    for window in non_max_suppression([d for d in found if d.score >= floor], overlap, contain):
        neighbours = sorted((d.score for d in found if d is not window and d.score >= floor
                             and iou(window.box, d.box) > overlap), reverse=True)
        if len(neighbours) >= min_neighbors:
            support = neighbours[min_neighbors - 1] if min_neighbors else window.score
            kept.append((window, min(window.score, support)))
    return kept


def _framed(kept, windows, overlap: float, contain: float | None):
    """``(window, box, level)``: each kept window's box moved to the mean of the windows it
    stands for (:func:`averaged_boxes`, which does not depend on the threshold). Two kept windows
    that did not overlap enough to suppress one another (a window on a face and one on its
    eyes and forehead) can frame the same face once averaged: the one of lower level goes, as
    suppression would drop it. A box's fate depends only on the boxes of higher level, so the
    curve stays ``detect``'s own."""
    boxes = averaged_boxes([Detection(w.box, level) for w, level in kept], windows, overlap)
    order = sorted(range(len(kept)), key=lambda i: (-kept[i][1], -kept[i][0].score, i))
    framed: list = []
    for i in order:
        if not any(_suppressed(boxes[i].box, box, overlap, contain) for _, box, _ in framed):
            framed.append((kept[i][0], boxes[i].box, kept[i][1]))
    return framed


def crop_windows(pixels: np.ndarray, boxes, size: tuple[int, int]) -> np.ndarray:
    """The ``boxes`` (x0, y0, x1, y1, in ``pixels``' coordinates, fractional) of ``pixels``
    (H, W, C) in [0, 1], each resized to ``size`` (height, width) by bilinear interpolation
    from the full-resolution image: ``(len(boxes), *size, C)`` float32."""
    from PIL import Image
    out = np.empty((len(boxes), *size, pixels.shape[-1]), np.float32)
    for c in range(pixels.shape[-1]):
        channel = Image.fromarray(np.ascontiguousarray(pixels[..., c], np.float32))
        for k, box in enumerate(boxes):
            out[k, ..., c] = np.asarray(channel.resize(size[::-1], Image.BILINEAR, box=box))
    return out


def verified_windows(verifier, pixels: np.ndarray, windows, target: int) -> list[Detection]:
    """``windows`` ([(box, first stage's probability)]) of ``pixels`` scored again by
    ``verifier`` on each box cropped from the full image at its input size. The two verdicts
    are combined as independent evidence: their log-odds add, ``p = sigmoid(logit(p1) +
    logit(p2))`` (Bayes' rule, each verdict's odds multiplying the other's), so a window both
    call a face is surer than either alone, and the verifier's doubt lowers the first stage's
    confidence by as much as it is sure. (Chosen on the validation photos over the geometric mean,
    weighted means and the minimum: it ranked faces above the first stage's false windows
    best.) The verifier judges each window and its mirror image, and its verdict is the mean of
    the two log-odds: a face is still a face mirrored, and a texture that fools it one way
    fools it less often both ways. On the validation photos this took the three recipe seeds'
    pairs from AP 0.941, 0.950, 0.947 and recall 0.933, 0.956, 0.933 to 0.932, 0.960, 0.961 and
    0.933, 0.956, 0.956."""
    if verifier.input_shape[-1] != pixels.shape[-1]:
        raise ConfigError(f"The verifier {verifier.name!r} takes {verifier.input_shape[-1]} "
                          f"channel(s) and the first stage {pixels.shape[-1]}; a pair must "
                          f"see the photo alike.")
    if not windows:
        return []
    target = target_class(verifier, target)
    crops = crop_windows(pixels, [box for box, _ in windows], tuple(verifier.input_shape[:2]))
    both_ways = np.concatenate([crops, crops[:, :, ::-1]]).astype(verifier.dtype)
    second = _log_odds(verifier.predict(both_ways, verbose=0)[:, target].astype(np.float64))
    first = np.array([score for _, score in windows], np.float64)
    log_odds = _log_odds(first) + (second[:len(crops)] + second[len(crops):]) / 2
    return [Detection(box, float(p)) for (box, _), p in
            zip(windows, 1 / (1 + np.exp(-log_odds)))]


def _log_odds(p: np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))``, with p kept a float64 step inside (0, 1) so certainty stays finite."""
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return np.log(p) - np.log1p(-p)


def scored_windows(model, pixels: np.ndarray, target: int, threshold: float, min_size=None,
          max_size=None):
    """Every window of ``pixels`` (H, W, C) at every pyramid level that ``model`` scores
    ``threshold`` or more for ``target``: ``(box in the image's pixels, score, the window's
    pixels at its level)``. What detection keeps and bootstrapping mines."""
    height, width = pixels.shape[:2]
    window = tuple(model.input_shape[:2])
    geometry = None
    for size, level in _levels(pixels, window, min_size, max_size):
        scores, geometry = window_scores(model, level, target, geometry=geometry)
        sy, sx = height / size[1], width / size[0]            # level pixels -> image pixels
        for i, j in zip(*np.nonzero(scores >= threshold)):
            top, left = i * geometry.stride, j * geometry.stride
            yield ((left * sx, top * sy, (left + window[1]) * sx, (top + window[0]) * sy),
                   float(scores[i, j]), level[top:top + window[0], left:left + window[1]])


def _levels(pixels: np.ndarray, window, min_size=None, max_size=None):
    """``(scale, level image)`` for each level of the pyramid of ``pixels`` (H, W, C)."""
    from PIL import Image
    height, width = pixels.shape[:2]
    for scale in pyramid_scales(height, width, window, min_size, max_size):
        size = (max(window[1], round(width * scale)), max(window[0], round(height * scale)))
        yield size, np.stack([np.asarray(Image.fromarray(pixels[..., c]).resize(
            size, Image.BILINEAR)) for c in range(pixels.shape[-1])], axis=-1)


#: the most false windows :func:`hard_negatives` returns, drawn at random
HARD_NEGATIVES_LIMIT = 5000


def hard_negatives(model, pictures, target=None, threshold: float = 0.5,
                   limit: int | None = HARD_NEGATIVES_LIMIT, seed: int = 0,
                   boxes: list | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """Windows of ``pictures`` (arrays (H, W, C) in [0, 1]) that ``model`` scores ``threshold``
    or more and that frame no object of the target class: its false positives, at every level
    of the pyramid, as crops of the window's size, or of ``size`` cut from the full picture (a
    verifier's input); at most ``limit`` (None: all), drawn at random. Training on them again
    is bootstrapping (Sung & Poggio, 1998; Dalal & Triggs, 2005).

    ``boxes[k]`` lists the objects picture k shows, (x0, y0, x1, y1); none where omitted. A
    window on one (IoU >= ``MATCH_IOU``) is a true find and skipped; a window that only clips
    one is a false positive like any other. Those are what a detector trained on crops and
    empty scenes gets most wrong on photos of people: a face's eyes and nose seen large, or a
    face in a corner of a far larger window, never appear in either."""
    target = target_class(model, target)
    boxes = [()] * len(pictures) if boxes is None else boxes
    if len(boxes) != len(pictures):
        raise ConfigError(f"hard_negatives: {len(pictures)} pictures but {len(boxes)} lists of "
                          f"boxes; expected one list (perhaps empty) per picture.")
    found = []
    for pixels, known in zip(pictures, boxes):
        false = [(box, crop) for box, _, crop in scored_windows(model, pixels, target, threshold)
                 if all(iou(box, b) < MATCH_IOU for b in known)]
        if size is None:
            found += [crop for _, crop in false]
        elif false:
            found += list(crop_windows(pixels, [box for box, _ in false], size))
    if not found:
        shape = size or tuple(model.input_shape[:2])
        return np.zeros((0, *shape, model.input_shape[-1]), np.float32)
    crops = np.stack(found)
    if limit is not None and len(crops) > limit:
        crops = crops[np.random.default_rng(seed).permutation(len(crops))[:limit]]
    return crops


def load_detector(model):
    """A shipped model name ('web_faces', 'faces'), a ``.cnnlab`` path (a str or a path
    object), or a model."""
    from cnnlab import zoo
    return zoo.find(os.fspath(model)) if isinstance(model, (str, os.PathLike)) else model


def draw(image, detections: list[Detection], out) -> None:
    """``image`` (a path or PIL image) with each box and its score drawn on it, saved to ``out``."""
    from PIL import ImageDraw

    from cnnlab.data.pictures import open_image
    picture = (image if hasattr(image, "convert") else open_image(image)).convert("RGB")
    pen = ImageDraw.Draw(picture)
    width = max(2, round(min(picture.size) / 200))
    for d in detections:
        pen.rectangle(d.box, outline=(255, 48, 48), width=width)
        pen.text((d.box[0] + width + 1, d.box[1] + width), f"{d.score:.2f}", fill=(255, 48, 48))
    picture.save(out)


class Scores(NamedTuple):
    """How a detector did on photos with known boxes (PASCAL VOC's rules, a box found at
    ``IoU >= min_iou``): ``average_precision``; ``recall`` at ``false_per_photo`` false boxes a
    photo at most, and the highest ``threshold`` that gives it (the lowest score kept: the
    last face found's, so false boxes scored below it are not kept for nothing; 1.0 and recall
    0 when no threshold stays within the false boxes allowed)."""
    average_precision: float
    recall: float
    false_per_photo: float
    threshold: float


def score_detections(found: list, truth: list, min_iou: float = MATCH_IOU,
                     false_per_photo: float = 0.3) -> Scores:
    """``found[k]``: the Detections on photo k (:func:`detection_curve`'s, for the curve that
    ``detect`` follows threshold by threshold); ``truth[k]``: its true (x0, y0, x1, y1) boxes.
    Each photo's detections claim true boxes best score first, each true box once (the rest are
    false boxes)."""
    if len(found) != len(truth):
        raise ConfigError(f"{len(found)} photos of detections for {len(truth)} of true boxes.")
    marks = []                                            # (score, found a true box)
    for detections, boxes in zip(found, truth):
        free = list(boxes)
        for d in sorted(detections, key=lambda d: -d.score):
            overlaps = [iou(d.box, b) for b in free]
            best = int(np.argmax(overlaps)) if overlaps else -1
            hit = best >= 0 and overlaps[best] >= min_iou
            if hit:
                free.pop(best)
            marks.append((d.score, hit))
    total = sum(len(b) for b in truth)
    if not marks or not total:
        return Scores(0.0, 0.0, false_per_photo, 1.0)
    marks.sort(key=lambda m: -m[0])
    scores = np.array([s for s, _ in marks])
    hits = np.cumsum([h for _, h in marks])
    false = np.cumsum([not h for _, h in marks])
    recall, precision = hits / total, hits / (hits + false)
    # all-point interpolation (VOC 2010 on): precision made non-increasing, summed over recall
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    average_precision = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * envelope))
    # a threshold keeps every detection of its score: the curve can stop only where it drops
    where_it_drops = np.append(scores[1:] < scores[:-1], True)
    cuts = np.nonzero(where_it_drops & (false <= false_per_photo * len(truth)))[0]
    if not len(cuts):
        return Scores(average_precision, 0.0, false_per_photo, 1.0)
    # the highest threshold with that recall: false boxes below the last hit buy nothing
    best = cuts[hits[cuts] == hits[cuts[-1]]][0]
    return Scores(average_precision, float(recall[best]), false_per_photo, float(scores[best]))
