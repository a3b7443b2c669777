"""The web app's JSON API, without HTTP: each function takes parsed input and returns a dict, or
raises :class:`ApiError` with the HTTP status and a message that says what was wrong and what
was expected. ``cnnlab.serve.server`` only routes requests here.

Every number the pages show comes from here, computed by the engine: a prediction's
activations are ``Model.run``'s, node by node; the explain page's windows and sums are
``cnnlab.viz.explain``'s slides, which call ``conv2d_forward`` and the pooling ops.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import os
import threading
import time
from dataclasses import dataclass

import numpy as np

from cnnlab.data.pictures import class_names, image_for_model, open_image

# Imported now, not at the first request: two first requests arriving together (the explain
# page asks for its two cards at once) would otherwise import the same modules on two threads.
from cnnlab.engine.activations import softmax_forward
from cnnlab.engine.shapes import dropped_pixels
from cnnlab.errors import CnnlabError, ImageFormatError, LimitError
from cnnlab.graph.summary import layer_rows, summary_text
from cnnlab.layers import Softmax
from cnnlab.viz.explain import conv_slide, pool_slide
from cnnlab.viz.grids import scale_each

#: an upload bigger than this is refused before it is decoded (4096 x 4096)
MAX_UPLOAD_PIXELS = 4096 * 4096
#: detection's pyramid costs memory in proportion to the pixels (about 0.5 KB each today: a blank
#: 4000 x 4000 PNG of 15 KB took 8 GB), so a request may detect in at most 1920 x 1088
MAX_DETECT_PIXELS = 1920 * 1088
#: a video request's bound: pixels per frame and frames, classifying and detecting
VIDEO_LIMITS = {"classify": (1920 * 1088, 3000), "detect": (640 * 480, 150)}


def is_count(text: str) -> bool:
    """A whole number written in ASCII digits: ``str.isdigit`` alone accepts '²' and '٣',
    which ``int`` then refuses (a 500 where a 4xx was due)."""
    return text.isascii() and text.isdigit() and len(text) <= 9


class ApiError(Exception):
    """A request the API refuses: ``status`` is the HTTP status (4xx), ``message`` says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class ServedModel:
    """A model the pages can use. Any number of requests may run it at once: a forward pass
    keeps its state on its own tape, never on the layers."""
    name: str
    model: object
    source: str

    def activations(self, x: np.ndarray):
        """``(the model's output, [(layer, output) for every node in topological order])``."""
        outputs, tape = self.model.run(x)
        return outputs[0], [(node.layer, tape.values[id(node.outputs[0])])
                            for node in self.model.nodes]

    def describe(self) -> dict:
        # the file's name, never its place on the server's disk
        return {"name": self.name, "source": os.path.basename(self.source),
                "input_shape": list(self.model.input_shape),
                "classes": class_names(self.model), "params": int(self.model.count_params())}


# --- predict -------------------------------------------------------------------------------------
def _uint8_base64(values: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(values, dtype=np.uint8).tobytes()).decode("ascii")


def encode_activation(values: np.ndarray) -> dict:
    """One layer's output for one image, as 8-bit maps the browser draws.

    ``(H, W, C)`` becomes C maps of H x W (``data``: base64 of uint8 ``(C, H, W)``, each map
    scaled on its own from its ``min`` (0) to its ``max`` (255)); a vector ``(D,)`` becomes one
    1 x D map. A constant map is all zeros.
    """
    values = np.asarray(values)
    maps = values.transpose(2, 0, 1) if values.ndim == 3 else values.reshape(1, 1, -1)  # (C, H, W)
    scaled, low, high = scale_each(maps)
    count, height, width = maps.shape
    return {"count": count, "height": height, "width": width,
            "data": _uint8_base64(np.rint(scaled * 255)),
            "min": low.round(6).tolist(), "max": high.round(6).tolist()}


def _probabilities(model, output: np.ndarray) -> np.ndarray:
    """The last layer's output as class probabilities: as is after a softmax, else softmaxed
    (a model that ends in logits), for the bar chart."""
    last = model.outputs[0].node.layer
    if isinstance(last, Softmax) or getattr(last, "activation", None) == "softmax":
        return output
    return softmax_forward(output[None].astype(np.float64))[0]


