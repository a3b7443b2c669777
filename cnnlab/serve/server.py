"""The HTTP side of the web app, on the standard library's threaded server.

One thread per connection, so two browsers, a live event stream and a training run go on at
once. Everything a request can get wrong is answered with a 4xx and a JSON body
``{"error": "..."}``; an unexpected failure is a 500 with JSON too, and the server goes on.
Bodies are limited (:data:`MAX_IMAGE_BYTES`, :data:`MAX_JSON_BYTES`) before they are read.

How it answers only its user (Jupyter's model):

- **A token**, drawn at start and printed in the address ``cnnlab serve`` shows. Opening a page
  with ``?token=`` sets it as a cookie (``HttpOnly; SameSite=Strict``, so no other site's page
  sends it); every ``/api/`` request must carry it, as that cookie, an ``X-Cnnlab-Token`` header
  or a ``?token=`` parameter. The pages themselves (HTML, CSS, JS) are public.
- **Origin**: a request whose ``Origin`` header is not this server's own is refused, whatever it
  carries: another port of localhost is another origin. So is an API request that the browser
  marks as coming from another page (``Sec-Fetch-Site``), which covers the GETs of ``<img>``.
- **Host**: only ``localhost``, literal loopback addresses and the ``--host`` name (bound beyond
  loopback: also literal IP addresses), so no DNS name (``127.0.0.1.nip.io``) can be rebound to
  it.
- JSON endpoints require ``Content-Type: application/json``, which a cross-site form cannot send.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import mimetypes
import socket
import sys
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from cnnlab.serve import api
from cnnlab.serve.api import ApiError, is_count
from cnnlab.serve.app import App

MAX_IMAGE_BYTES = 8 * 2**20
MAX_JSON_BYTES = 64 * 2**10
MAX_VIDEO_BYTES = 64 * 2**20
#: an idle event stream sends a comment this often, so proxies and browsers keep it open
KEEPALIVE_SECONDS = 15.0
PAGES = {"/": "draw.html", "/draw": "draw.html", "/train": "train.html",
         "/explain": "explain.html", "/search": "search.html", "/detect": "detect.html",
         "/inside": "inside.html", "/video": "video.html"}
MAX_SEARCH_RESULTS = 50


def static_dir() -> Path:
    return Path(str(resources.files("cnnlab.serve").joinpath("static")))


class Server(ThreadingHTTPServer):
    daemon_threads = True            # open event streams must not keep the process alive
    allow_reuse_address = True
    # socketserver's default backlog of 5 refuses connections when many browsers (or a load
    # test's 200 clients) connect at once; the kernel caps this at net.core.somaxconn
    request_queue_size = 1024

    def __init__(self, address, app: App):
        self.app = app
        super().__init__(address, Handler)
        host = self.server_address[0]
        self.loopback_only = ipaddress.ip_address(host).is_loopback
        self.port = self.server_address[1]
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{self.port}/"
        #: the address to open: the token comes with it, once, and the page keeps it as a cookie
        self.login_url = f"{self.url}?token={quote(app.token)}"
        #: the names a request's Host may give (never a DNS name that could be rebound here)
        self.host_names = {"localhost", str(address[0]).lower()}
        if not self.loopback_only:
            self.host_names.add(socket.gethostname().lower())
        self.cookie = f"cnnlab-token-{self.port}"      # one per port: two servers, two tokens

    def is_token(self, given: str | None) -> bool:
        """Whether ``given`` is this server's token (compared in constant time)."""
        return given is not None and hmac.compare_digest(given.encode(), self.app.token.encode())

    def allows_host(self, host: str) -> bool:
        if host in self.host_names:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return address.is_loopback or not self.loopback_only


