"""The README's first command in a fresh virtualenv, then `cnnlab report`: the report needs
nothing beyond cnnlab's own dependencies (matplotlib is one of them); and the pretrained
weights ship inside the installed package (photo search runs on them)."""

import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_pip_install_then_train_then_report_in_a_fresh_virtualenv(tmp_path):
    source = tmp_path / "cnnlab-src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "__pycache__", ".hypothesis", "artifacts"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_dir = venv / "bin"

    def run(*command, cwd=tmp_path):
        result = subprocess.run([*command], cwd=cwd, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-3000:])
        return result.stdout

    run(str(bin_dir / "pip"), "install", "--quiet", str(source))
    from cnnlab.version import __version__  # the one place the number is written
    assert run(str(bin_dir / "pip"), "show", "cnnlab").split("Version: ")[1].split()[0] \
        == __version__
    assert run(str(bin_dir / "cnnlab"), "--version").split() == ["cnnlab", __version__]
    run(str(bin_dir / "cnnlab"), "train", "--epochs", "1", "--verbose", "0")
    out = run(str(bin_dir / "cnnlab"), "report", "article_cnn.cnnlab", "--out", "report.html")
    html = (tmp_path / "report.html").read_text()
    assert "report.html" in out and html.count("data:image/png;base64,") >= 5
    photos = tmp_path / "photos"
    photos.mkdir()
    from PIL import Image
    for k in range(3):
        Image.new("RGB", (40, 30), (80 * k, 40, 200 - 60 * k)).save(photos / f"{k}.png")
    run(str(bin_dir / "cnnlab"), "index", str(photos), "--out", str(tmp_path / "p.index"))
    found = run(str(bin_dir / "cnnlab"), "search", str(tmp_path / "p.index"),
                str(photos / "1.png"), "-k", "1")
    assert "1.0000" in found and "1.png" in found
    freeze = run(str(bin_dir / "pip"), "freeze")
    assert "matplotlib==" in freeze and "numba==" in freeze and "torch" not in freeze
