"""Serving state: the loaded active version of every model, and the last version reviewed.

Which version is active is decided by the lifecycle (service/lifecycle.py), which installs it
here; a model is replaced whole, never mutated, so scoring reads it without a lock.
"""

from __future__ import annotations

import logging
import threading
import time

import torch

from patchshift.core.artifact import load_model
from patchshift.core.common.errors import ArtifactError
from patchshift.core.engine.detector import Detector
from patchshift.service.http_errors import NotFound, Unavailable, redact_paths
from patchshift.service.prometheus import ServiceMetrics
from patchshift.service.store import ModelStore

log = logging.getLogger("patchshift.service")


class Serving:
    def __init__(self, store: ModelStore, metrics: ServiceMetrics, device: torch.device) -> None:
        self.store = store
        self.metrics = metrics
        self.device = device
        self._active: dict[str, Detector] = {}  # replaced whole by `install`; read without a lock
        self._load_errors: dict[str, str] = {}
        self._review: dict[str, Detector] = {}  # the last version scored for review, per model
        self._review_lock = threading.Lock()

    def load(self, name: str, version: str) -> Detector:
        """A version loaded from the store (the active one is reused)."""
        active = self._active.get(name)
        if active is not None and active.version == version:
            return active
        started = time.perf_counter()
        try:
            self.store.manifest(name, version)  # NotFound for unknown versions
            model = load_model(self.store.version_dir(name, version), device=self.device)
        except ArtifactError as exc:  # named by model and version, never by server path
            raise ArtifactError(
                f"model {name!r} version {version} cannot be loaded: {redact_paths(str(exc))}"
            ) from None
        self.metrics.load_seconds.labels(name).set(time.perf_counter() - started)
        return model

    def reviewed(self, name: str, version: str) -> Detector | None:
        """`version` if it is the one last loaded for review (taken out of the review cache)."""
        with self._review_lock:
            cached = self._review.get(name)
            if cached is not None and cached.version == version:
                return self._review.pop(name)
        return None

    def for_review(self, name: str, version: str) -> Detector:
        """`version` to score with outside the line: the active one, or a loaded copy of another
        (the last one reviewed per model is kept, so comparing a candidate costs one load)."""
        active = self._active.get(name)
        if active is not None and active.version == version:
            return active
        # the lifecycle evicts a deleted version, so a cached one still exists
        with self._review_lock:
            cached = self._review.get(name)
            if cached is None or cached.version != version:
                cached = self._review[name] = self.load(name, version)
            return cached

    def install(self, name: str, model: Detector) -> None:
        """The pointer swap: `model` scores `name`'s next requests."""
        self._active[name] = model
        self._load_errors.pop(name, None)

    def failed(self, name: str, error: str) -> None:
        """`name`'s active version cannot be loaded: readiness and the model's page say why."""
        self._load_errors[name] = error

    def evict(self, name: str, version: str) -> None:
        with self._review_lock:
            if (cached := self._review.get(name)) is not None and cached.version == version:
                del self._review[name]

    def get(self, name: str) -> Detector:
        model = self._active.get(name)
        if model is None:
            if error := self._load_errors.get(name):
                raise Unavailable(f"model {name!r} could not be loaded: {error}")
            raise NotFound(f"no model named {name!r}")
        return model

    def active(self, name: str) -> Detector | None:
        return self._active.get(name)

    def load_error(self, name: str) -> str | None:
        return self._load_errors.get(name)

    def names(self) -> list[str]:
        return sorted(set(self._active) | set(self._load_errors))

    def forget(self, name: str) -> None:
        self._active.pop(name, None)
        self._load_errors.pop(name, None)
        with self._review_lock:
            self._review.pop(name, None)
