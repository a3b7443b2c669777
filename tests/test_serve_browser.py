"""The web app end to end in headless Chromium: draw a '1' then a '0' and see the prediction
change, feature maps drawn for every layer, a map enlarged, a training run started, followed
live and stopped, its model used on the draw page, and the explain page stepped. A screenshot of
each page is kept in artifacts/."""

import math
import time

import pytest
from browser import browser, screenshot
from web import signed_in


@pytest.fixture
def driver():
    handle = browser()
    yield handle
    handle.quit()


def wait_for(driver, script, timeout=60.0):
    """Poll a JavaScript expression until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return ({script});")
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {script}; browser log: "
                         f"{driver.get_log('browser')}")


def draw(driver, points):
    """Press, move through ``points`` (pixels from the pad's top-left corner) and release."""
    from selenium.webdriver.common.action_chains import ActionChains
    pad = driver.find_element("id", "pad")
    size = pad.size
    actions = ActionChains(driver, duration=10)
    x0, y0 = points[0]
    actions.move_to_element_with_offset(pad, x0 - size["width"] // 2, y0 - size["height"] // 2)
    actions.click_and_hold()
    for (xa, ya), (xb, yb) in zip(points, points[1:]):
        actions.move_by_offset(xb - xa, yb - ya)
    actions.release().perform()


ONE = [(140, 40 + 10 * i) for i in range(21)]
ZERO = [(round(140 + 55 * math.sin(t / 20 * 2 * math.pi)),
         round(140 - 90 * math.cos(t / 20 * 2 * math.pi))) for t in range(21)]


def no_errors_logged(driver):
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_draw_page_predicts_each_stroke_and_shows_every_layer(web_app, driver):
    base, app = web_app
    layers = app.model("digits").model.layers
    driver.get(signed_in(base))
    wait_for(driver, "document.querySelectorAll('#model option').length > 0")
    draw(driver, ONE)
    assert wait_for(driver, "document.getElementById('top').textContent === '1'")
    driver.find_element("id", "clear").click()
    draw(driver, ZERO)
    assert wait_for(driver, "document.getElementById('top').textContent === '0'")
    assert driver.find_element("id", "top-prob").text.endswith("sure")
    # one drawn canvas per feature map, for every layer, and not all of them blank
    expected = sum(layer.output_shape[-1] if len(layer.output_shape) == 4 else 1
                   for layer in layers)
    maps = wait_for(driver, f"""(() => {{
        const maps = Array.from(document.querySelectorAll('canvas.map'));
        if (maps.length !== {expected}) return null;
        return maps.map(c => {{
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const seen = new Set();
            for (let i = 0; i < d.length; i += 4) seen.add(d[i] * 65536 + d[i + 1] * 256 + d[i + 2]);
            return [c.width * c.height, seen.size];
        }});
    }})()""")
    assert all(pixels > 0 for pixels, _ in maps)
    # most maps show structure (several colours); a map a ReLU silenced is one colour
    assert sum(colours > 1 for _, colours in maps) > 0.6 * len(maps)
    titles = driver.execute_script(
        "return Array.from(document.querySelectorAll('.layer-head .name')).map(e => e.textContent)")
    assert titles == [layer.name for layer in layers]
    assert driver.execute_script("return document.getElementById('seen').width") == 28
    screenshot(driver, "web-draw.png")
    driver.set_window_size(1366, 900)
    driver.execute_script("document.querySelector('canvas.map').scrollIntoView()")
    driver.find_element("css selector", "canvas.map").click()
    assert wait_for(driver, "document.getElementById('overlay').classList.contains('open')")
    assert "map 1 of 32" in driver.find_element("id", "zoom-title").text
    screenshot(driver, "web-zoom.png", full_page=False)
    no_errors_logged(driver)


def test_draw_page_takes_an_uploaded_photo_of_dark_ink_on_paper(web_app, driver, tmp_path):
    from PIL import Image, ImageDraw
    photo = Image.new("RGB", (300, 400), (235, 230, 220))               # paper, off-centre '1'
    ImageDraw.Draw(photo).line([(90, 60), (95, 330)], fill=(30, 30, 40), width=24)
    path = tmp_path / "one.jpg"
    photo.save(path, "JPEG")
    base, _ = web_app
    driver.get(signed_in(base))
    wait_for(driver, "document.querySelectorAll('#model option').length > 0")
    upload = driver.find_element("id", "upload")
    driver.execute_script("arguments[0].hidden = false;", upload)       # behind its label
    upload.send_keys(str(path))
    assert wait_for(driver, "document.getElementById('top').textContent === '1'")
    # what the model saw: white ink on black, centred (the paper was inverted away)
    corner, centre = driver.execute_script("""
        const c = document.getElementById('seen').getContext('2d');
        return [c.getImageData(0, 0, 1, 1).data[0], c.getImageData(14, 14, 1, 1).data[0]];""")
    assert corner == 0 and centre > 128
    # and the pad shows the uploaded photo itself: paper-coloured, with the dark stroke
    paper, stroke = driver.execute_script("""
        const pad = document.getElementById('pad'), c = pad.getContext('2d');
        const at = (x, y) => Array.from(c.getImageData(x, y, 1, 1).data.slice(0, 3));
        const scale = Math.min(pad.width / 300, pad.height / 400);
        const left = (pad.width - 300 * scale) / 2, top = (pad.height - 400 * scale) / 2;
        return [at(left + 250 * scale, top + 200 * scale), at(left + 92 * scale, top + 200 * scale)];""")
    assert min(paper) > 180 and max(stroke) < 90
    no_errors_logged(driver)


def test_train_page_follows_a_run_live_and_stops_it(web_app, driver):
    from selenium.webdriver.support.ui import Select
    base, _ = web_app
    driver.get(signed_in(base, "/train"))
    wait_for(driver, "document.querySelectorAll('#zoo option').length > 0")
    Select(driver.find_element("id", "zoo")).select_by_value("lenet5")
    for field, value in (("epochs", "3"), ("batch", "32")):
        box = driver.find_element("id", field)
        box.clear()
        box.send_keys(value)
    driver.find_element("id", "start").click()
    count = ("Number(document.querySelector('#loss-chart polyline')?.dataset.points || 0)")
    first = wait_for(driver, f"{count} >= 3 && {count}")
    later = wait_for(driver, f"{count} > {first} && {count}")
    assert later > first                                              # the curve grows live
    # the timeline's frames arrive live too: the initial weights, then one a quarter epoch
    wait_for(driver, "Number(document.getElementById('frame-slider').max) >= 1 && "
                     "document.getElementById('frame').naturalWidth > 0")
    assert "Frame" in driver.find_element("id", "frames-note").text
    assert driver.find_element("id", "state").text == "running"
    driver.find_element("id", "stop").click()
    wait_for(driver, "document.getElementById('state').textContent === 'stopped'")
    assert wait_for(driver, "!document.getElementById('ready').hidden")
    screenshot(driver, "web-train.png")
    driver.find_element("id", "use-model").click()
    wait_for(driver, "document.getElementById('model').value === 'lenet5-1'")
    draw(driver, ONE)
    wait_for(driver, "document.getElementById('top').textContent !== '–'")
    no_errors_logged(driver)


def test_explain_page_steps_through_convolution_and_pooling(web_app, driver):
    base, _ = web_app
    driver.get(signed_in(base, "/explain"))
    wait_for(driver, "document.querySelectorAll('#conv [data-role=output] .cell').length === 9")
    step = driver.find_element("css selector", "#conv [data-action=next]")
    for _ in range(4):
        step.click()
    label = driver.find_element("css selector", "#conv [data-role=step]").text
    assert label.startswith("Step 4 of 9") and "output (1, 0)" in label
    filled = driver.execute_script(
        "return document.querySelectorAll('#conv [data-role=output] .cell.filled, "
        "#conv [data-role=output] .cell.current').length")
    assert filled == 4
    current = driver.find_element("css selector", "#conv .cell.current").get_attribute("data-value")
    total = driver.find_element("css selector", "#conv [data-role=sum]").text
    assert total.startswith("out[1][0] = ") and total.endswith(f"= {float(current):g}")
    assert len(driver.find_elements("css selector", "#conv [data-role=input] .in-window")) == 9
    # change the stride: the engine's answer and the formula follow
    stride = driver.find_element("css selector", "#conv [data-param=stride]")
    stride.clear()
    stride.send_keys("1\t")
    wait_for(driver, "document.querySelectorAll('#conv [data-role=output] .cell').length === 36")
    assert "6 = floor((6 - 3 + 2*1) / 1) + 1" in driver.find_element(
        "css selector", "#conv [data-role=formula]").text
    driver.find_element("css selector", "#pool [data-action=next]").click()
    pooled = driver.find_element("css selector", "#pool [data-role=sum]").text
    assert pooled.startswith("out[0][0] = max(")
    for _ in range(8):
        step.click()
    screenshot(driver, "web-explain.png")
    no_errors_logged(driver)


def test_the_idle_train_page_draws_its_axes_and_says_what_will_appear(web_app, driver):
    base, _ = web_app
    driver.get(signed_in(base, "/train"))
    wait_for(driver, "document.querySelectorAll('#zoo option').length > 0")
    for chart in ("loss-chart", "accuracy-chart"):
        axes = driver.execute_script(
            f"return document.querySelectorAll('#{chart} line.axis').length")
        note = driver.find_element("css selector", f"#{chart} .chart-empty").text
        assert axes == 2 and note == "The curves appear here when training starts."
    no_errors_logged(driver)


def test_a_cold_server_answers_the_explain_pages_first_load_completely(driver, tmp_path,
                                                                       digits_model_file):
    """A fresh `cnnlab serve` process, the explain page loaded at once, three times over: both
    cards get their grids and their formula (a first load once came without them)."""
    import os
    import socket
    import subprocess
    import sys
    for _ in range(3):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = subprocess.Popen(
            [sys.executable, "-m", "cnnlab", "serve", str(digits_model_file), "--port",
             str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "CNNLAB_HOME": str(tmp_path / "home")})
        try:
            line = ""
            while "serving at" not in line:                  # its URL, once listening
                line = server.stdout.readline()
            url = line.split("serving at ", 1)[1].split()[0]
            driver.get(url.replace("/?token=", "/explain?token="))
            wait_for(driver, "document.querySelectorAll('#conv [data-role=output] .cell').length"
                             " === 9 && document.querySelectorAll('#pool [data-role=output] "
                             ".cell').length === 4", timeout=30)
            for card in ("conv", "pool"):
                formula = driver.find_element("css selector", f"#{card} [data-role=formula]")
                assert "= floor(" in formula.text
                assert driver.find_element("css selector", f"#{card} [data-role=error]").text == ""
            no_errors_logged(driver)
        finally:
            server.terminate()
            server.wait(timeout=30)
