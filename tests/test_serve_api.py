"""The web app's JSON API over real HTTP: answers, and a 4xx with a JSON error for every kind of
bad input (non-image, oversized, bad JSON, unknown model, paths out of the static folder,
malformed requests), concurrency, and training while predicting."""

import http.client
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image, ImageDraw
from web import AUTH

import cnnlab
from cnnlab.engine.conv import conv2d_forward
from cnnlab.serve import api as serve_api
from cnnlab.serve.server import MAX_IMAGE_BYTES, MAX_JSON_BYTES


def request(base, path, body=None, content_type=None, method=None, headers=None):
    """(status, parsed JSON or raw bytes, headers) for one request; errors are answers too."""
    all_headers = {**AUTH, **(headers or {})}
    if content_type:
        all_headers["Content-Type"] = content_type
    req = urllib.request.Request(base + path, data=body, headers=all_headers,
                                 method=method or ("POST" if body is not None else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            status, raw, got = response.status, response.read(), response.headers
    except urllib.error.HTTPError as exc:
        status, raw, got = exc.code, exc.read(), exc.headers
    if got.get("Content-Type", "").startswith("application/json"):
        return status, json.loads(raw), got
    return status, raw, got


def post_json(base, path, payload):
    return request(base, path, json.dumps(payload).encode(), "application/json")


def digit_png(kind: str, size=280) -> bytes:
    """A white-on-black drawing of a '1' (a vertical bar) or a '0' (an ellipse)."""
    image = Image.new("L", (size, size))
    draw = ImageDraw.Draw(image)
    if kind == "1":
        draw.line([(size // 2, size // 7), (size // 2, size * 6 // 7)], fill=255, width=size // 14)
    else:
        draw.ellipse([(size * 2 // 7, size // 6), (size * 5 // 7, size * 5 // 6)], outline=255,
                     width=size // 14)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def raw_exchange(base, data: bytes) -> bytes:
    """Send bytes on a bare socket and return whatever comes back."""
    host, port = base.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


# --- answers -------------------------------------------------------------------------------------
def test_pages_and_static_files_are_served_from_the_package(web_app):
    base, _ = web_app
    for page, marker in (("/", b"Draw a digit"), ("/train", b"Train a model"),
                         ("/explain", b"How convolution")):
        status, body, headers = request(base, page)
        assert status == 200 and marker in body
        assert headers["Content-Type"].startswith("text/html")
        assert b"http://" not in body and b"https://" not in body      # nothing from a CDN
    status, body, headers = request(base, "/static/draw.js")
    assert status == 200 and "javascript" in headers["Content-Type"]
    assert "default-src 'self'" in headers["Content-Security-Policy"]


def test_predict_classifies_drawings_and_returns_every_layers_activations(web_app):
    base, app = web_app
    model = app.model("digits").model
    status, one, _ = request(base, "/api/predict?model=digits", digit_png("1"), "image/png")
    assert status == 200
    _, zero, _ = request(base, "/api/predict", digit_png("0"), "image/png")
    assert one["top"]["name"] == "1" and zero["top"]["name"] == "0"
    assert abs(sum(one["probabilities"]) - 1) < 1e-5
    assert [layer["name"] for layer in one["layers"]] == [layer.name for layer in model.layers]
    # the activations are the model's own, for exactly the input it reports having seen
    seen = np.frombuffer(__import__("base64").b64decode(one["input"]["data"]), np.uint8)
    x = (seen.reshape(1, 28, 28, 1) / 255).astype(np.float32)
    expected = model.forward_all(x)
    for layer, out in zip(one["layers"], expected):
        assert layer["shape"] == list(out.shape[1:])
        maps = out[0].reshape(-1, out.shape[-1]).T if out.ndim == 4 else out[0][None]
        np.testing.assert_allclose(layer["min"], maps.min(axis=1), rtol=2e-2, atol=2e-2)
        np.testing.assert_allclose(layer["max"], maps.max(axis=1), rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(one["probabilities"], expected[-1][0], atol=1e-2)
    assert one["timing_ms"]["total"] > 0


def test_encoded_maps_are_each_scaled_from_their_min_to_their_max():
    values = np.arange(2 * 3 * 2, dtype=np.float64).reshape(2, 3, 2)
    values[..., 1] = 5.0                                               # a constant map
    encoded = serve_api.encode_activation(values)
    data = np.frombuffer(__import__("base64").b64decode(encoded["data"]), np.uint8)
    maps = data.reshape(2, 2, 3)                                       # (C, H, W)
    assert maps[0].min() == 0 and maps[0].max() == 255 and not maps[1].any()
    assert encoded["min"] == [0.0, 5.0] and encoded["max"] == [10.0, 5.0]


def test_summary_lists_layers_with_the_formula(web_app):
    base, _ = web_app
    status, summary, _ = request(base, "/api/models/digits/summary")
    assert status == 200
    assert summary["layers"][0]["formula"] == "24 = floor((28 - 5 + 2*0) / 1) + 1"
    assert summary["total_params"] == 1_087_106


def test_explain_numbers_come_from_the_engine(web_app):
    base, _ = web_app
    status, slide, _ = post_json(base, "/api/explain/conv",
                                 {"size": 7, "kernel": 3, "padding": 1, "stride": 2})
    assert status == 200
    padded, kernel = np.array(slide["padded"]), np.array(slide["kernel"])
    assert padded.shape == (9, 9) and not padded[0].any() and slide["formula"].startswith("4 = ")
    # an independent check: torch-free loop over windows of the padded input
    out = np.array(slide["output"])
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            window = padded[2 * r:2 * r + 3, 2 * c:2 * c + 3]
            assert out[r, c] == pytest.approx((window * kernel).sum())
            np.testing.assert_array_equal(slide["windows"][r][c], window)
    engine, _ = conv2d_forward(np.array(slide["image"])[None, :, :, None],
                               kernel[:, :, None, None], None, (2, 2), ((1, 1), (1, 1)))
    np.testing.assert_array_equal(out, engine[0, :, :, 0])
    status, pooled, _ = post_json(base, "/api/explain/pool", {"size": 4, "pool": 2, "kind": "max"})
    image = np.array(pooled["image"])
    assert np.array(pooled["output"]).tolist() == image.reshape(2, 2, 2, 2).max(axis=(1, 3)).tolist()


def test_models_list_and_train_status(web_app):
    base, _ = web_app
    status, listing, _ = request(base, "/api/models")
    assert status == 200 and listing["default"] == "digits"
    assert listing["models"][0]["input_shape"] == [28, 28, 1]
    assert set(listing["zoo"]) == set(cnnlab.zoo.MODELS)
    assert request(base, "/api/train/status")[1] == {"state": "idle", "version": 0}


# --- bad input: always a 4xx with a JSON error, and the server goes on --------------------------
BAD_REQUESTS = [
    # (path, body, content type, method, expected status, words in the error)
    ("/api/predict", b"this is not an image", "image/png", "POST", 415, "not an image"),
    ("/api/predict", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "image/png", "POST", 415, "not an image"),
    ("/api/predict", b"", "image/png", "POST", 400, "no body"),
    ("/api/predict?model=nope", digit_png("1"), "image/png", "POST", 404, "Unknown model"),
    ("/api/predict?invert=maybe", digit_png("1"), "image/png", "POST", 400, "invert"),
    ("/api/models/nope/summary", None, None, "GET", 404, "Unknown model"),
    ("/api/explain/conv", b'{"size": 6', "application/json", "POST", 400, "not valid JSON"),
    ("/api/explain/conv", b"[1, 2]", "application/json", "POST", 400, "JSON object"),
    ("/api/explain/conv", b'{"size": "big"}', "application/json", "POST", 400, "'size'"),
    ("/api/explain/conv", b'{"size": 3, "kernel": 7}', "application/json", "POST", 400, "size"),
    ("/api/explain/conv", b'{"size": 99}', "application/json", "POST", 400, "from 1 to 16"),
    ("/api/explain/conv", b'{"colour": 1}', "application/json", "POST", 400, "Unknown fields"),
    ("/api/explain/conv", b'{"size": 6}', "text/plain", "POST", 415, "application/json"),
    ("/api/explain/pool", b'{"kind": "median"}', "application/json", "POST", 400, "'kind'"),
    ("/api/explain/conv", b"\xff\xfe", "application/json", "POST", 400, "not valid JSON"),
    ("/api/explain/conv", b"[" * 100000 + b"]" * 100000, "application/json", "POST", 413,
     "limit"),
    ("/api/train", b'{"model": "resnet9000"}', "application/json", "POST", 404, "zoo model"),
    ("/api/train", b'{"data": "/no/such/folder"}', "application/json", "POST", 404,
     "no folder '/no/such/folder' under the data root"),
    ("/api/train", b'{"epochs": 0}', "application/json", "POST", 400, "'epochs'"),
    ("/api/train", b'{"lr": -1}', "application/json", "POST", 400, "'lr'"),
    ("/api/train/stop", b"", "application/json", "POST", 409, "No training run"),
    ("/api/predict", None, None, "GET", 405, "takes POST"),
    ("/api/nothing", None, None, "GET", 404, "No API endpoint"),
    ("/nothing", None, None, "GET", 404, "No page"),
    ("/static/../server.py", None, None, "GET", 403, "leaves the static folder"),
    ("/static/%2e%2e/server.py", None, None, "GET", 403, "leaves the static folder"),
    ("/static/..%2fserver.py", None, None, "GET", 403, "leaves the static folder"),
    ("/static/%2e%2e%5cserver.py", None, None, "GET", 403, "leaves the static folder"),
    ("/static//etc/passwd", None, None, "GET", 403, "leaves the static folder"),
    ("/static/missing.js", None, None, "GET", 404, "No static file"),
    ("/static/style.css%00.js", None, None, "GET", 403, "leaves the static folder"),
]


@pytest.mark.parametrize("path, body, content_type, method, expected, words", BAD_REQUESTS,
                         ids=[f"{m} {p[:40]} {ct}" for p, _, ct, m, _, _ in BAD_REQUESTS])
def test_bad_input_gets_a_4xx_json_error(web_app, path, body, content_type, method, expected,
                                          words):
    base, _ = web_app
    status, payload, _ = request(base, path, body, content_type, method)
    assert status == expected, payload
    assert isinstance(payload, dict) and words in payload["error"], payload
    assert request(base, "/api/models")[0] == 200                       # still serving


def test_oversized_bodies_are_refused_before_they_are_read(web_app):
    base, _ = web_app
    host, port = base.split("//")[1].split(":")
    for path, limit, kind in (("/api/predict", MAX_IMAGE_BYTES, "image/png"),
                              ("/api/explain/conv", MAX_JSON_BYTES, "application/json")):
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.putrequest("POST", path)
        connection.putheader("Content-Type", kind)
        connection.putheader("Content-Length", str(limit + 1))
        connection.putheader("X-Cnnlab-Token", AUTH["X-Cnnlab-Token"])
        connection.endheaders()
        connection.send(b"x" * 1000)                                   # and never the rest
        response = connection.getresponse()
        assert response.status == 413
        assert "limit" in json.loads(response.read())["error"]
        connection.close()
    # a huge image inside a small file (a decompression bomb) is refused from its header
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, "PNG")
    status, payload, _ = request(base, "/api/predict", bomb.getvalue(), "image/png")
    assert status == 400 and "limit" in payload["error"]


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
    b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",                 # no length
    b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n",
    b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ten\r\n\r\n",
    b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nshort",
    b"GET /api/models HTTP/1.1\r\nHost: evil.example\r\n\r\n",                # DNS rebinding
    b"BREW /api/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",                         # TLS to plain HTTP
])
def test_malformed_requests_never_kill_the_server(web_app, raw):
    base, _ = web_app
    answer = raw_exchange(base, raw)
    if answer.startswith(b"HTTP/"):
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500, answer[:200]
    if answer:              # a one-word request line is HTTP/0.9: a body without a status line
        assert b'{"error": ' in answer, answer[:200]
    assert request(base, "/api/models")[0] == 200


def test_concurrent_predictions_are_each_right(web_app):
    """Two browsers at once, many times over: every answer is the one for its own drawing."""
    base, _ = web_app
    drawings = {"1": digit_png("1"), "0": digit_png("0")}
    results, errors = [], []

    def client(kind):
        try:
            for _ in range(10):
                status, payload, _ = request(base, "/api/predict", drawings[kind], "image/png")
                results.append((kind, status, payload["top"]["name"]))
        except Exception as exc:                                       # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in "1010"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 40 and all(s == 200 and k == top for k, s, top in results)


def _wait_for(condition, timeout=120.0, every=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out")


def test_train_streams_events_predicts_meanwhile_stops_and_serves_the_result(web_app):
    base, app = web_app
    earlier = app.models_dir / "lenet5-1.cnnlab"          # saved by an earlier server
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"an earlier run's model")
    status, started, _ = post_json(base, "/api/train", {"model": "lenet5", "epochs": 3,
                                                         "batch_size": 32})
    assert status == 202 and started["model"] == "lenet5-2"
    assert post_json(base, "/api/train", {})[0] == 409                  # one run at a time
    # the event stream delivers status updates as training goes
    host, port = base.split("//")[1].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("GET", "/api/train/events", headers=AUTH)
    stream = connection.getresponse()
    assert stream.headers["Content-Type"] == "text/event-stream"
    updates = []
    while len(updates) < 3 or not updates[-1]["points"]:
        line = stream.fp.readline()
        if line.startswith(b"data: "):
            updates.append(json.loads(line[6:]))
    assert updates[-1]["state"] == "running" and updates[-1]["version"] > updates[0]["version"]
    # predictions go on while it trains
    assert request(base, "/api/predict", digit_png("1"), "image/png")[1]["top"]["name"] == "1"
    status, stopping, _ = post_json(base, "/api/train/stop", {})
    assert status == 200 and stopping["state"] in ("stopping", "stopped")
    while True:                                   # the stream ends when the run has ended
        line = stream.fp.readline()
        if not line or line.startswith(b"event: end"):
            break
        if line.startswith(b"data: "):
            updates.append(json.loads(line[6:]))
    connection.close()
    final = _wait_for(lambda: (s := request(base, "/api/train/status")[1])["state"] == "stopped"
                      and s)
    assert final["epoch"] == 1 and final["step"] < final["steps"]      # stopped mid-epoch
    assert final["points"] and all(np.isfinite(p["loss"]) for p in final["points"])
    # the stream sent each point once, as what was new since the last message
    streamed = []
    for update in updates:
        assert update["points_from"] == len(streamed)
        streamed += update["points"]
    assert streamed == final["points"] and len(updates[-1]["points"]) < len(streamed)
    # the trained model is saved and can be used for predictions
    listing = request(base, "/api/models")[1]
    assert "lenet5-2" in [m["name"] for m in listing["models"]]
    assert cnnlab.models.load_model(app.models_dir / final["saved_to"]).count_params() > 0
    assert earlier.read_bytes() == b"an earlier run's model"             # not overwritten
    status, payload, _ = request(base, "/api/predict?model=lenet5-2", digit_png("0"), "image/png")
    assert status == 200 and payload["model"] == "lenet5-2"


def test_training_errors_are_reported_not_raised(web_app, tmp_path):
    base, _ = web_app
    empty = tmp_path / "empty"
    empty.mkdir()
    status, _, _ = post_json(base, "/api/train", {"data": str(empty)})
    assert status == 202
    final = _wait_for(lambda: (s := request(base, "/api/train/status")[1])["state"] == "failed"
                      and s, timeout=30)
    assert final["error"]
    assert request(base, "/api/models")[0] == 200


def test_train_on_a_folder_of_colour_images_then_predict_with_class_names(web_app, tmp_path):
    """A user's own folder: RGB pictures of two classes; the result predicts class names."""
    rng = np.random.default_rng(0)
    for name, channel in (("red", 0), ("blue", 2)):
        (tmp_path / name).mkdir()
        for i in range(12):
            pixels = rng.integers(0, 60, (40, 40, 3), dtype=np.uint8)
            pixels[..., channel] = rng.integers(180, 255, (40, 40))
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    base, _ = web_app
    status, started, _ = post_json(base, "/api/train", {"model": "simple_convnet",
                                                         "data": str(tmp_path), "epochs": 2,
                                                         "batch_size": 8, "optimizer": "adam"})
    assert status == 202
    final = _wait_for(lambda: (s := request(base, "/api/train/status")[1])["state"] in
                      ("done", "failed") and s)
    assert final["state"] == "done", final["error"]
    assert len(final["validation"]) == 2
    listing = {m["name"]: m for m in request(base, "/api/models")[1]["models"]}
    assert listing[started["model"]]["classes"] == ["blue", "red"]
    assert listing[started["model"]]["input_shape"][-1] == 3
    picture = io.BytesIO()
    Image.new("RGB", (90, 60), (230, 20, 20)).save(picture, "JPEG")
    status, payload, _ = request(base, f"/api/predict?model={started['model']}",
                                 picture.getvalue(), "image/jpeg")
    assert status == 200 and payload["input"]["channels"] == 3
    assert payload["top"]["name"] in ("blue", "red")


def test_predict_on_a_graph_returns_every_node_merges_included():
    """The draw page lists every layer in topological order: for a graph, the join too."""
    from cnnlab import layers
    inputs = cnnlab.Input((28, 28, 1))
    a = layers.Conv2D(4, 3, padding="same", activation="relu", name="branch")(inputs)
    b = layers.Conv2D(4, 1, name="shortcut")(inputs)
    joined = layers.Concatenate(name="join")([a, b])
    out = layers.Dense(10, activation="softmax", name="head")(
        layers.GlobalAveragePooling2D(name="gap")(joined))
    served = serve_api.ServedModel("graph", cnnlab.Model(inputs, out), "test")
    answer = serve_api.predict(served, digit_png("1"))
    assert [entry["name"] for entry in answer["layers"]] == ["branch", "shortcut", "join", "gap",
                                                            "head"]
    join = answer["layers"][2]
    assert join["type"] == "Concatenate" and join["shape"] == [28, 28, 8] and join["count"] == 8
    assert abs(sum(answer["probabilities"]) - 1) < 1e-5


def test_the_readme_lists_every_api_endpoint_the_server_answers():
    """An unknown path's 404 says 'the README lists them': every route the server matches
    (``server.py``'s "/api/..." literals) is in the README's endpoint table."""
    import re
    from pathlib import Path

    from cnnlab.serve import server
    routes = set(re.findall(r'"(/api/[a-z/]+)"', Path(server.__file__).read_text())) - {"/api/"}
    readme = Path(__file__).resolve().parent.parent / "README.md"
    table = [line for line in readme.read_text().splitlines() if line.startswith("| `GET /api/")
             or line.startswith("| `POST /api/")]
    missing = [route for route in sorted(routes)
               if not any(f" {route}" in line.split("|")[1] for line in table)]
    assert not missing, missing
