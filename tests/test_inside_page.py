"""The Inside page (/inside) and its API: a filter's visualisation, its top patches equal to the
library's (which are checked by brute force in test_viz), its map on an upload equal to the
model's own activations, the embedding map's points equal to the library's PCA, clear refusals,
and the page rendered in headless Chromium with no console errors."""

import base64
import io
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image
from web import AUTH, TOKEN, signed_in

from cnnlab import datasets
from cnnlab.viz import attribution, embedding
from cnnlab.viz.patches import top_patches


def _get(url):
    with urllib.request.urlopen(urllib.request.Request(url, headers=AUTH),
                                timeout=120) as answer:
        return json.loads(answer.read())


def _post(url, body, kind="image/png"):
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": kind, **AUTH})
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.loads(answer.read())


def _error(call):
    with pytest.raises(urllib.error.HTTPError) as caught:
        call()
    return caught.value.code, json.loads(caught.value.read())["error"]


def _png_pixels(text):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))), dtype=np.float64) / 255


def test_the_inside_api_answers_with_the_librarys_numbers(web_app):
    base, app = web_app
    model = app.model("digits").model
    listing = _get(base + "/api/inside/layers?model=digits")
    assert [row["name"] for row in listing["layers"]] == ["conv1", "conv2"]
    assert listing["layers"][1]["receptive_field"] == [14, 14]
    assert listing["layers"][0]["shows"] == "centre" and listing["layers"][1]["shows"] == "mean"
    answer = _get(base + "/api/inside/filter?model=digits&layer=conv2&filter=5")
    assert answer["where"] == "mean" and answer["size"] == [28, 28]
    assert _png_pixels(answer["visualisation"]).shape == (28, 28)
    _, (x, _) = datasets.load("mnist_sample")
    images = datasets.as_model_input(x[:500]).astype(model.dtype)
    expected = top_patches(model, "conv2", images, k=8, filters=[5])[5]
    assert [p["image"] for p in answer["patches"]] == [p.image for p in expected]
    assert [p["box"] for p in answer["patches"]] == [list(p.box) for p in expected]
    first = _get(base + "/api/inside/filter?model=digits&layer=conv1&filter=0")
    assert first["where"] == "centre" and first["size"] == [5, 5]

    # the map on an upload is the model's own activation of that filter
    digit = Image.fromarray(x[600])
    buffer = io.BytesIO()
    digit.save(buffer, format="PNG")
    mapped = _post(base + "/api/inside/map?model=digits&layer=conv2&filter=5", buffer.getvalue())
    seen = _png_pixels(mapped["input"])[..., None]
    _, tape = model.run(seen[None].astype(model.dtype))
    node = attribution.target_node(model, "conv2")
    values = tape.values[id(node.outputs[0])][0, ..., 5]
    assert mapped["map"]["height"] == 8
    np.testing.assert_allclose(mapped["map"]["min"][0], values.min(), atol=1e-5)
    np.testing.assert_allclose(mapped["map"]["max"][0], values.max(), atol=1e-5)

    points = _get(base + "/api/inside/embedding?model=digits")
    ours = embedding.embedding_map(model, images)
    got = np.array([[p["x"], p["y"]] for p in points["points"]])
    np.testing.assert_allclose(got, ours, atol=1e-3)
    picked = _get(base + "/api/inside/image?model=digits&image=7")
    np.testing.assert_allclose(_png_pixels(picked["png"]), images[7, ..., 0], atol=1 / 255)

    assert _error(lambda: _get(base + "/api/inside/filter?model=digits&layer=conv2&filter=64")) \
        == (400, "'filter' must be 0 to 63 for conv2. Received: '64'")
    code, message = _error(lambda: _get(base + "/api/inside/filter?model=digits&layer=dense"))
    assert code == 404 and "no conv layer 'dense'" in message and "conv1" in message
    code, message = _error(lambda: _get(base + "/api/inside/image?model=digits&image=999"))
    assert code == 404 and "0 to 499" in message
    code, message = _error(lambda: _post(base + "/api/inside/map?model=digits&layer=conv2"
                                                "&filter=1", b"not an image"))
    assert code == 415


