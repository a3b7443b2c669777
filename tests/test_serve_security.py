"""The web app answers only its user: forged Host headers, other origins, requests without the
token, training folders outside the data root, and uploads that would cost too much. Each
attack is tried with curl's means (raw headers) and, for cross-origin pages, from a real page in
Chromium that the user opens while signed in."""

import http.client
import io
import json
import threading
import time

import pytest
from PIL import Image
from test_serve_api import digit_png, post_json, request
from web import AUTH, TOKEN, signed_in


def raw(base, method, path, headers, body=b""):
    """(status, JSON) for a request with exactly these headers (Host included)."""
    host, port = base.split("//")[1].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for name, value in {"Content-Length": str(len(body)), **headers}.items():
        connection.putheader(name, value)
    connection.endheaders()
    connection.send(body)
    response = connection.getresponse()
    body = response.read()
    payload = json.loads(body) if response.getheader("Content-Type") == "application/json" \
        else body
    connection.close()
    return response.status, payload


@pytest.mark.parametrize("host, expected", [
    ("127.evil.example.com", 421), ("127.0.0.1.nip.io", 421), ("evil.example.com", 421),
    ("localhost.evil.example.com", 421), ("0x7f.evil", 421),
    ("127.0.0.1", 200), ("localhost", 200), ("127.0.0.2", 200), ("[::1]", 200),
])
def test_only_loopback_names_are_answered(web_app, host, expected):
    base, _ = web_app
    port = base.rsplit(":", 1)[1]
    status, payload = raw(base, "GET", "/api/models", {"Host": f"{host}:{port}", **AUTH})
    assert status == expected, payload


def test_a_forged_host_cannot_start_a_run(web_app):
    base, app = web_app
    status, _ = raw(base, "POST", "/api/train", {"Host": "127.0.0.1.nip.io", **AUTH,
                                                 "Content-Type": "application/json"}, b"{}")
    assert status == 421 and app.job is None


def test_every_api_request_needs_the_token(web_app):
    """Without it: refused before any work (a cross-site text/plain POST needs no preflight);
    with a wrong one too; pages and their scripts stay public."""
    base, app = web_app
    host = {"Host": base.split("//")[1]}
    drawing = digit_png("1")
    for path, kind in (("/api/detect", "text/plain"), ("/api/predict", "text/plain"),
                       ("/api/video", "text/plain"), ("/api/predict", "image/png")):
        status, payload = raw(base, "POST", path, {**host, "Content-Type": kind}, drawing)
        assert status == 403 and "token" in payload["error"], (path, payload)
    status, _ = raw(base, "POST", "/api/predict", {**host, "Content-Type": "image/png",
                                                   "X-Cnnlab-Token": TOKEN + "x"}, drawing)
    assert status == 403
    assert raw(base, "GET", "/api/models", host)[0] == 403
    assert raw(base, "GET", "/api/models", {**host, "Cookie": f"other=1; cnnlab-token-"
                                            f"{base.rsplit(':', 1)[1]}={TOKEN}"})[0] == 200
    assert raw(base, "GET", f"/api/models?token={TOKEN}", host)[0] == 200
    assert raw(base, "GET", "/static/common.js", host)[0] == 200
    # a run cannot be stopped by an empty POST without the token
    assert post_json(base, "/api/train", {"epochs": 2})[0] == 202
    status, _ = raw(base, "POST", "/api/train/stop", host)
    assert status == 403 and not app.job.stop_requested.is_set()
    assert post_json(base, "/api/train/stop", {})[0] == 200


def test_opening_the_printed_address_sets_a_strict_cookie(web_app):
    base, _ = web_app
    status, _, headers = request(base, f"/?token={TOKEN}", headers={"X-Cnnlab-Token": ""})
    cookie = headers["Set-Cookie"]
    assert status == 200 and f"={TOKEN}" in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    _, _, headers = request(base, "/?token=wrong")
    assert "Set-Cookie" not in headers


@pytest.mark.parametrize("origin", ["http://evil.example.com", "http://127.0.0.1:1",
                                    "null", "https://127.0.0.1"])
def test_other_origins_are_refused_even_with_the_token(web_app, origin):
    base, _ = web_app
    host = {"Host": base.split("//")[1], "Content-Type": "image/png", **AUTH}
    status, payload = raw(base, "POST", "/api/predict", {**host, "Origin": origin},
                          digit_png("1"))
    assert status == 403 and "other origins" in payload["error"]
    status, _ = raw(base, "POST", "/api/predict", {**host, "Origin": base}, digit_png("1"))
    assert status == 200
    status, _ = raw(base, "GET", "/api/models", {**host, "Sec-Fetch-Site": "same-site"})
    assert status == 403


def test_training_folders_must_lie_under_the_data_root(web_app, tmp_path):
    """Missing and outside get the same answer: a request learns nothing of other paths."""
    base, app = web_app
    answers = []
    for folder in ("../../../../etc", "/etc", str(tmp_path / "missing"), "../" * 8 + "tmp"):
        status, payload, _ = post_json(base, "/api/train", {"data": folder})
        answers.append((status, payload["error"].replace(repr(folder), "FOLDER")))
    assert len(set(answers)) == 1 and answers[0][0] == 404, answers
    assert app.job is None