@contextlib.contextmanager
def user_errors():
    """A request's own mistakes as HTTP answers: an unreadable image 415, any other refusal of
    cnnlab's (a corrupt file, a wrong size) 400."""
    try:
        yield
    except ImageFormatError as exc:
        raise ApiError(415, str(exc)) from None
    except LimitError as exc:
        raise ApiError(413, str(exc)) from None
    except CnnlabError as exc:
        raise ApiError(400, str(exc)) from None


def uploaded_image(body: bytes):
    """The request body as a PIL image (within ``MAX_UPLOAD_PIXELS``); an ApiError if none."""
    if not body:
        raise ApiError(400, "The request has no body; send the image's bytes (PNG, JPEG, ...).")
    with user_errors():
        return open_image(io.BytesIO(body), name="the uploaded file",
                          max_pixels=MAX_UPLOAD_PIXELS)


def predict(served: ServedModel, body: bytes, invert="auto") -> dict:
    """Classify one uploaded image and return every layer's activations.

    The image is prepared as the model's training data was (for digit models: inverted if dark
    on light, cropped to the ink, scaled into 20 x 20 and centred by centre of mass in 28 x 28);
    ``input`` is exactly what the model saw.
    """
    start = time.perf_counter()
    image = uploaded_image(body)
    with user_errors():
        x = image_for_model(served.model, image, invert)
    prepared = time.perf_counter()
    output, activations = served.activations(x[None].astype(served.model.dtype, copy=False))
    computed = time.perf_counter()
    probs = _probabilities(served.model, output[0].astype(np.float64))
    layers = [{"name": layer.name, "type": type(layer).__name__, "shape": list(out.shape[1:]),
               **encode_activation(out[0])}
              for layer, out in activations]
    seen = np.clip(np.rint(x * 255), 0, 255)
    names = class_names(served.model)
    top = int(np.argmax(probs))
    return {"model": served.name, "classes": names, "probabilities": probs.round(6).tolist(),
            "top": {"index": top, "name": names[top], "probability": float(probs[top])},
            "input": {"height": x.shape[0], "width": x.shape[1], "channels": x.shape[2],
                      "data": _uint8_base64(seen)},
            "layers": layers,
            "timing_ms": {"prepare": round((prepared - start) * 1e3, 3),
                          "forward": round((computed - prepared) * 1e3, 3),
                          "total": round((time.perf_counter() - start) * 1e3, 3)}}


def summary(served: ServedModel) -> dict:
    """Layers with output shapes, parameter counts and the output-size formula."""
    model = served.model
    return {"model": served.name, "input_shape": list(model.input_shape),
            "layers": layer_rows(model), "total_params": int(model.count_params()),
            "text": summary_text(model)}


# --- explain -------------------------------------------------------------------------------------
def int_field(params: dict, name: str, default: int, low: int, high: int) -> int:
    """``params[name]`` (or ``default``) if it is an integer in ``[low, high]``; else a 400."""
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"'{name}' must be an integer from {low} to {high}. "
                            f"Received: {value!r}")
    if not low <= value <= high:
        raise ApiError(400, f"'{name}' must be from {low} to {high} (so the grid fits on a "
                            f"screen). Received: {value}")
    return value


def _slide_payload(slide) -> dict:
    size = slide.image.shape[0]
    return {"kind": slide.kind, "image": slide.image.tolist(), "padded": slide.padded.tolist(),
            "pad": slide.pad, "kernel": None if slide.kernel is None else slide.kernel.tolist(),
            "window": slide.window, "stride": slide.stride,
            "windows": slide.windows.tolist(), "output": slide.output.tolist(),
            "formula": slide.formula(),
            "dropped": dropped_pixels(size, slide.window, slide.stride, slide.pad, slide.pad)}


def known_fields(params: dict, allowed: set[str]) -> None:
    """A 400 naming any field of a JSON request that is not in ``allowed``."""
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ApiError(400, f"Unknown fields {unknown}; expected some of {sorted(allowed)}.")


