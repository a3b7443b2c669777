"""Video: every frame classified (or detected in), an annotated video at the input's rate, a
CSV per frame, damaged frames skipped and reported."""

import csv
import subprocess
import sys

import numpy as np
import pytest

import cnnlab
from cnnlab.cli import main
from cnnlab.errors import ConfigError, DataError

av = pytest.importorskip("av")

DIGITS = [3, 7]          # held-out test digits shown one after the other
FRAMES_EACH = 12
FPS = 12


def _digit_frames():
    """A 96x96 frame sequence: each digit slides left to right, white on black."""
    _, (x_test, y_test) = cnnlab.datasets.mnist_sample.load_data()
    frames, labels = [], []
    for digit in DIGITS:
        image = x_test[np.flatnonzero(y_test == digit)[0]]
        for k in range(FRAMES_EACH):
            frame = np.zeros((96, 96), np.uint8)
            left = 4 + k * 5
            frame[30:58, left:left + 28] = image
            frames.append(np.repeat(frame[..., None], 3, axis=2))
            labels.append(digit)
    return frames, labels


def _write(path, frames, codec="libx264", pix_fmt="yuv420p"):
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 96, 96, pix_fmt
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _frame_count_and_duration(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        return count, float(stream.duration * stream.time_base)


def test_cli_classifies_every_frame_and_writes_the_video_and_csv(tmp_path):
    frames, labels = _digit_frames()
    _write(tmp_path / "digits.mp4", frames)
    result = subprocess.run([sys.executable, "-m", "cnnlab", "video", "digits",
                             str(tmp_path / "digits.mp4"), "--batch-size", "10"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "24 frames at 12 fps (2.00 s)" in result.stdout
    with open(tmp_path / "digits-cnnlab.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["frame"]) for r in rows] == list(range(24))
    predicted = [int(r["class"]) for r in rows]
    assert np.mean(np.array(predicted) == np.array(labels)) >= 0.9, predicted
    assert float(rows[12]["seconds"]) == pytest.approx(1.0, abs=1e-3)
    count, duration = _frame_count_and_duration(tmp_path / "digits-cnnlab.mp4")
    assert count == 24 and duration == pytest.approx(2.0, abs=1 / FPS)


def test_a_damaged_frame_is_skipped_and_reported(tmp_path):
    """MJPEG in AVI: every frame its own JPEG, so garbage in one packet ruins that frame alone."""
    frames, _ = _digit_frames()
    path = tmp_path / "mjpeg.avi"
    _write(path, frames, codec="mjpeg", pix_fmt="yuvj420p")
    with av.open(str(path)) as container:
        packets = [(p.pos, p.size) for p in container.demux(container.streams.video[0])
                   if p.size]
    data = bytearray(path.read_bytes())
    position, size = packets[5]
    data[position:position + size] = b"\x00" * size          # the whole JPEG gone
    path.write_bytes(bytes(data))
    from cnnlab.tasks import video
    result = video.process_video("digits", path, out=tmp_path / "out.mp4",
                                 csv_path=tmp_path / "out.csv")
    assert result.skipped == [5] and result.frames == 23
    completed = subprocess.run([sys.executable, "-m", "cnnlab", "video", "digits", str(path),
                                "--out", str(tmp_path / "cli.mp4")],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0 and "skipped 1 damaged packet" in completed.stderr


def test_detect_in_each_frame_writes_one_row_per_box_or_an_empty_row(tmp_path):
    from test_detect import _digit_detector
    detector = _digit_detector()
    detector.save(tmp_path / "detector.cnnlab")
    frames, _ = _digit_frames()
    frames = frames[:3] + [np.zeros_like(frames[0])]
    _write(tmp_path / "few.mp4", frames)
    from cnnlab.tasks import video
    result = video.process_video(str(tmp_path / "detector.cnnlab"), tmp_path / "few.mp4",
                                 out=tmp_path / "boxes.mp4", csv_path=tmp_path / "boxes.csv",
                                 detect_objects=True)
    assert result.frames == 4
    with open(tmp_path / "boxes.csv") as handle:
        rows = list(csv.DictReader(handle))
    by_frame = {int(r["frame"]): r for r in rows}
    assert set(by_frame) == {0, 1, 2, 3} and by_frame[3]["x0"] == ""     # blank: no box
    first = [r for r in rows if r["frame"] == "0" and r["x0"]]
    assert first and float(first[0]["x0"]) == pytest.approx(4, abs=6)
    # a verifier sure that nothing is a digit leaves every frame blank, through the CLI too
    from test_detect import _verifier
    _verifier(1e-6).save(tmp_path / "never.cnnlab")
    assert main(["video", str(tmp_path / "detector.cnnlab"), str(tmp_path / "few.mp4"),
                 "--detect", "--verifier", str(tmp_path / "never.cnnlab"),
                 "--out", str(tmp_path / "none.mp4")]) == 0
    with open(tmp_path / "none.csv") as handle:
        assert [r["x0"] for r in csv.DictReader(handle)] == [""] * 4
    with pytest.raises(ConfigError, match="needs detect_objects=True"):
        video.process_video(detector, tmp_path / "few.mp4", verifier=tmp_path / "never.cnnlab")


def test_bad_video_input_is_refused_clearly(tmp_path, monkeypatch):
    from cnnlab.tasks import video
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all")
    with pytest.raises(DataError, match="not a video FFmpeg can read|No frame"):
        video.process_video("digits", tmp_path / "junk.mp4")
    with pytest.raises(DataError, match="No video file"):
        video.process_video("digits", tmp_path / "missing.mp4")
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ConfigError, match=r"pip install 'cnnlab\[video\]'"):
        video.process_video("digits", tmp_path / "junk.mp4")


def test_bounds_on_pixels_and_frames_and_a_failure_leaves_no_file(tmp_path, monkeypatch,
                                                                   capsys):
    """Over a bound: a LimitError that names it, before or during the work; an FFmpeg failure
    mid-way (av.error.ArgumentError, as a PNG once raised) is one line from the CLI; neither
    leaves a half-written CSV or MP4 behind."""
    from cnnlab.errors import LimitError
    from cnnlab.tasks import video
    frames, _ = _digit_frames()
    _write(tmp_path / "d.mp4", frames)
    out, table = tmp_path / "o.mp4", tmp_path / "o.csv"
    with pytest.raises(LimitError, match=r"96x96 \(9,216 pixels a frame\); the limit here is 9,000"):
        video.process_video("digits", tmp_path / "d.mp4", out=out, csv_path=table,
                            max_frame_pixels=9000)
    with pytest.raises(LimitError, match="more than 10 frames"):
        video.process_video("digits", tmp_path / "d.mp4", out=out, csv_path=table,
                            max_frames=10, batch_size=4)
    assert not out.exists() and not table.exists()

    def broken(self, picture):
        raise av.error.ArgumentError(22, "Invalid argument")
    monkeypatch.setattr(video._Writer, "write", broken)
    monkeypatch.chdir(tmp_path)
    assert main(["video", "digits", "d.mp4"]) == 1
    assert "FFmpeg could not process 'd.mp4'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.mp4"]


def test_the_video_page_and_api_return_the_same_results_as_the_library(web_app, tmp_path):
    """Through the web app: the answer's rows equal process_video's own CSV for the same file,
    the annotated MP4 and the CSV can be fetched, a non-video is refused, and the page shows
    it all in Chromium with no console errors."""
    import json
    import urllib.error
    import urllib.request

    from cnnlab.tasks.video import process_video
    base, app = web_app
    frames, _ = _digit_frames()
    _write(tmp_path / "digits.mp4", frames)
    body = (tmp_path / "digits.mp4").read_bytes()
    from web import AUTH, signed_in
    request = urllib.request.Request(base + "/api/video?detect=no&model=digits", data=body,
                                     method="POST", headers={"Content-Type": "video/mp4", **AUTH})
    with urllib.request.urlopen(request, timeout=300) as reply:
        answer = json.loads(reply.read())
    assert answer["frames"] == len(frames) and answer["skipped"] == []
    assert answer["model"] == "digits"              # the served name, as every page says it
    process_video(app.model("digits").model, tmp_path / "digits.mp4",
                  csv_path=tmp_path / "lib.csv")
    with open(tmp_path / "lib.csv", newline="") as handle:
        assert answer["rows"] == list(csv.DictReader(handle))
    with urllib.request.urlopen(urllib.request.Request(base + answer["video"], headers=AUTH),
                                timeout=60) as reply:
        (tmp_path / "back.mp4").write_bytes(reply.read())
    assert _frame_count_and_duration(tmp_path / "back.mp4")[0] == len(frames)
    with urllib.request.urlopen(urllib.request.Request(base + answer["csv"], headers=AUTH),
                                timeout=60) as reply:
        assert reply.read().decode().startswith("frame,seconds,class,probability")
    bad = urllib.request.Request(base + "/api/video?detect=no", data=b"not a video",
                                 method="POST", headers={"Content-Type": "video/mp4", **AUTH})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(bad, timeout=60)
    assert caught.value.code == 400 and "not a video FFmpeg can read" in json.loads(
        caught.value.read())["error"]

    from browser import browser, screenshot
    from test_serve_browser import no_errors_logged, wait_for
    driver = browser()
    try:
        driver.get(signed_in(base, "/video"))
        wait_for(driver, "document.querySelectorAll('#model option').length > 0")
        driver.find_element("id", "upload").send_keys(str(tmp_path / "digits.mp4"))
        wait_for(driver, "document.querySelectorAll('#frame-results tr').length === 25 || "
                         "document.getElementById('error').textContent", timeout=120)
        assert not driver.find_element("id", "error").text
        assert driver.find_element("id", "result-title").text.startswith("24 frames, 2 s")
        assert "/api/video/result/" in driver.find_element("id", "player").get_attribute("src")
        no_errors_logged(driver)
        screenshot(driver, "video.png")
    finally:
        driver.quit()
