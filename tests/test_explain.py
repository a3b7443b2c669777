"""`cnnlab explain`: the article's concepts, with every number from the engine's functions."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image

from cnnlab.cli import build_parser, main
from cnnlab.viz import explain


@pytest.mark.parametrize("size,kernel,padding,stride", [(6, 3, 1, 2), (5, 2, 0, 1), (7, 3, 2, 3)])
def test_conv_slide_is_a_real_convolution(size, kernel, padding, stride):
    s = explain.conv_slide(size, kernel, padding, stride)
    expected = F.conv2d(torch.tensor(s.image)[None, None], torch.tensor(s.kernel)[None, None],
                        stride=stride, padding=padding)[0, 0].numpy()
    np.testing.assert_allclose(s.output, expected)
    for i, j in s.positions:                               # each cell is its window x kernel
        assert (s.windows[i, j] * s.kernel).sum() == s.output[i, j]
    assert (s.padded[:padding] == 0).all() and (s.image >= 1).all()   # every 0 shown is padding


def test_conv_text_shows_padding_kernel_steps_map_and_formula():
    text = explain.explain_conv(6, 3, 1, 2)
    s = explain.conv_slide(6, 3, 1, 2)
    assert "zero padding" in text and "Kernel (3x3)" in text
    assert text.count("\n    step ") == 9                  # 3x3 kernel positions
    first = text.split("step 1/9")[1].splitlines()[1]
    terms = first.split("=")[1].split(" + ")
    assert len(terms) == 9
    assert sum(float(a) * float(b.strip("()")) for a, b in (t.split("*") for t in terms)) \
        == s.output[0, 0]
    assert "3 = floor((6 - 3 + 2*1) / 2) + 1" in text


def test_pool_text_and_values():
    s = explain.pool_slide(4, 2, 2, "max")
    expected = F.max_pool2d(torch.tensor(s.image)[None, None], 2, 2)[0, 0].numpy()
    np.testing.assert_array_equal(s.output, expected)
    avg = explain.pool_slide(4, 2, 2, "avg")
    np.testing.assert_allclose(avg.output, F.avg_pool2d(torch.tensor(s.image)[None, None], 2,
                                                        2)[0, 0].numpy())
    text = explain.explain_pool(4, 2, 2)
    assert "Max pooling output" in text and "Average pooling output" in text


@pytest.mark.parametrize("make,frames", [
    (lambda: explain.conv_slide(6, 3, 1, 2), 9), (lambda: explain.conv_slide(5, 2, 0, 1), 16),
    (lambda: explain.pool_slide(6, 2, 2, "max"), 9)])
def test_gif_has_one_frame_per_window_position(tmp_path, make, frames):
    path = tmp_path / "slide.gif"
    assert explain.save_gif(make(), path) == frames
    with Image.open(path) as gif:
        assert gif.n_frames == frames


def test_gif_frames_colour_the_window_and_fill_the_map():
    s = explain.conv_slide(6, 3, 1, 2)
    frames = explain.slide_frames(s)
    window_colour = explain.COLOURS["window"]
    for frame in (frames[0], frames[-1]):
        assert window_colour in {colour for _, colour in frame.getcolors(1 << 16)}
    done = explain.COLOURS["done"]
    count = lambda f: sum(n for n, c in f.getcolors(1 << 16) if c == done)   # noqa: E731
    assert count(frames[0]) == 0 < count(frames[4]) < count(frames[8])    # the map fills in


def test_softmax_and_relu_text():
    text = explain.explain_softmax([1e4, -1e4, 0])
    assert "nan" not in text.lower() and "1.0000" in text
    relu = explain.explain_relu()
    assert "max(0, x)" in relu and "After ReLU" in relu


def test_cli_explain_commands(tmp_path, capsys):
    assert main(["explain", "conv", "--size", "5", "--kernel", "3", "--padding", "0", "--stride",
                 "1", "--gif", str(tmp_path / "c.gif")]) == 0
    out = capsys.readouterr().out
    assert "3 = floor((5 - 3 + 2*0) / 1) + 1" in out and "9 frames" in out
    assert main(["explain", "formula", "28", "5", "0", "1"]) == 0
    assert "24 = floor((28 - 5 + 2*0) / 1) + 1" in capsys.readouterr().out
    assert main(["explain", "softmax", "--", "3", "-3"]) == 0
    assert main(["explain", "formula", "3", "5", "0", "1"]) == 1    # refused with the formula
    assert "floor((3 - 5 + 0) / 1) + 1 = -1" in capsys.readouterr().err


def test_every_explain_topic_has_help_with_an_example():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    topics = next(a for a in commands["explain"]._actions if a.dest == "topic").choices
    assert set(topics) == {"conv", "pool", "relu", "softmax", "formula"}
    for name, sub in topics.items():
        assert "Example:" in sub.format_help(), name


def test_explain_conv_writes_the_first_sums_then_every_one_with_all():
    from cnnlab.viz.explain import SHOWN_SUMS, explain_conv
    short, every = explain_conv(6, 3, 1, 1), explain_conv(6, 3, 1, 1, every_sum=True)
    sums = [line for line in short.splitlines() if line.startswith("        = ")]
    assert len(sums) == SHOWN_SUMS and "--all writes it for every one" in short
    assert len([line for line in every.splitlines() if line.startswith("        = ")]) == 36
    assert "--all" not in every


def test_a_closed_pipe_ends_any_command_quietly():
    """`cnnlab explain conv --all | head -1`: no BrokenPipeError traceback, exit status 0."""
    import subprocess
    import sys
    command = [sys.executable, "-m", "cnnlab", "explain", "conv", "--size", "64", "--stride", "1",
               "--all"]                                   # far more than a pipe buffer holds
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.readline()
    process.stdout.close()                                   # what `head -1` does
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0 and err == b"", err.decode()[-2000:]
