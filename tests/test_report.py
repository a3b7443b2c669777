"""The HTML report: self-contained, every image loads in a real browser (Debian's headless
Chromium, driven by selenium through the system chromedriver), and a screenshot is kept."""

import re

import numpy as np
import pytest
from browser import ARTIFACTS
from browser import browser as make_browser

import cnnlab
from cnnlab.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    (x, y), (xt, yt) = cnnlab.datasets.mnist_sample.load_data()
    data = folder / "digits.npz"
    np.savez(data, x_train=x[:1500], y_train=y[:1500], x_test=xt[:300], y_test=yt[:300])
    model_path = folder / "model.cnnlab"
    assert main(["train", "--model", "lenet5", "--data", str(data), "--epochs", "2", "--out",
                 str(model_path), "--verbose", "0", "--report", str(folder / "train.html")]) == 0
    return folder, data, model_path


def test_report_is_self_contained_with_every_section(trained):
    folder, data, model_path = trained
    out = folder / "report.html"
    assert main(["report", str(model_path), "--data", str(data), "--out", str(out)]) == 0
    text = out.read_text()
    for heading in ("Architecture", "Training curves", "Confusion matrix", "Feature maps",
                    "filters", "Misclassified", "Grad-CAM"):
        assert heading in text, heading
    assert "28 = floor((28 - 5 + 2*2) / 1) + 1" in text            # the formula per layer
    sources = re.findall(r'<img[^>]*src="([^"]+)"', text)
    assert len(sources) >= 7 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in text and "https://" not in text        # nothing to fetch
    assert (folder / "train.html").exists()                        # cnnlab train --report
    assert oct(out.stat().st_mode & 0o777) != oct(0o600)            # readable like any file


def test_report_opens_in_headless_chromium_with_no_broken_image(trained):
    folder, data, model_path = trained
    out = folder / "browser.html"
    main(["report", str(model_path), "--data", str(data), "--out", str(out)])
    browser = make_browser(1200, 900)
    try:
        browser.get(out.as_uri())
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth]);")
        assert len(images) >= 7
        assert all(complete and width > 0 for complete, width in images), images
        height = browser.execute_script("return document.body.scrollHeight")
        browser.set_window_size(1200, min(height + 100, 16000))
        ARTIFACTS.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "report.png"))
    finally:
        browser.quit()
