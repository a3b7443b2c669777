"""The command line: train -> evaluate -> predict -> summary on real digits, help texts, and
one-line errors for user mistakes."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import cnnlab
from cnnlab import datasets
from cnnlab.cli import build_parser, main


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    out = folder / "digits.cnnlab"
    assert main(["train", "--epochs", "1", "--out", str(out), "--verbose", "0"]) == 0
    return out


def test_train_reports_accuracy_and_saves(trained_model, capsys):
    assert trained_model.exists()
    assert main(["evaluate", str(trained_model)]) == 0
    out = capsys.readouterr().out
    accuracy = float(out.split("accuracy ")[1].split()[0])
    assert accuracy > 0.9                     # one epoch of the article's CNN on 8,000 digits


def test_predict_reads_images_of_any_size_and_polarity(trained_model, tmp_path, capsys):
    _, (x_test, y_test) = datasets.mnist_sample.load_data()
    paths = []
    for i in range(10):
        # dark ink on white paper, 3x larger, off centre, in RGB: nothing like MNIST's format
        ink = 255 - x_test[i]
        page = np.full((120, 110), 255, np.uint8)
        page[10:94, 20:104] = np.asarray(Image.fromarray(ink).resize((84, 84)))
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(page).convert("RGB").save(path)
        paths.append(str(path))
    assert main(["predict", str(trained_model), *paths]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 10
    top1 = [int(line.split(": ")[1].split(" ")[0]) for line in lines]
    assert sum(p == t for p, t in zip(top1, y_test[:10])) >= 8
    assert all(line.count("%") == 3 for line in lines)


def test_summary_of_zoo_name_and_file(trained_model, capsys):
    assert main(["summary", "article"]) == 0
    assert "24 = floor((28 - 5 + 2*0) / 1) + 1" in capsys.readouterr().out
    assert main(["summary", str(trained_model)]) == 0
    assert "Total params: 1,087,106" in capsys.readouterr().out


def test_every_command_takes_the_same_model_names(capsys):
    """One resolver (``zoo.find``): shipped weights by name in summary as in video, a zoo
    architecture where fresh weights make sense, and one did-you-mean for a misspelling. Before,
    `cnnlab summary digits` failed and predict/evaluate/report/export took only files."""
    assert main(["summary", "digits"]) == 0
    assert "Total params" in capsys.readouterr().out
    assert main(["summary", "resnet20"]) == 0
    capsys.readouterr()
    errors = []
    for argv in (["summary", "digts"], ["evaluate", "digts"], ["predict", "digts", "x.png"],
                 ["report", "digts"], ["export", "digts", "m.onnx"],
                 ["video", "digts", "x.mp4"], ["detect", "x.png", "--model", "digts"]):
        assert main(argv) == 1, argv
        errors.append(capsys.readouterr().err)
    assert all("No model 'digts'" in e and "Did you mean 'digits'?" in e for e in errors), errors
    assert main(["predict", "resnet20", "x.png"]) == 1
    assert "has learned nothing yet" in capsys.readouterr().err


def test_train_on_an_npz_with_other_options(tmp_path, capsys):
    (x, y), _ = datasets.mnist_sample.load_data()
    np.savez(tmp_path / "small.npz", x=x[:300], y=y[:300])
    out = tmp_path / "lenet.cnnlab"
    assert main(["train", "--model", "lenet5", "--data", str(tmp_path / "small.npz"),
                 "--epochs", "1", "--batch-size", "32", "--optimizer", "adam", "--seed", "3",
                 "--out", str(out), "--verbose", "2"]) == 0
    text = capsys.readouterr().out
    assert "Epoch 1/1" in text and "Test accuracy" in text and out.exists()


def test_an_npz_dataset_names_its_classes_for_the_model_trained_on_it(tmp_path, capsys):
    """Its ``class_names`` array (strings, no pickle) is kept in the model; a list that does
    not fit the labels is refused, naming what it holds and what was expected."""
    (x, y), _ = datasets.mnist_sample.load_data()
    keep = y < 2
    names = np.array(["zero", "one"])
    np.savez(tmp_path / "two.npz", x=x[keep][:200], y=y[keep][:200], class_names=names)
    out = tmp_path / "two.cnnlab"
    assert main(["train", "--data", str(tmp_path / "two.npz"), "--epochs", "1",
                 "--out", str(out), "--verbose", "0"]) == 0
    assert cnnlab.load_model(out).metadata["class_names"] == ["zero", "one"]
    np.savez(tmp_path / "bad.npz", x=x[keep][:200], y=y[keep][:200],
             class_names=np.array(["zero", "one", "two"]))
    assert main(["train", "--data", str(tmp_path / "bad.npz"), "--epochs", "1",
                 "--out", str(tmp_path / "bad.cnnlab")]) == 1
    assert "class_names should be 2 strings" in capsys.readouterr().err


def test_every_command_has_help_with_an_example():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    assert set(subparsers.choices) >= {"train", "evaluate", "predict", "summary", "explain"}
    for name, sub in subparsers.choices.items():
        assert "Example:" in sub.format_help(), name
    assert "Example:" in parser.format_help()


@pytest.mark.parametrize("argv,message", [
    (["evaluate", "missing.cnnlab"], "No model file at 'missing.cnnlab'"),
    (["summary", "resnet"], "No model 'resnet'"),
    (["train", "--data", "nowhere.npz"], "Unknown dataset 'nowhere.npz'"),
    (["explain", "formula", "28", "5", "0", "0"], None),          # argparse: exit 2, below
])
def test_user_errors_are_one_line_and_exit_1(argv, message, capsys):
    if message is None:
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        assert stopped.value.code == 2 and "expected a positive integer, got '0'" in \
            capsys.readouterr().err
        return
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("cnnlab: error: ") and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_predict_with_a_non_image_file(trained_model, tmp_path, capsys):
    (tmp_path / "notes.png").write_text("not an image")
    assert main(["predict", str(trained_model), str(tmp_path / "notes.png")]) == 1
    assert "is not an image" in capsys.readouterr().err


def test_the_command_prints_a_warning_as_one_line_for_its_user(tmp_path):
    """Not Python's ``file.py:180: UserWarning:`` and the source line under it."""
    (x, y), _ = datasets.mnist_sample.load_data()
    np.savez(tmp_path / "few.npz", x=x[:40], y=y[:40])
    result = subprocess.run([sys.executable, "-m", "cnnlab", "train", "--data",
                             str(tmp_path / "few.npz"), "--model", "resnet20", "--epochs",
                             "1", "--out",
                             str(tmp_path / "few.cnnlab")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "Warning" in line]
    assert warned and all(line.startswith("Warning: ") for line in warned), result.stderr
    assert ".py:" not in result.stderr


def test_bad_options_exit_2_with_usage():
    result = subprocess.run([sys.executable, "-m", "cnnlab", "train", "--epochs", "zero"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "expected a positive integer" in result.stderr and "Traceback" not in result.stderr


def test_repeating_a_runs_command_with_resume_added_continues_it(tmp_path, capsys):
    """The options of the run being resumed may be repeated; a contradicting one is refused with
    the option, the checkpoint's value and the given one."""
    (x, y), (xt, yt) = datasets.mnist_sample.load_data()
    data = tmp_path / "d.npz"
    np.savez(data, x_train=x[:256], y_train=y[:256], x_test=xt[:64], y_test=yt[:64])
    command = ["train", "--model", "lenet5", "--data", str(data), "--epochs", "1", "--seed", "3",
               "--batch-size", "64", "--verbose", "0", "--checkpoint-dir", str(tmp_path / "ck"),
               "--out", str(tmp_path / "m.cnnlab")]
    assert main(command) == 0
    capsys.readouterr()
    assert main([*command, "--resume", str(tmp_path / "ck")]) == 0
    assert "Resuming lenet5" in capsys.readouterr().out
    contradicting = [*command, "--resume", str(tmp_path / "ck")]
    contradicting[contradicting.index("--seed") + 1] = "4"
    assert main(contradicting) == 1
    err = capsys.readouterr().err
    assert "--seed 4 contradicts the run saved in" in err and "which has --seed 3" in err


def test_the_readmes_command_table_lists_every_option_help_shows():
    import argparse
    import pathlib
    import re
    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    rows = {}
    for line in readme.splitlines():
        if line.startswith("| `cnnlab "):
            cells = re.split(r"(?<!\\)\|", line)            # cells split at unescaped bars
            rows[re.match(r"\| `cnnlab (\w+)", line).group(1)] = set(
                re.findall(r"`(--[a-z-]+)", cells[2]))

    def options(parser):
        found = set()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    found |= options(sub)
            found.update(o for o in action.option_strings if o.startswith("--") and o != "--help")
        return found

    commands = next(a for a in build_parser()._actions
                    if isinstance(a, argparse._SubParsersAction)).choices
    assert set(rows) == set(commands)
    for name, parser in commands.items():
        assert rows[name] == options(parser), name


def test_explain_formula_refuses_what_the_formula_cannot_mean(capsys):
    """A zero stride once raised ZeroDivisionError; a negative kernel printed a result."""
    for numbers, words in ((["28", "-3", "0", "1"], "kernel: expected a positive integer"),
                           (["28", "5", "-1", "1"], "padding: expected 0 or a positive")):
        with pytest.raises(SystemExit):
            main(["explain", "formula", "--", *numbers])
        assert words in capsys.readouterr().err
    from cnnlab.engine.shapes import conv_output_size
    from cnnlab.errors import ShapeError
    with pytest.raises(ShapeError, match="stride must be positive"):
        conv_output_size(28, 5, stride=0)


def test_a_bare_cnnlab_lists_the_commands():
    result = subprocess.run([sys.executable, "-m", "cnnlab"], capture_output=True, text=True)
    assert result.returncode == 0
    assert all(f"    {name}" in result.stdout for name in ("train", "evaluate", "serve", "video"))


def test_every_command_that_writes_checks_its_path_before_the_work(trained_model, tmp_path,
                                                                  capsys, monkeypatch):
    """Never a folder the user did not name, never an overwrite unasked, the extension the
    command writes; all before the work (detect's --out was checked after a minute's search)."""
    from cnnlab.tasks import detect

    def no_work(*args, **kwargs):
        raise AssertionError("the work started before the output path was checked")
    monkeypatch.setattr(detect, "detect", no_work)
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 64)).save(photo)
    missing = tmp_path / "nonexistent" / "dir"
    for argv, words in (
            (["detect", str(photo), "--out", str(missing / "x.png")], "there is no folder"),
            (["detect", str(photo), "--out", str(tmp_path / "gh.txt")], "expected a file ending"),
            (["export", str(trained_model), str(missing / "d.onnx")], "there is no folder"),
            (["train", "--epochs", "1", "--out", str(missing / "m.cnnlab")], "there is no folder"),
            (["train", "--epochs", "1", "--out", str(trained_model)], "Add --overwrite"),
            (["report", str(trained_model), "--out", str(missing / "r.html")], "no folder"),
            (["explain", "conv", "--gif", str(missing / "c.gif")], "there is no folder")):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not missing.parent.exists()
    pytest.importorskip("onnx")
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"an earlier export")
    assert main(["export", str(trained_model), str(onnx_file)]) == 1
    assert onnx_file.read_bytes() == b"an earlier export"
    assert main(["export", str(trained_model), str(onnx_file), "--overwrite"]) == 0
    assert onnx_file.read_bytes() != b"an earlier export"


