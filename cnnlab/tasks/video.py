"""Video: classify every frame, or detect in it, and write the annotated video and a CSV.

    result = process_video("digits", "in.mp4", out="in-cnnlab.mp4", csv_path="in-cnnlab.csv")

Decoding and encoding are PyAV's (FFmpeg; ``pip install 'cnnlab[video]'``), never by hand.
Frames are classified in batches (one forward pass for ``batch_size`` frames); detection runs
the pyramid per frame (``tasks.detect``). A frame that does not decode is skipped and counted,
and the output keeps the input's frame rate, so its duration is the input's less the skipped
frames.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field

import numpy as np

from cnnlab.data.video import decoded_frames, pyav
from cnnlab.errors import ConfigError, DataError, LimitError


@dataclass
class VideoResult:
    frames: int = 0                     # decoded and processed
    skipped: list[int] = field(default_factory=list)   # packet numbers that did not decode
    fps: float = 0.0
    out: str | None = None
    csv_path: str | None = None

    @property
    def duration(self) -> float:
        return self.frames / self.fps if self.fps else 0.0


def _batches(frames, size):
    batch = []
    for item in frames:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _label(image, text: str):
    from PIL import ImageDraw
    pen = ImageDraw.Draw(image)
    box = pen.textbbox((6, 6), text)
    pen.rectangle((box[0] - 4, box[1] - 3, box[2] + 4, box[3] + 3), fill=(0, 0, 0))
    pen.text((6, 6), text, fill=(255, 255, 80))
    return image


def process_video(model, src, out=None, csv_path=None, detect_objects: bool = False,
                  batch_size: int = 32, threshold: float | None = None, target=None,
                  progress: bool = False, max_frame_pixels: int | None = None,
                  max_frames: int | None = None, name: str | None = None,
                  verifier=None) -> VideoResult:
    """Classify (or, with ``detect_objects``, detect in) each frame of ``src``; write the
    annotated frames to ``out`` (H.264 MP4) and one CSV row per frame (per box, detecting) to
    ``csv_path``. ``model``: a shipped name ('digits', 'cifar10', 'web_faces'), a ``.cnnlab`` path
    or a model; ``verifier``, detecting: a second stage that looks again at each box, or a
    list of them (``tasks.detect.detect``'s). ``max_frame_pixels`` and ``max_frames`` bound the work (a
    ``LimitError`` past them); ``name`` is how messages call ``src``. A video that fails leaves
    no output behind."""
    from cnnlab.tasks import detect
    av = pyav()
    model = detect.load_detector(model)
    if verifier is not None and not detect_objects:
        raise ConfigError("A verifier checks detected boxes; it needs detect_objects=True "
                          "(--detect).")
    verifier = detect.load_verifiers(verifier) or None        # loaded once, not per frame
    what = name or repr(os.fspath(src))
    if not os.path.exists(src):
        raise DataError(f"No video file at {what}.")
    try:
        container = av.open(os.fspath(src))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        # FFmpeg's reason without the path it appends (the web app names no server paths)
        raise DataError(f"{what} is not a video FFmpeg can read "
                        f"({getattr(exc, 'strerror', None) or exc}).") from None
    result = VideoResult(out=out, csv_path=csv_path)
    try:
        with container:
            if not container.streams.video:
                raise DataError(f"{what} has no video stream.")
            stream = container.streams.video[0]
            pixels = stream.width * stream.height
            if max_frame_pixels is not None and pixels > max_frame_pixels:
                raise LimitError(f"{what} is {stream.width}x{stream.height} ({pixels:,} pixels a "
                                 f"frame); the limit here is {max_frame_pixels:,}.")
            try:
                _process(model, container, stream, result, detect_objects, batch_size,
                         threshold, target, progress, max_frames, what, verifier)
            except av.error.FFmpegError as exc:
                raise DataError(f"FFmpeg could not process {what} "
                                f"({exc.strerror or exc}).") from None
    except BaseException:
        for path in (out, csv_path):            # no half-written file that looks like a result
            if path and os.path.exists(path):
                os.remove(path)
        raise
    if result.frames == 0:
        raise DataError(f"No frame of {what} decoded ({len(result.skipped)} damaged).")
    return result


def _process(model, container, stream, result, detect_objects, batch_size, threshold, target,
             progress, max_frames, what, verifier) -> None:
    from tqdm.auto import tqdm

    from cnnlab.data.pictures import class_names, image_for_model
    from cnnlab.tasks import detect
    names = class_names(model)
    rate = stream.average_rate or stream.guessed_rate or 25
    result.fps = float(rate)
    writer = _Writer(result.out, rate, stream.width, stream.height) if result.out else None
    table = open(result.csv_path, "w", newline="") if result.csv_path else None
    write_row = csv.writer(table).writerow if table else (lambda row: None)
    if table:
        write_row(["frame", "seconds", "x0", "y0", "x1", "y1", "score"] if detect_objects
                  else ["frame", "seconds", "class", "probability"])
    target_index = detect.target_class(model, target) if detect_objects else None
    bar = tqdm(total=stream.frames or None, unit="frame", disable=not progress)
    try:
        for batch in _batches(decoded_frames(container, stream, result.skipped), batch_size):
            if max_frames is not None and result.frames + len(batch) > max_frames:
                raise LimitError(f"{what} has more than {max_frames:,} frames, the limit here.")
            if detect_objects:
                annotated = []
                for index, image, seconds in batch:
                    found = detect.detect(image, model=model, target=target_index,
                                          threshold=threshold, verifier=verifier)
                    for d in found:
                        write_row([index, f"{seconds:.3f}", *(f"{v:.1f}" for v in d.box),
                                   f"{d.score:.4f}"])
                    if not found:
                        write_row([index, f"{seconds:.3f}", "", "", "", "", ""])
                    annotated.append(_boxes(image, found))
            else:
                x = np.stack([image_for_model(model, image) for _, image, _ in batch])
                probs = model.predict(x.astype(model.dtype), batch_size=len(x), verbose=0)
                annotated = []
                for (index, image, seconds), p in zip(batch, probs):
                    top = int(np.argmax(p))
                    write_row([index, f"{seconds:.3f}", names[top], f"{float(p[top]):.4f}"])
                    annotated.append(_label(image.convert("RGB"),
                                            f"{names[top]} {float(p[top]):.0%}"))
            for picture in annotated:
                if writer:
                    writer.write(picture)
            result.frames += len(batch)
            bar.update(len(batch))
    finally:
        bar.close()
        if writer:
            writer.close()
        if table:
            table.close()


def _boxes(image, found):
    from PIL import ImageDraw
    picture = image.convert("RGB")
    pen = ImageDraw.Draw(picture)
    for d in found:
        pen.rectangle(d.box, outline=(255, 48, 48), width=2)
        pen.text((d.box[0] + 3, d.box[1] + 2), f"{d.score:.2f}", fill=(255, 48, 48))
    return picture


class _Writer:
    """H.264 (yuv420p, so even width and height: an odd edge is padded by one black pixel)
    at the input's frame rate."""

    def __init__(self, path, rate, width, height):
        av = pyav()
        self.container = av.open(os.fspath(path), "w")
        self.stream = self.container.add_stream("libx264", rate=rate)
        self.stream.width, self.stream.height = width + width % 2, height + height % 2
        self.stream.pix_fmt = "yuv420p"

    def write(self, picture):
        av = pyav()
        from PIL import Image
        if picture.size != (self.stream.width, self.stream.height):
            canvas = Image.new("RGB", (self.stream.width, self.stream.height))
            canvas.paste(picture, (0, 0))
            picture = canvas
        frame = av.VideoFrame.from_image(picture)
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self):
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
