"""A local web app: draw a digit and watch every layer respond, train live, step through
convolution and pooling. Works with any model cnnlab trains.

    cnnlab serve [MODEL.cnnlab] [--host 127.0.0.1] [--port 8000]

``api`` holds the JSON API (no HTTP), ``jobs`` the background training run, ``server`` the
routing on the standard library's threaded HTTP server, and ``static/`` the pages (plain HTML,
CSS and JavaScript: no build step, nothing fetched from elsewhere).
"""

from __future__ import annotations

from pathlib import Path

from cnnlab import config
from cnnlab.serve.jobs import KEPT_RUNS
from cnnlab.serve.server import App, make_server, run

__all__ = ["App", "make_server", "run", "default_model", "models_dir", "saved_models"]

#: models trained from the web app in earlier sessions that are offered again, newest first:
#: as many as the server keeps (older runs' files are removed)
MAX_SAVED_MODELS = KEPT_RUNS

DEFAULT_MODEL_FILE = "digits-article.cnnlab"


def models_dir() -> Path:
    """Where the web app keeps models: ``$CNNLAB_HOME/models`` (default ``~/.cache/cnnlab``)."""
    return config.home_dir() / "models"


def default_model(epochs: int = 3, verbose="auto", say=print):
    """The article's CNN trained on the bundled digits: loaded if trained before, else trained
    now (about half a minute on two cores) and saved for next time. ``(model, path)``."""
    from cnnlab import seeding
    from cnnlab.models import load_model
    from cnnlab.runs import fit_run, new_run, run_settings
    path = models_dir() / DEFAULT_MODEL_FILE
    if path.exists():
        return load_model(path), path
    settings = run_settings(epochs=epochs)
    say(f"cnnlab: no model yet; training the article's CNN on the bundled digits "
        f"({epochs} epoch{'s' * (epochs != 1)}) -> {path}")
    with seeding.seeded(settings["seed"]):
        model, train, test = new_run(settings)
        fit_run(model, settings, train, test, verbose=verbose)
    _, accuracy = model.evaluate(*test, verbose=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    say(f"cnnlab: test accuracy {accuracy:.2%}; saved {path}")
    return model, path


def saved_models(skip=(), say=print) -> dict:
    """Models trained from the web app before (``$CNNLAB_HOME/models/*.cnnlab``), newest first,
    at most ``MAX_SAVED_MODELS``: ``{name: (model, path)}``. A file that does not load is left
    out with a one-line warning; ``skip``: paths already served."""
    from cnnlab.errors import CnnlabError
    from cnnlab.models import load_model
    skipped = {Path(p).resolve() for p in skip}
    paths = sorted((p for p in models_dir().glob("*.cnnlab") if p.resolve() not in skipped),
                   key=lambda p: p.stat().st_mtime, reverse=True)[:MAX_SAVED_MODELS]
    found = {}
    for path in paths:
        try:
            found[path.stem] = (load_model(path), str(path))
        except CnnlabError as exc:
            say(f"cnnlab: warning: not offering {path.name}: {exc}")
    return found
