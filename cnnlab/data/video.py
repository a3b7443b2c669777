"""Video frames in: every frame of a video that decodes, as a PIL image with its time. Decoding
is PyAV's (FFmpeg; ``pip install 'cnnlab[video]'``), never by hand; ``tasks.video`` classifies
the frames and writes the annotated video."""

from __future__ import annotations

from cnnlab.errors import ConfigError


def pyav():
    """PyAV, or a ConfigError that says how to install it."""
    try:
        import av
    except ImportError:
        raise ConfigError("Video needs PyAV: pip install 'cnnlab[video]' (av).") from None
    return av


def decoded_frames(container, stream, skipped: list):
    """``(index, PIL image, seconds)`` of every frame that decodes; packets that fail to decode
    are recorded in ``skipped`` (by packet number) and passed over."""
    av = pyav()
    index = 0
    for number, packet in enumerate(container.demux(stream)):
        try:
            frames = packet.decode()
        except (av.error.InvalidDataError, ValueError):
            skipped.append(number)
            continue
        for frame in frames:
            seconds = float(frame.time) if frame.time is not None else index / float(
                stream.average_rate or 1)
            yield index, frame.to_image(), seconds
            index += 1
