"""The loaded, active version of every model, and its drift monitor. Activation is a pointer
swap."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from patchshift.core.artifact import load_model
from patchshift.core.common.errors import ArtifactError
from patchshift.core.engine.detector import Detector
from patchshift.core.engine.drift import DriftMonitor
from patchshift.service.history import History
from patchshift.service.http_errors import NotFound, Unavailable, redact_paths
from patchshift.service.prometheus import ServiceMetrics
from patchshift.service.settings import Settings
from patchshift.service.store import ModelStore

log = logging.getLogger("patchshift.service")


@dataclass
class Slot:
    """One model's serving state; `model` is replaced whole, never mutated, so readers need no
    lock."""

    name: str
    model: Detector | None
    monitor: DriftMonitor
    load_error: str | None = None
    recent_images: deque = field(
        default_factory=deque
    )  # (filename, bytes) kept for self-adaptation
    drifting_streak: int = 0
    history: History = field(
        default_factory=lambda: History(0, 0, 0)
    )  # what the console shows of the line


class ModelRegistry:
    def __init__(
        self, store: ModelStore, settings: Settings, metrics: ServiceMetrics, device: torch.device
    ) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.device = device
        self._slots: dict[str, Slot] = {}
        self._lock = threading.Lock()
        self._review: dict[str, Detector] = {}  # the last version scored for review, per model
        self._review_lock = threading.Lock()
        self._activation = (
            threading.RLock()
        )  # the ACTIVE pointer: activation, conditional activation, deletion

    def load_all(self) -> None:
        for name in self.store.models():
            version = self.store.active(name)
            try:
                self.activate(name, version)
            except ArtifactError as exc:
                log.error("model %s version %s cannot be loaded: %s", name, version, exc)
                self._slot(name).load_error = str(exc)

    def _slot(self, name: str) -> Slot:
        with self._lock:
            if name not in self._slots:
                self._slots[name] = Slot(
                    name,
                    None,
                    DriftMonitor(None, self.settings.drift_window, self.settings.drift_threshold),
                    recent_images=deque(maxlen=self.settings.auto_adapt_images),
                    history=History(
                        self.settings.history_scores,
                        self.settings.history_drift_points,
                        self.settings.recent_images,
                    ),
                )
            return self._slots[name]

    def load(self, name: str, version: str) -> Detector:
        """A version loaded from the store (the active one is reused)."""
        slot = self._slots.get(name)
        if slot is not None and slot.model is not None and slot.model.version == version:
            return slot.model
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

    def activate_if_active(
        self, name: str, expected: str | None, version: str, model: Detector
    ) -> bool:
        """Activate `version` only if `expected` is still the active version: a job started from it
        must not undo an activation or a rollback made while it ran."""
        with self._activation:
            if self.store.active(name) != expected:
                return False
            self._activate(name, version, model)
            return True

    def delete_version(self, name: str, version: str) -> None:
        """Delete a stored version (never the active one), under the same lock as activation."""
        with self._activation:
            self.store.delete_version(name, version)
        with self._review_lock:
            if (cached := self._review.get(name)) is not None and cached.version == version:
                del self._review[name]

    def for_review(self, name: str, version: str) -> Detector:
        """`version` to score with outside the line: the active one, or a loaded copy of another
        (the last one reviewed per model is kept, so comparing a candidate costs one load)."""
        slot = self._slots.get(name)
        if slot is not None and slot.model is not None and slot.model.version == version:
            return slot.model
        with (
            self._review_lock
        ):  # delete_version evicts a deleted version, so a cached one still exists
            cached = self._review.get(name)
            if cached is None or cached.version != version:
                cached = self._review[name] = self.load(name, version)
            return cached

    def activate(self, name: str, version: str, model: Detector | None = None) -> Detector:
        """Make `version` the one that scores: load it, persist the pointer, swap, restart drift
        watch."""
        if model is None:
            with self._review_lock:  # a reviewed candidate is already loaded
                cached = self._review.get(name)
                if cached is not None and cached.version == version:
                    model = self._review.pop(name)
        model = model or self.load(name, version)
        with self._activation:
            return self._activate(name, version, model)

    def _activate(self, name: str, version: str, model: Detector) -> Detector:
        self.store.manifest(name, version)  # NotFound if it was deleted meanwhile
        self.store.set_active(name, version)
        slot = self._slot(name)
        slot.model, slot.load_error, slot.drifting_streak = model, None, 0
        slot.monitor.reset(model.drift_reference)
        slot.recent_images.clear()
        self.metrics.set_active(name, version)
        for gauge in (self.metrics.drift, self.metrics.drifting, self.metrics.anomalous_share):
            gauge.labels(name).set(0)
        log.info("model %s: version %s active", name, version)
        return model

    def get(self, name: str) -> Detector:
        slot = self._slots.get(name)
        if slot is None or slot.model is None:
            if slot is not None and slot.load_error:
                raise Unavailable(f"model {name!r} could not be loaded: {slot.load_error}")
            raise NotFound(f"no model named {name!r}")
        return slot.model

    def slot(self, name: str) -> Slot | None:
        return self._slots.get(name)

    @contextmanager
    def holding_active(self, name: str, model: Detector) -> Iterator[Slot | None]:
        """`name`'s slot while `model` stays its active version (an activation waits until the block
        ends), or None when another version is active by now."""
        with self._activation:
            slot = self._slots.get(name)
            yield slot if slot is not None and slot.model is model else None

    def names(self) -> list[str]:
        return sorted(self._slots)

    def forget(self, name: str) -> None:
        with self._lock:
            self._slots.pop(name, None)
        with self._review_lock:
            self._review.pop(name, None)
        self.metrics.forget_model(name)