def test_the_inside_page_renders_a_filter_its_patches_a_drawing_and_the_map(web_app):
    from browser import browser, screenshot
    from test_serve_browser import ONE, draw, no_errors_logged, wait_for
    base, _ = web_app
    driver = browser(width=1366, height=1000)
    try:
        driver.get(signed_in(base, "/inside"))
        wait_for(driver, "document.getElementById('visual').naturalWidth > 0", timeout=120)
        wait_for(driver, "document.querySelectorAll('#patches img').length === 8", timeout=120)
        wait_for(driver, "document.querySelectorAll('#embedding circle').length === 500",
                 timeout=120)
        assert "conv2 filter 0" in driver.find_element("id", "visual-title").text
        assert "receptive field" in driver.find_element("id", "layer-info").text
        driver.execute_script("document.getElementById('pad').scrollIntoView()")
        draw(driver, [(px * 196 // 280, py * 196 // 280) for px, py in ONE])
        wait_for(driver, "document.getElementById('map-note').textContent.includes('8×8 map') "
                         "|| document.getElementById('error').textContent", timeout=60)
        assert not driver.find_element("id", "error").text
        driver.find_element("id", "next").click()
        wait_for(driver, "document.getElementById('visual-title').textContent"
                         ".includes('filter 1')", timeout=120)
        driver.execute_script("document.querySelector('#embedding circle')"
                              ".dispatchEvent(new MouseEvent('click'))")
        wait_for(driver, "!document.getElementById('picked').hidden", timeout=30)
        wait_for(driver, "!document.getElementById('visual-note').textContent"
                         ".startsWith('Computing')", timeout=120)
        assert "true class" in driver.find_element("id", "picked-note").text
        no_errors_logged(driver)
        screenshot(driver, "inside.png")
    finally:
        driver.quit()


def test_a_model_trained_on_a_folder_draws_its_patches_and_map_from_the_photo_index(tmp_path,
                                                                                    monkeypatch):
    """The shipped CIFAR-10 model was trained on a folder the server does not have: with
    ``serve --index`` its patches and map come from the indexed photos, labelled by their class
    folders (a folder that is not one of its classes shows as '(other folder)')."""
    import threading

    from cnnlab import serve, zoo
    from cnnlab.data.pictures import image_for_model, open_image
    from cnnlab.tasks import search
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for colour, name in enumerate(("cat", "ship", "misc")):
        (root / name).mkdir(parents=True)
        for i in range(5):
            pixels = rng.integers(0, 100, (32, 32, 3), dtype=np.uint8)
            pixels[..., colour] += 150
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    monkeypatch.setenv("CNNLAB_HOME", str(tmp_path / "home"))
    index = search.build_index(root, out=tmp_path / "p.index")
    model = zoo.load("cifar10")
    app = serve.App({"cifar": (model, "cifar10")}, serve.models_dir(), index=index, token=TOKEN)
    server = serve.make_server(app, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    base = server.url.rstrip("/")
    try:
        points = _get(base + "/api/inside/embedding?model=cifar")
        assert len(points["points"]) == 15 and "photos of the index" in points["dataset"]
        names = points["classes"]
        assert names[-1] == "(other folder)"
        expected = [names.index(path.split("/")[0]) if path.split("/")[0] in names[:-1]
                    else len(names) - 1 for path in index.paths]
        assert [p["label"] for p in points["points"]] == expected
        answer = _get(base + "/api/inside/filter?model=cifar&layer=block3_2_conv&filter=2")
        images = np.stack([image_for_model(model, open_image(root / path))
                           for path in index.paths]).astype(model.dtype)
        found = top_patches(model, "block3_2_conv", images, k=8, filters=[2])[2]
        assert [p["image"] for p in answer["patches"]] == [p.image for p in found]
        np.testing.assert_allclose([p["activation"] for p in answer["patches"]],
                                   [p.activation for p in found], atol=1e-4)
    finally:
        server.shutdown()
        server.server_close()
