"""`cnnlab serve` as a user runs it: with no model it trains one on the bundled digits on first
start (showing progress) and reuses it after; it binds to loopback, prints the URL, answers, and
stops cleanly on Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request


def _ctrl_c_stops_it():
    """In the child: SIGINT's default action, as a process started from a terminal has. Run in
    the background of a non-interactive shell (``pytest &``), the tests inherit SIGINT ignored,
    and Python then installs no KeyboardInterrupt handler: the server would rightly ignore the
    Ctrl-C this test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args, home):
    env = {**os.environ, "CNNLAB_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "cnnlab", "serve", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=env, preexec_fn=_ctrl_c_stops_it)
    lines = []
    deadline = time.monotonic() + 300
    for line in process.stdout:
        lines.append(line)
        if "serving at" in line or time.monotonic() > deadline:
            break
    url = lines[-1].split("serving at ", 1)[1].split()[0] if "serving at" in lines[-1] else None
    return process, url, "".join(lines)


def api(url, path):
    """GET an API path of the server at the printed ``url`` (http://HOST:PORT/?token=...), with
    the token it printed; without it the server refuses (403)."""
    base, token = url.split("?token=")
    try:
        urllib.request.urlopen(base + path, timeout=30)
        raise AssertionError("the server answered without its token")
    except urllib.error.HTTPError as refused:
        assert refused.code == 403
    request = urllib.request.Request(base + path, headers={"X-Cnnlab-Token": token})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def stop(process):
    process.send_signal(signal.SIGINT)                                  # Ctrl-C
    try:
        rest, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:        # fail, never hang (SIGINT ignored by a parent shell)
        process.kill()
        raise AssertionError("cnnlab serve did not stop within 60 s of Ctrl-C") from None
    return process.returncode, rest


def test_serve_trains_on_first_start_then_reuses_the_model_and_stops_on_ctrl_c(tmp_path):
    process, url, output = start(["--port", "0", "--epochs", "1"], tmp_path)
    try:
        assert url and url.startswith("http://127.0.0.1:"), output
        assert "training the article's CNN on the bundled digits" in output
        assert "test accuracy" in output
        listing = api(url, "api/models")
        assert listing["default"] == "digits-article"
    finally:
        code, rest = stop(process)
    assert code == 0 and "stopped" in rest, rest
    assert (tmp_path / "models" / "digits-article.cnnlab").exists()
    # a model trained from the web app earlier is offered again; a broken file is left out
    import cnnlab
    cnnlab.zoo.get("lenet5").save(tmp_path / "models" / "lenet5-1.cnnlab")
    (tmp_path / "models" / "broken-2.cnnlab").write_bytes(b"not a model")
    process, url, output = start(["--port", "0"], tmp_path)            # second start: no training
    try:
        assert url and "training" not in output, output
        assert "not offering broken-2.cnnlab" in output
        listing = api(url, "api/models")
        assert listing["default"] == "digits-article"
        assert [m["name"] for m in listing["models"]] == ["digits-article", "lenet5-1"]
    finally:
        assert stop(process)[0] == 0


def test_serve_explains_a_port_it_cannot_use(tmp_path, digits_model_file):
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "cnnlab", "serve", str(digits_model_file),
                                 "--port", str(port)], capture_output=True, text=True,
                                env={**os.environ, "CNNLAB_HOME": str(tmp_path)}, timeout=60)
    assert result.returncode == 1
    assert f"Cannot listen on 127.0.0.1:{port}" in result.stderr
    result = subprocess.run([sys.executable, "-m", "cnnlab", "serve", str(tmp_path / "none.cnnlab")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "none.cnnlab" in result.stderr
