"""Feeds scored images to each model's drift monitor and runs the opt-in self-adaptation policy.

Policy (PATCHSHIFT_AUTO_ADAPT=1): images scored while the statistic is above its threshold are kept
(the buffer empties whenever it falls back); once drift has lasted auto_adapt_patience images and
auto_adapt_images are kept, they are handed to an adaptation job (never while another job of that
model is unfinished, and at most once per active version: again once a refused submission's slot
frees); the new version goes live only if the activation gate finds it better (activate=if-better).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from patchshift.core.adapt import get_adapter
from patchshift.core.engine.detector import Detector
from patchshift.core.engine.drift import DriftMonitor
from patchshift.service.http_errors import Conflict
from patchshift.service.lifecycle import Lifecycle
from patchshift.service.prometheus import ServiceMetrics
from patchshift.service.requests import ACTIVATE_IF_BETTER
from patchshift.service.settings import Settings
from patchshift.service.worker import Worker

log = logging.getLogger("patchshift.service")


@dataclass
class DriftState:
    """One model's drift policy state: the monitor of its active version, how many images in a row
    were scored while drifting, and the images kept for a self-adaptation."""

    monitor: DriftMonitor
    recent: deque = field(default_factory=deque)  # (filename, bytes)
    streak: int = 0


class DriftWatch:
    def __init__(
        self, lifecycle: Lifecycle, worker: Worker, settings: Settings, metrics: ServiceMetrics
    ) -> None:
        self.lifecycle = lifecycle
        self.worker = worker
        self.settings = settings
        self.metrics = metrics
        self._states: dict[str, DriftState] = {}
        self._attempted: set[tuple[str, str]] = set()
        # observe runs in request threads (never on the event loop: starting a job writes files);
        # one lock owns the policy state (monitors, streaks, kept images, attempts)
        self._lock = threading.Lock()
        lifecycle.listeners.append(self.reset)

    def reset(self, name: str, model: Detector) -> None:
        """A version became active: its own reference, an empty window, no kept images."""
        with self._lock:
            state = self._state(name)
            state.monitor.reset(model.drift_reference)
            state.recent.clear()
            state.streak = 0
        for gauge in (self.metrics.drift, self.metrics.drifting, self.metrics.anomalous_share):
            gauge.labels(name).set(0)

    def _state(self, name: str) -> DriftState:
        if name not in self._states:
            self._states[name] = DriftState(
                DriftMonitor(None, self.settings.drift_window, self.settings.drift_threshold),
                deque(maxlen=self.settings.auto_adapt_images),
            )
        return self._states[name]

    def monitor(self, name: str) -> DriftMonitor | None:
        with self._lock:
            state = self._states.get(name)
            return state.monitor if state is not None else None

    def forget(self, name: str) -> None:
        with self._lock:
            self._states.pop(name, None)

    def observe(
        self,
        name: str,
        model: Detector,
        descriptors: np.ndarray,
        anomalous: np.ndarray,
        files: list[tuple[str, bytes]],
    ) -> tuple[float | None, bool] | None:
        """The drift verdict (statistic, drifting) after these images; None when `model` is no
        longer active."""
        # the lifecycle keeps `model` active while its images enter the monitor (an activation
        # resets the monitor: the old version's images must not land in the new one's window)
        with self.lifecycle.holding_active(name, model) as active, self._lock:
            if not active:
                return None  # scored by a version that is no longer active
            state = self._state(name)
            state.monitor.add(descriptors, anomalous)
            statistic, drifting = state.monitor.verdict()
            if statistic is not None:
                self.metrics.drift.labels(name).set(statistic)
            self.metrics.drifting.labels(name).set(int(drifting))
            self.metrics.anomalous_share.labels(name).set(state.monitor.anomalous_share() or 0.0)
            pending = self._consider_adapting(name, model, state, statistic, drifting, files)
        if pending is not None:  # outside the locks: submitting writes up to 64 files
            self._submit(name, model, *pending)
        return statistic, drifting

    def _consider_adapting(
        self,
        name: str,
        model: Detector,
        state: DriftState,
        statistic: float | None,
        drifting: bool,
        files: list[tuple[str, bytes]],
    ) -> tuple[dict, list] | None:
        """The adaptation job to submit now, as (params, images), if the policy calls for one."""
        if (
            not self.settings.auto_adapt
            or not self.worker.accepts_jobs  # nothing would run the job (SQLite, no jobs here)
            or not get_adapter(self.settings.auto_adapt_method).accepts(model)
        ):
            return None  # drift is reported; a version the method cannot adapt waits for a person
        if not drifting:  # keep only images of the new condition
            state.recent.clear()
            state.streak = 0
            return None
        state.recent.extend(files)
        state.streak += len(files)
        key = (name, model.version or "")
        if (
            state.streak < self.settings.auto_adapt_patience
            or key in self._attempted
            or self.lifecycle.busy(name)
        ):
            return None
        if len(state.recent) < (state.recent.maxlen or 0):
            return None
        self._attempted.add(key)
        log.warning(
            "model %s: drift %.1f above %.1f for %d images; starting an adaptation job",
            name,
            statistic,
            state.monitor.threshold,
            state.streak,
        )
        params = {
            "source_version": model.version,
            "activate": ACTIVATE_IF_BETTER,
            "trigger": "drift",
            "config": {"method": self.settings.auto_adapt_method},
            "drift_at_trigger": statistic,
        }
        return params, list(state.recent)

    def _adapted_before(self, name: str, version: str | None) -> bool:
        """Whether a drift-triggered adaptation of this version was already queued anywhere: the
        job records are shared, so replicas make one decision per model and version."""
        return any(
            job.kind == "adapt"
            and job.params.get("trigger") == "drift"
            and job.params.get("source_version") == version
            for job in self.lifecycle.jobs.list(model=name)
        )

    def _submit(self, name: str, model: Detector, params: dict, images: list) -> None:
        if self._adapted_before(name, model.version):
            return  # by another replica, or by this one before a restart
        try:
            job = self.worker.submit("adapt", name, params, images)
        except (
            Exception
        ) as exc:  # a job of this model was queued meanwhile (409), or the disk refused the images
            if not isinstance(exc, Conflict):
                log.error(
                    "model %s: the adaptation job could not be started (%s); it is tried again on "
                    "the next drifting images",
                    name,
                    exc,
                )
            with self._lock:  # try again once the slot frees
                self._attempted.discard((name, model.version or ""))
            return
        log.warning(
            "model %s: adaptation job %s started from %d drifting images", name, job.id, len(images)
        )
