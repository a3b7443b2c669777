import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

# Each test gets the default float32 floatx and a fixed global seed, whatever ran before it.


@pytest.fixture(autouse=True)
def _fresh_state():
    import cnnlab
    threads, kernels, shards = cnnlab.config.threads(), cnnlab.config.kernels(), \
        cnnlab.config.shards()
    cnnlab.config.set_floatx("float32")
    cnnlab.seeding.set_random_seed(1234)
    yield
    cnnlab.config.set_floatx("float32")
    cnnlab.config.set_dtype_policy(None)
    cnnlab.config.set_threads(threads)
    cnnlab.config.set_kernels(kernels)          # CNNLAB_KERNELS=numpy runs stay on the reference
    cnnlab.config.set_shards(shards)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def digits_model_file(tmp_path_factory):
    """The article's CNN trained 2 epochs on the bundled digits (~97% test accuracy), saved."""
    import cnnlab
    from cnnlab.runs import new_run, run_settings
    settings = run_settings(epochs=2, batch_size=64)
    with cnnlab.seeding.seeded(settings["seed"]):
        model, train, _ = new_run(settings)
        model.fit(*train, batch_size=64, epochs=2, verbose=0)
    path = tmp_path_factory.mktemp("served") / "digits.cnnlab"
    model.save(path)
    return path


@pytest.fixture
def web_app(digits_model_file, tmp_path, monkeypatch):
    """A running `cnnlab serve` on a free loopback port: ``(base URL, App)``."""
    import threading

    from cnnlab import serve
    from cnnlab.models import load_model
    monkeypatch.setenv("CNNLAB_HOME", str(tmp_path / "home"))
    from web import TOKEN
    app = serve.App({"digits": (load_model(digits_model_file), str(digits_model_file))},
                    serve.models_dir(), token=TOKEN, data_root=tmp_path)
    server = serve.make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield server.url.rstrip("/"), app
    app.shutdown()
    if app.job is not None:
        app.job.join(timeout=60)
    server.shutdown()
    server.server_close()