def explain_conv(params: dict) -> dict:
    """A convolution of a small integer image (pixels 1-9, so every 0 is padding) with an
    edge-detecting kernel: the padded input, every window, the feature map and the formula."""
    known_fields(params, {"size", "kernel", "padding", "stride", "seed"})
    size = int_field(params, "size", 6, 1, 16)
    kernel = int_field(params, "kernel", 3, 1, 7)
    padding = int_field(params, "padding", 1, 0, 3)
    stride = int_field(params, "stride", 1, 1, 4)
    seed = int_field(params, "seed", 0, 0, 2**31 - 1)
    try:
        return _slide_payload(conv_slide(size, kernel, padding, stride, seed))
    except CnnlabError as exc:
        raise ApiError(400, str(exc)) from None


def explain_pool(params: dict) -> dict:
    """Max or average pooling of a small integer image: every window and the pooled map."""
    known_fields(params, {"size", "pool", "stride", "kind", "seed"})
    size = int_field(params, "size", 4, 1, 16)
    pool = int_field(params, "pool", 2, 1, 4)
    stride = int_field(params, "stride", 2, 1, 4)
    seed = int_field(params, "seed", 0, 0, 2**31 - 1)
    kind = params.get("kind", "max")
    if kind not in ("max", "avg"):
        raise ApiError(400, f"'kind' must be 'max' or 'avg'. Received: {kind!r}")
    try:
        return _slide_payload(pool_slide(size, pool, stride, kind, seed))
    except CnnlabError as exc:
        raise ApiError(400, str(exc)) from None


class SearchService:
    """Photo search for the web app: an index (``cnnlab index``) and its own model, loaded once."""

    def __init__(self, index):
        self.index = index
        self.embedder = index.embedder()              # the model the index was built with

    def describe(self) -> dict:
        return {"indexed": len(self.index), "model": self.index.model["name"],
                "source": self.index.model["spec"], "root": self.index.root}

    def query(self, body: bytes, k: int) -> dict:
        """The ``k`` indexed photos most like the uploaded one."""
        image = uploaded_image(body)
        with user_errors():
            x = image_for_model(self.embedder.model, image)
        start = time.perf_counter()
        vector = self.embedder.embed_arrays(x[None].astype(np.float32))[0]
        hits = self.index.nearest(vector[None], k)[0]
        return {"hits": [{"path": self.index.paths[i], "similarity": round(s, 6),
                          "image": f"/api/search/image/{i}"} for i, s in hits],
                "ms": round((time.perf_counter() - start) * 1e3, 3)}

    def image_file(self, number: str):
        """``(bytes, content type)`` of indexed photo ``number``: only files the index lists,
        inside its folder."""
        import mimetypes
        from pathlib import Path
        if not is_count(number) or int(number) >= len(self.index):
            raise ApiError(404, f"No indexed photo {number!r}; the index holds "
                                f"{len(self.index)}.")
        root = Path(self.index.root).resolve()
        target = (root / self.index.paths[int(number)]).resolve()
        if root not in target.parents or not target.is_file():
            raise ApiError(404, f"Indexed photo {self.index.paths[int(number)]!r} is no longer "
                                f"in {self.index.root}.")
        return target.read_bytes(), mimetypes.guess_type(target.name)[0] or "image/octet-stream"


