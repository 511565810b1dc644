"""Feeds scored images to each model's drift monitor and runs the opt-in self-adaptation policy.

Policy (PATCHSHIFT_AUTO_ADAPT=1): images scored while the statistic is above its threshold are
kept (the buffer empties whenever it falls back); once drift has lasted auto_adapt_patience images
and auto_adapt_images are kept, they are handed to an adaptation job (never while another job of that model is unfinished, and at most once per active version);
the new version goes live only if it lowers the drift of those images from the old version's
reference condition.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from patchshift.core.adapt import get_adapter
from patchshift.core.detector import Detector

from .errors import Conflict
from .metrics import ServiceMetrics
from .registry import ModelRegistry
from .settings import Settings
from .tasks import ACTIVATE_IF_BETTER
from .worker import Worker

log = logging.getLogger("patchshift.service")


class DriftWatch:
    def __init__(self, registry: ModelRegistry, worker: Worker, settings: Settings, metrics: ServiceMetrics) -> None:
        self.registry = registry
        self.worker = worker
        self.settings = settings
        self.metrics = metrics
        self._attempted: set[tuple[str, str]] = set()
        # observe runs in request threads (never on the event loop: starting a job writes files);
        # one lock owns the policy state (streaks, kept images, attempts)
        self._lock = threading.Lock()

    def observe(self, name: str, model: Detector, descriptors: np.ndarray, anomalous: np.ndarray,
                files: list[tuple[str, bytes]]) -> tuple[float | None, bool] | None:
        """The drift verdict (statistic, drifting) after these images; None when `model` is no longer active."""
        with self._lock:
            slot = self.registry.slot(name)
            if slot is None or slot.model is not model:
                return None  # scored by a version that is no longer active
            slot.monitor.add(descriptors, anomalous)
            statistic, drifting = slot.monitor.verdict()
            if statistic is not None:
                self.metrics.drift.labels(name).set(statistic)
            self.metrics.drifting.labels(name).set(int(drifting))
            self.metrics.anomalous_share.labels(name).set(slot.monitor.anomalous_share() or 0.0)
            self._consider_adapting(name, model, slot, statistic, drifting, files)
            return statistic, drifting

    def _consider_adapting(self, name: str, model: Detector, slot, statistic: float | None, drifting: bool,
                           files: list[tuple[str, bytes]]) -> None:
        if not self.settings.auto_adapt or not get_adapter(self.settings.auto_adapt_method).accepts(model):
            return  # drift is reported; a version the method cannot adapt waits for a person
        if not drifting:  # keep only images of the new condition
            slot.recent_images.clear()
            slot.drifting_streak = 0
            return
        slot.recent_images.extend(files)
        slot.drifting_streak += len(files)
        key = (name, model.version or "")
        if slot.drifting_streak < self.settings.auto_adapt_patience or key in self._attempted or self.worker.busy(name):
            return
        if len(slot.recent_images) < (slot.recent_images.maxlen or 0):
            return
        self._attempted.add(key)
        params = {
            "source_version": model.version, "activate": ACTIVATE_IF_BETTER, "trigger": "drift",
            "config": {"method": self.settings.auto_adapt_method}, "drift_at_trigger": statistic,
        }
        try:
            job = self.worker.submit("adapt", name, params, list(slot.recent_images))
        except Conflict:
            return
        log.warning("model %s: drift %.1f above %.1f for %d images; started adaptation job %s", name, statistic, slot.monitor.threshold, slot.drifting_streak, job.id)