def test_without_a_data_root_only_the_bundled_digits_train(digits_model_file, tmp_path,
                                                            monkeypatch):
    from cnnlab import serve
    from cnnlab.models import load_model
    monkeypatch.setenv("CNNLAB_HOME", str(tmp_path / "home"))
    app = serve.App({"digits": (load_model(digits_model_file), "d.cnnlab")}, serve.models_dir(),
                    token=TOKEN)
    server = serve.make_server(app, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    try:
        status, payload, _ = post_json(server.url.rstrip("/"), "/api/train",
                                       {"data": str(tmp_path)})
        assert status == 403 and "--data-root" in payload["error"] and app.job is None
    finally:
        server.shutdown()
        server.server_close()


def test_work_is_bounded_and_refused_with_413(web_app):
    """A blank 4000x4000 PNG (a few KB) once cost 8 GB in detection: refused by its size."""
    base, _ = web_app
    blank = io.BytesIO()
    Image.new("L", (4000, 4000)).save(blank, "PNG")
    assert len(blank.getvalue()) < 100_000
    status, payload, _ = request(base, "/api/detect", blank.getvalue(), "image/png")
    assert status == 413 and "at most 2,088,960" in payload["error"], payload


@pytest.mark.parametrize("number", ["²", "٣", "1e3", "-1", " 1"])
def test_odd_numbers_in_the_query_get_a_4xx(web_app, number):
    from urllib.parse import quote
    base, _ = web_app
    for path in (f"/api/train/frame?number={quote(number)}",
                 f"/api/inside/filter?model=digits&layer=conv2d&filter={quote(number)}",
                 f"/api/inside/image?model=digits&image={quote(number)}"):
        status, payload, _ = request(base, path)
        assert 400 <= status < 500, (path, payload)


def test_answers_name_no_server_paths(web_app, digits_model_file):
    base, _ = web_app
    listing = request(base, "/api/models")[1]
    assert str(digits_model_file.parent) not in json.dumps(listing)
    status, payload, _ = request(base, "/api/video?detect=no", b"not a video", "video/mp4")
    assert status == 400 and "/tmp" not in payload["error"] and "the uploaded video" in \
        payload["error"]


def _hostile(log_lines):
    """The API requests in the server's log, less the /train page's own status polls: the page
    the user left open may poll once more after the log was cleared (seen in CI), and the
    hostile page never asks for the status."""
    return [line for line in log_lines if "/api/" in line and "GET /api/train/status" not in line]


def test_a_page_of_another_origin_cannot_use_the_server_from_the_users_browser(web_app):
    """The user has the app open (signed in: the cookie is set). A page on another origin,
    another port of the same 127.0.0.1 (same site, so even a SameSite cookie goes with it),
    fires a text/plain POST at /api/predict and /api/detect, a form POST at /api/train/stop,
    a no-cors POST at /api/train and an <img> GET of the API: every one is refused, and no run
    starts."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from browser import browser
    from test_serve_browser import wait_for
    base, app = web_app
    seen = []
    app.log = seen.append
    hostile = f"""<!doctype html><title>evil</title>
<form id=f method=POST action="{base}/api/train/stop" enctype="text/plain" target=sink>
<input name=x value=y></form><iframe name=sink></iframe>
<img src="{base}/api/inside/embedding?model=digits">
<script>
const hits = [
  fetch("{base}/api/predict", {{method: "POST", mode: "no-cors", credentials: "include",
        headers: {{"Content-Type": "text/plain"}}, body: "x"}}),
  fetch("{base}/api/detect", {{method: "POST", mode: "no-cors", credentials: "include",
        headers: {{"Content-Type": "text/plain"}}, body: "x"}}),
  fetch("{base}/api/train", {{method: "POST", mode: "no-cors", credentials: "include",
        headers: {{"Content-Type": "text/plain"}}, body: '{{"epochs": 1}}'}}),
];
document.getElementById("f").submit();
Promise.allSettled(hits).then(() => {{ document.title = "done"; }});
</script>""".encode()

    class Evil(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(hostile)))
            self.end_headers()
            self.wfile.write(hostile)

        def log_message(self, *args):
            pass

    evil = ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    driver = browser()
    try:
        driver.get(signed_in(base, "/train"))          # the user, signed in
        assert request(base, "/api/train/status")[0] == 200
        seen.clear()
        driver.get(f"http://127.0.0.1:{evil.server_address[1]}/")
        wait_for(driver, "document.title === 'done'", timeout=30)
        deadline = time.monotonic() + 10            # the form's POST may land after the fetches
        while len(_hostile(seen)) < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        driver.quit()
        evil.shutdown()
        evil.server_close()
    api_lines = _hostile(seen)
    assert len(api_lines) >= 5, seen
    assert all('" 403 ' in line or '" 421 ' in line for line in api_lines), api_lines
    assert app.job is None