class DetectService:
    """Detection for the web app: the shipped face detector, or the classifier given to
    ``cnnlab serve --detector``, and the verifiers given to ``--verifier`` (none: the
    detector's own cascade, if its file names one), each loaded at its first use."""

    def __init__(self, model=None, verifier=None):
        self._spec, self._verifier_spec = model, verifier
        self._one_at_a_time = threading.Lock()

    @functools.cached_property
    def model(self):
        from cnnlab.tasks import detect
        return detect.load_detector(self._spec or detect.DEFAULT_MODEL)

    @functools.cached_property
    def verifier(self):
        """``--verifier``'s classifiers, loaded, as ``tasks.detect`` takes them: a list (a
        cascade, in order), or None for the detector's own."""
        from cnnlab.tasks import detect
        return None if self._verifier_spec is None else list(
            detect.load_verifiers(self._verifier_spec))

    def _detector(self):
        """``tasks.detect.detector``'s answer for what this service runs: the model, the
        verifiers it runs (``--verifier``'s, or the cascade its file names) and its rules."""
        from cnnlab.tasks import detect
        return detect.detector(self.model, self.verifier)

    def describe(self) -> dict:
        """What the Detect page says and starts from: the detector's own threshold and
        neighbour count (what ``cnnlab detect`` uses), and the stages behind the first."""
        from cnnlab.tasks import detect
        model, verifiers, (threshold, neighbours) = self._detector()
        return {"model": model.name, "target": class_names(model)[detect.target_class(model)],
                "window": list(model.input_shape),
                "verifiers": [v.name for v in self.verifier or []],
                "stages": [v.name for v in verifiers], "threshold": threshold,
                "min_neighbors": neighbours}

    def query(self, body: bytes, threshold: float | None) -> dict:
        """The boxes on an uploaded photo, at ``threshold`` (None: the detector's own)."""
        from cnnlab.tasks import detect
        image = uploaded_image(body)
        if image.width * image.height > MAX_DETECT_PIXELS:
            raise ApiError(413, f"The image is {image.width}x{image.height} "
                                f"({image.width * image.height:,} pixels); detection here takes "
                                f"at most {MAX_DETECT_PIXELS:,} (1920x1088). Scale it down, or "
                                f"use cnnlab detect.")
        start = time.perf_counter()
        with user_errors(), self._one_at_a_time:        # memory: one pyramid at once
            found = detect.detect(image, model=self.model, threshold=threshold,
                                  verifier=self.verifier)
        if threshold is None:
            threshold = self._detector()[2][0]
        return {"model": self.model.name, "width": image.width, "height": image.height,
                "target": class_names(self.model)[detect.target_class(self.model)],
                "threshold": threshold,
                "detections": [d.to_json() for d in found],
                "ms": round((time.perf_counter() - start) * 1e3, 1)}


class VideoService:
    """Video for the web app: classify each frame with a served model, or detect in it with the
    detector, through ``tasks.video``; the annotated MP4 and the CSV of the last few runs are
    kept in memory for the page to fetch."""

    KEPT = 4
    #: frames of results sent with the answer (the CSV has every one)
    ROWS = 500

    def __init__(self):
        self._results: dict[str, dict] = {}
        self._count = 0
        self._lock = threading.Lock()
        self._one_at_a_time = threading.Lock()

    def query(self, model, body: bytes, detect_objects: bool, threshold: float,
              name: str | None = None, verifier=None) -> dict:
        """``name``: what the pages call ``model`` (a served model's name, not its layer name);
        ``verifier``: detecting, the detector's second stage."""
        import csv
        import os
        import tempfile

        from cnnlab.tasks.video import process_video
        max_pixels, max_frames = VIDEO_LIMITS["detect" if detect_objects else "classify"]
        if not body:
            raise ApiError(400, "The request has no body; send the video file's bytes (MP4, "
                                "WebM, ...).")
        with tempfile.TemporaryDirectory(prefix="cnnlab-video-") as folder:
            src = os.path.join(folder, "in")
            with open(src, "wb") as handle:
                handle.write(body)
            out, table = os.path.join(folder, "out.mp4"), os.path.join(folder, "out.csv")
            start = time.perf_counter()
            with user_errors(), self._one_at_a_time:
                result = process_video(model, src, out=out, csv_path=table,
                                       detect_objects=detect_objects, threshold=threshold,
                                       max_frame_pixels=max_pixels, max_frames=max_frames,
                                       name="the uploaded video", verifier=verifier)
            seconds = time.perf_counter() - start
            with open(out, "rb") as handle:
                video = handle.read()
            with open(table, newline="") as handle:
                text = handle.read()
        rows = list(csv.DictReader(io.StringIO(text)))
        with self._lock:
            self._count += 1
            key = str(self._count)
            self._results[key] = {"mp4": video, "csv": text.encode()}
            for old in list(self._results)[:-self.KEPT]:
                del self._results[old]
        return {"frames": result.frames, "fps": result.fps, "skipped": result.skipped,
                "duration": round(result.duration, 3), "detect": detect_objects,
                "model": name or model.name, "rows": rows[:self.ROWS], "rows_total": len(rows),
                "video": f"/api/video/result/{key}.mp4", "csv": f"/api/video/result/{key}.csv",
                "seconds": round(seconds, 2)}

    def file(self, name: str):
        key, _, kind = name.partition(".")
        with self._lock:
            kept = self._results.get(key)
        if kept is None or kind not in ("mp4", "csv"):
            raise ApiError(404, f"No video result {name!r}: only the last {self.KEPT} are kept.")
        return kept[kind], "video/mp4" if kind == "mp4" else "text/csv; charset=utf-8"
