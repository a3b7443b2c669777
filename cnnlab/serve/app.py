"""What the web app serves, shared by every request thread: the models, the one training run,
and the search, detection, Inside and video services. The HTTP side (``server.py``) routes
requests here; nothing here knows HTTP beyond an ``ApiError``'s status."""

from __future__ import annotations

import secrets
import threading
from pathlib import Path

from cnnlab.serve import api
from cnnlab.serve.api import ApiError, ServedModel
from cnnlab.serve.inside import InsideService
from cnnlab.serve.jobs import TrainingJob, parse_settings


class App:
    """The served models and the training run, shared by every request thread."""

    def __init__(self, models: dict, models_dir, default: str | None = None, log=None,
                 index=None, detector=None, token: str | None = None, data_root=None,
                 verifier=None):
        #: what every API request must carry; drawn here unless the caller chose one
        self.token = token or secrets.token_urlsafe(24)
        #: the folder under which POST /api/train may name training folders (None: none)
        self.data_root = None if data_root is None else Path(data_root).resolve()
        self._models = {name: ServedModel(name, model, source)
                        for name, (model, source) in models.items()}
        self.default = default or next(iter(self._models), None)
        self.models_dir = Path(models_dir)
        self.job: TrainingJob | None = None
        self._jobs_started = 0
        self._lock = threading.Lock()
        self.log = log
        self.search = api.SearchService(index) if index is not None else None
        self.detector = api.DetectService(detector, verifier)
        self.inside = InsideService(index)
        self.video = api.VideoService()

    def model(self, name: str | None) -> ServedModel:
        name = name or self.default
        with self._lock:
            served = self._models.get(name)
            known = sorted(self._models)
        if served is None:
            raise ApiError(404, f"Unknown model {name!r}; this server has {known}.")
        return served

    def add_model(self, name: str, model, source: str) -> None:
        with self._lock:
            self._models[name] = ServedModel(name, model, source)

    def models(self) -> dict:
        from cnnlab import zoo
        with self._lock:
            served = list(self._models.values())
        return {"default": self.default, "models": [m.describe() for m in served],
                "zoo": sorted(zoo.MODELS)}

    def start_training(self, params: dict) -> dict:
        given = parse_settings(params, self.data_root)
        with self._lock:
            if self.job is not None and not self.job.finished:
                raise ApiError(409, f"A training run ({self.job.model_name}) is already going; "
                                    f"stop it first (POST /api/train/stop).")
            # never overwrite a model saved by an earlier run (or an earlier server)
            number = self._jobs_started + 1
            zoo_name = given["model"]
            while (f"{zoo_name}-{number}" in self._models
                   or (self.models_dir / f"{zoo_name}-{number}.cnnlab").exists()):
                number += 1
            self._jobs_started = number
            self.job = TrainingJob(given, number, self.models_dir, self.add_model)
            job = self.job
        job.start()
        return job.status()

    def stop_training(self) -> dict:
        job = self.job
        if job is None:
            raise ApiError(409, "No training run to stop; start one with POST /api/train.")
        job.stop()
        return job.status()

    def training_status(self) -> dict:
        job = self.job
        return job.status() if job is not None else {"state": "idle", "version": 0}

    def shutdown(self) -> None:
        if self.job is not None:
            self.job.stop()