class Handler(BaseHTTPRequestHandler):
    server: Server
    server_version = "cnnlab"
    timeout = 60                     # a client that stops sending mid-request frees its thread

    # --- answers ---------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str, extra=()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, payload, status: int = 200) -> None:
        self._send(status, json.dumps(payload, allow_nan=False).encode(), "application/json")

    def send_error(self, code, message=None, explain=None):
        """Also used by the standard library for malformed requests: answer in JSON."""
        self.close_connection = True
        if code == HTTPStatus.NOT_IMPLEMENTED:      # the standard library's 'unknown method'
            code, message = 405, f"Method {self.command!r} is not used here; use GET or POST."
        try:
            text = message or HTTPStatus(code).phrase
        except ValueError:
            text = message or "error"
        try:
            self._json({"error": text}, code)
        except OSError:
            pass

    def log_message(self, fmt, *args):
        if self.server.app.log:
            self.server.app.log(f"{self.address_string()} {fmt % args}")

    # --- requests --------------------------------------------------------------------------------
    def do_GET(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def _dispatch(self) -> None:
        try:
            self._check_host()
            self._check_origin()
            self._route()
        except ApiError as exc:
            self.send_error(exc.status, exc.message)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:            # noqa: BLE001 - one bad request must not stop the server
            traceback.print_exc(file=sys.stderr)
            self.send_error(500, "Internal error; the server's log has the details.")

    def _check_host(self) -> None:
        host = (self.headers.get("Host") or "").strip().lower()
        host = host[1:host.index("]")] if host.startswith("[") and "]" in host \
            else host.rsplit(":", 1)[0]
        if not self.server.allows_host(host):
            raise ApiError(421, f"This server answers requests for localhost, loopback "
                                f"addresses and {sorted(self.server.host_names)} only; the "
                                f"request was for {host!r}.")

    def _check_origin(self) -> None:
        """A page of another origin (another site, or another port here) may not use the
        server, whatever it sends: browsers set Origin on cross-origin requests other than
        GETs, and Sec-Fetch-Site on every request (an <img> of another page included)."""
        site = self.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none") \
                and self.path.startswith("/api/"):
            raise ApiError(403, f"Requests from pages of other origins are refused; this one "
                                f"was {site}.")
        origin = self.headers.get("Origin")
        if origin is None:
            return
        parts = urlsplit(origin)
        try:
            port = parts.port
        except ValueError:
            port = None
        if not (parts.scheme == "http" and port == self.server.port
                and self.server.allows_host((parts.hostname or "").lower())):
            raise ApiError(403, f"Requests from pages of other origins are refused; this one "
                                f"came from {origin!r}.")

    def _check_token(self, query) -> None:
        given = self.headers.get("X-Cnnlab-Token") or query.get("token", [None])[0]
        if given is None:
            from http.cookies import CookieError, SimpleCookie
            try:
                cookie = SimpleCookie(self.headers.get("Cookie") or "")
            except CookieError:
                cookie = {}
            given = cookie[self.server.cookie].value if self.server.cookie in cookie else None
        if not self.server.is_token(given):
            raise ApiError(403, "This server needs its token: open the address cnnlab serve "
                                "printed (it ends in ?token=...), or send the token as an "
                                "X-Cnnlab-Token header.")

    def _route(self) -> None:
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        method = "GET" if self.command == "HEAD" else self.command
        app = self.server.app
        if path in PAGES or path.startswith("/static/"):
            self._require(method, "GET")
            return self._static(PAGES.get(path) or path[len("/static/"):], query)
        if not path.startswith("/api/"):
            raise ApiError(404, f"No page at {path!r}; the pages are /, /train, /explain, "
                                f"/search, /detect, /inside and /video.")
        self._check_token(query)
        if path == "/api/models":
            self._require(method, "GET")
            return self._json(app.models())
        if path.startswith("/api/models/") and path.endswith("/summary"):
            self._require(method, "GET")
            name = unquote(path[len("/api/models/"):-len("/summary")])
            return self._json(api.summary(app.model(name)))
        if path == "/api/predict":
            self._require(method, "POST")
            served = app.model(query.get("model", [None])[0])
            invert = query.get("invert", ["auto"])[0]
            if invert not in ("auto", "yes", "no"):
                raise ApiError(400, f"'invert' must be auto, yes or no. Received: {invert!r}")
            body = self._body(MAX_IMAGE_BYTES)
            return self._json(api.predict(served, body,
                                          {"auto": "auto", "yes": True, "no": False}[invert]))
        if path == "/api/explain/conv":
            self._require(method, "POST")
            return self._json(api.explain_conv(self._json_body()))
        if path == "/api/explain/pool":
            self._require(method, "POST")
            return self._json(api.explain_pool(self._json_body()))
        if path == "/api/detect/info":
            self._require(method, "GET")
            return self._json(app.detector.describe())
        if path == "/api/detect":
            self._require(method, "POST")
            return self._json(app.detector.query(self._body(MAX_IMAGE_BYTES),
                                                 self._threshold(query)))
        if path.startswith("/api/search"):
            return self._search(path, query, method, app)
        if path == "/api/video":
            self._require(method, "POST")
            detecting = query.get("detect", ["no"])[0]
            if detecting not in ("yes", "no"):
                raise ApiError(400, f"'detect' must be yes or no. Received: {detecting!r}")
            threshold = self._threshold(query)
            if detecting == "yes":
                model, name, verifier = app.detector.model, None, app.detector.verifier
            else:
                served = app.model(query.get("model", [None])[0])
                model, name, verifier = served.model, served.name, None
            return self._json(app.video.query(model, self._body(MAX_VIDEO_BYTES),
                                              detecting == "yes", threshold, name, verifier))
        if path.startswith("/api/video/result/"):
            self._require(method, "GET")
            body, kind = app.video.file(path[len("/api/video/result/"):])
            return self._send(200, body, kind)
        if path.startswith("/api/inside/"):
            return self._inside(path[len("/api/inside/"):], query, method, app)
        if path == "/api/train":
            self._require(method, "POST")
            return self._json(app.start_training(self._json_body()), 202)
        if path == "/api/train/stop":
            self._require(method, "POST")
            self._json_body(allow_empty=True)
            return self._json(app.stop_training())
        if path == "/api/train/status":
            self._require(method, "GET")
            return self._json(app.training_status())
        if path == "/api/train/frame":
            self._require(method, "GET")
            return self._training_frame(query.get("number", [""])[0], app)
        if path == "/api/train/events":
            self._require(method, "GET")
            return self._events()
        raise ApiError(404, f"No API endpoint {path!r}; the README lists them.")

    def _search(self, path, query, method, app) -> None:
        if path == "/api/search/info":
            self._require(method, "GET")
            return self._json(app.search.describe() if app.search else {"indexed": 0})
        if app.search is None:
            raise ApiError(404, "This server has no photo index: make one with cnnlab index "
                                "FOLDER --out FILE, then start cnnlab serve --index FILE.")
        if path == "/api/search":
            self._require(method, "POST")
            k = query.get("k", ["8"])[0]
            if not is_count(k) or not 1 <= int(k) <= MAX_SEARCH_RESULTS:
                raise ApiError(400, f"'k' must be 1 to {MAX_SEARCH_RESULTS}. Received: {k!r}")
            return self._json(app.search.query(self._body(MAX_IMAGE_BYTES), int(k)))
        if path.startswith("/api/search/image/"):
            self._require(method, "GET")
            body, kind = app.search.image_file(path[len("/api/search/image/"):])
            return self._send(200, body, kind)
        raise ApiError(404, f"No API endpoint {path!r}; the README lists them.")

    @staticmethod
    def _threshold(query) -> float | None:
        """The query's threshold, or None: the detector's own."""
        if "threshold" not in query:
            return None
        threshold = query["threshold"][0]
        try:
            value = float(threshold)
        except ValueError:
            value = -1.0
        if not 0 < value < 1:
            raise ApiError(400, f"'threshold' must be between 0 and 1. Received: {threshold!r}")
        return value

    def _training_frame(self, number: str, app) -> None:
        frame = app.job.frame(int(number)) if app.job and is_count(number) else None
        if frame is None:
            count = len(app.job.frames) if app.job else 0
            raise ApiError(404, f"No timeline frame {number!r}: the run has {count} so far "
                                f"(number 0 to {count - 1}).")
        return self._send(200, frame, "image/png")

    def _inside(self, what, query, method, app) -> None:
        served = app.model(query.get("model", [None])[0])
        layer = query.get("layer", [""])[0]
        number = query.get("filter", [""])[0]
        if what == "map":
            self._require(method, "POST")
            return self._json(app.inside.map(served, layer, number, self._body(MAX_IMAGE_BYTES)))
        self._require(method, "GET")
        if what == "layers":
            return self._json(app.inside.layers(served))
        if what == "filter":
            return self._json(app.inside.filter(served, layer, number))
        if what == "embedding":
            return self._json(app.inside.embedding(served))
        if what == "image":
            return self._json(app.inside.image(served, query.get("image", [""])[0]))
        raise ApiError(404, f"No API endpoint /api/inside/{what}; the README lists them.")

    def _require(self, method: str, expected: str) -> None:
        if method != expected:
            raise ApiError(405, f"{self.path} takes {expected}, not {method}.")

    def _body(self, limit: int) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            raise ApiError(411, "Send the body with a Content-Length, not chunked.")
        length = self.headers.get("Content-Length")
        if length is None:
            raise ApiError(411, "The request needs a Content-Length header.")
        try:
            size = int(length)
        except ValueError:
            raise ApiError(400, f"Content-Length must be a number. Received: {length!r}") from None
        if size < 0:
            raise ApiError(400, f"Content-Length must not be negative. Received: {size}")
        if size > limit:
            raise ApiError(413, f"The body is {size:,} bytes; the limit here is {limit:,}.")
        body = self.rfile.read(size)
        if len(body) != size:
            raise ApiError(400, f"The body ended after {len(body):,} of {size:,} bytes.")
        return body

    def _json_body(self, allow_empty: bool = False) -> dict:
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        body = self._body(MAX_JSON_BYTES)
        if allow_empty and not body:
            return {}
        if kind != "application/json":
            raise ApiError(415, f"Send JSON with Content-Type: application/json. "
                                f"Received: {kind or 'no Content-Type'}.")
        try:
            value = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ApiError(400, f"The body is not valid JSON ({exc}).") from None
        if not isinstance(value, dict):
            raise ApiError(400, f"Expected a JSON object {{...}}; received a "
                                f"{type(value).__name__}.")
        return value

    def _static(self, relative: str, query) -> None:
        """A file from the package's static folder; nothing outside it, whatever the path says.
        A page opened with the right ``?token=`` keeps it as a cookie for its API requests."""
        relative = unquote(relative)
        parts = relative.replace("\\", "/").split("/")
        if "\x00" in relative or ".." in parts or relative.startswith("/") or ":" in relative:
            raise ApiError(403, "That path leaves the static folder.")
        root = static_dir().resolve()
        target = (root / relative).resolve()
        if root not in target.parents or not target.is_file():
            raise ApiError(404, f"No static file {relative!r}.")
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind in ("application/javascript", "image/svg+xml"):
            kind += "; charset=utf-8"
        security = [("Content-Security-Policy", "default-src 'self'; img-src 'self' data: blob:; "
                                                "style-src 'self'; script-src 'self'"),
                    ("X-Frame-Options", "DENY"), ("Referrer-Policy", "no-referrer")]
        token = query.get("token", [None])[0]
        if self.server.is_token(token):
            security.append(("Set-Cookie", f"{self.server.cookie}={token}; Path=/; HttpOnly; "
                                           f"SameSite=Strict"))
        self._send(200, target.read_bytes(), kind, security)

    def _events(self) -> None:
        """Server-sent events: the training status whenever it changes, until the run ends."""
        app = self.server.app
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        seen, points, validation = -1, 0, 0
        while True:
            job = app.job
            status = job.status(points, validation) if job is not None else app.training_status()
            if status["version"] != seen:
                seen = status["version"]
                points += len(status.get("points", ()))
                validation += len(status.get("validation", ()))
                self.wfile.write(f"data: {json.dumps(status)}\n\n".encode())
                self.wfile.flush()
            if job is None or (job.finished and app.job is job):
                self.wfile.write(b"event: end\ndata: {}\n\n")
                self.wfile.flush()
                return
            if not job.wait_for_change(seen, KEEPALIVE_SECONDS):
                self.wfile.write(b": keepalive\n\n")
                self.wfile.flush()


def make_server(app: App, host: str = "127.0.0.1", port: int = 8000) -> Server:
    return Server((host, port), app)


def run(server: Server, say=print) -> None:
    """Serve until Ctrl-C; then stop any training run and close the socket."""
    say(f"cnnlab: serving at {server.login_url}  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        say("\ncnnlab: stopping")
    finally:
        server.app.shutdown()
        server.server_close()
    say("cnnlab: stopped")