def test_a_default_report_name_never_replaces_an_earlier_report(trained_model, tmp_path, capsys,
                                                                monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "report.html").write_text("an earlier report")
    assert main(["report", str(trained_model)]) == 0
    assert "report-2.html" in capsys.readouterr().out
    assert (tmp_path / "report.html").read_text() == "an earlier report"


def test_training_data_mistakes_say_what_was_expected(tmp_path, capsys):
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (30, 30)).save(photo)
    assert main(["train", "--data", str(photo)]) == 1
    err = capsys.readouterr().err
    assert "a folder with one subfolder of images per class, or an .npz of arrays" in err
    assert "pickle" not in err
    for name in ("a", "b"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        Image.new("RGB", (30, 30)).save(tmp_path / "photos" / name / "1.png")
    assert main(["train", "--data", str(tmp_path / "photos"), "--image-size", "2000",
                 "--model", "simple_convnet"]) == 1
    err = capsys.readouterr().err
    assert "needs about 258.4 GiB for its activations" in err and "--image-size" in err


def test_the_plan_says_one_epoch():
    from cnnlab import zoo
    assert "1 epoch," in zoo.Recipe(epochs=1).describe()


def test_the_offline_message_tells_a_command_line_user_what_to_do(tmp_path, monkeypatch):
    from cnnlab.datasets import download
    from cnnlab.errors import DataError

    def offline(*args, **kwargs):
        raise OSError("no network")
    monkeypatch.setattr(download.urllib.request, "urlopen", offline)
    monkeypatch.setenv("CNNLAB_HOME", str(tmp_path))
    with pytest.raises(DataError) as refused:
        datasets.load("mnist")
    assert "copy the file" in str(refused.value) and "path=" not in str(refused.value)


def test_a_settings_default_is_written_once_in_the_recipe(monkeypatch):
    """The rate an optimizer starts from lives in ``zoo.OPTIMIZER_LR`` alone: the run's settings
    and the --lr help follow a change there (before, runs and the help text had their own
    copies)."""
    from cnnlab import zoo
    from cnnlab.runs import run_settings
    monkeypatch.setitem(zoo.OPTIMIZER_LR, "adam", 0.0123)
    assert run_settings(optimizer="adam")["lr"] == 0.0123
    assert run_settings()["lr"] == zoo.RECIPES["article"].lr
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["train"]
                         .format_help().split())
    assert "0.0123 for adam" in help_text
